"""Manifest validation: every shipped manifest passes, every bad case names file, field, expectation."""

import copy

import pytest
import yaml

from nbsupport.data.manifests import ManifestError, list_manifests, load_manifest

GOOD = {
    "name": "toy",
    "title": "Toy",
    "tasks": ["classification"],
    "modality": "fundus",
    "source": {"type": "folder", "root": "/tmp/x"},
    "license": "CC0",
    "citation": "-",
    "classes": ["a", "b"],
    "splits": {"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}},
}


def write(tmp_path, data, name="toy.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_all_shipped_manifests_validate():
    names = list_manifests()
    assert {"fundus-procedural", "retinamnist-224", "aptos2019", "ddr", "messidor2", "isic2016-seg",
            "chexpert", "nih-chestxray14"} <= set(names)
    for n in names:
        m = load_manifest(n)
        assert m.name == n, f"{n}.yaml declares name {m.name!r}"
        assert m["license"] and m["citation"]


def expect_error(tmp_path, data, field, fragment):
    p = write(tmp_path, data)
    with pytest.raises(ManifestError) as info:
        load_manifest(p)
    err = info.value
    assert err.file == str(p)
    assert err.field == field, str(err)
    assert fragment in err.message, str(err)
    assert str(p) in str(err) and field in str(err)


def test_good_manifest_loads(tmp_path):
    m = load_manifest(write(tmp_path, GOOD))
    assert m.classes == ["a", "b"] and m.source["type"] == "folder"


def test_unknown_top_level_field(tmp_path):
    expect_error(tmp_path, {**GOOD, "clases": ["a"]}, "clases", "unknown field")


def test_unknown_source_field(tmp_path):
    expect_error(tmp_path, {**GOOD, "source": {"type": "folder", "rot": "/x"}}, "source.rot", "unknown field")


def test_missing_field(tmp_path):
    data = {k: v for k, v in GOOD.items() if k != "license"}
    expect_error(tmp_path, data, "license", "missing required field")


def test_missing_source_field(tmp_path):
    expect_error(tmp_path, {**GOOD, "source": {"type": "csv", "path": "a.csv"}, "label_columns": ["y"]},
                 "source.image_column", "missing required field")


def test_wrong_type(tmp_path):
    expect_error(tmp_path, {**GOOD, "classes": "a,b"}, "classes", "expected a list, got str")


def test_wrong_nested_type(tmp_path):
    expect_error(tmp_path, {**GOOD, "native_resolution": "big"}, "native_resolution", "expected an integer")


def test_unknown_source_type(tmp_path):
    expect_error(tmp_path, {**GOOD, "source": {"type": "ftp"}}, "source.type", "expected one of")


def test_unknown_task(tmp_path):
    expect_error(tmp_path, {**GOOD, "tasks": ["detection"]}, "tasks[0]", "expected one of")


def test_bad_checksum_format(tmp_path):
    src = {"type": "url", "url": "https://example.org/a.zip", "sha256": "abc",
           "layout": {"type": "folder"}}
    expect_error(tmp_path, {**GOOD, "source": src}, "source.sha256", "does not match the pattern")


def test_fractions_must_sum_to_one(tmp_path):
    expect_error(tmp_path, {**GOOD, "splits": {"fractions": {"train": 0.5, "val": 0.2, "test": 0.2}}},
                 "splits.fractions", "sum to 1")


def test_text_to_image_needs_caption_template(tmp_path):
    expect_error(tmp_path, {**GOOD, "tasks": ["text-to-image"]}, "caption_template", "caption template")


def test_csv_needs_label_columns(tmp_path):
    src = {"type": "csv", "path": "a.csv", "image_column": "f"}
    expect_error(tmp_path, {**GOOD, "source": src}, "label_columns", "label column")


def test_bad_layout_of_manual(tmp_path):
    src = {"type": "manual", "instructions": "get it", "layout": {"type": "csv", "path": "a.csv"}}
    expect_error(tmp_path, {**GOOD, "source": src, "label_columns": ["y"]}, "source.layout.image_column",
                 "missing required field")


def test_invalid_yaml(tmp_path):
    p = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(p)


def test_not_a_mapping(tmp_path):
    expect_error(tmp_path, "- a\n- b\n", "<top level>", "expected a mapping")


def test_missing_manifest_lists_shipped_ones():
    with pytest.raises(FileNotFoundError, match="shipped manifests: .*fundus-procedural"):
        load_manifest("no-such-set")


def test_defaults_filled_and_input_untouched():
    data = copy.deepcopy(GOOD)
    m = load_manifest(data)
    assert m["multi_label"] is False and "multi_label" not in data
