"""Loaders for every source, from manifests, with the bad-data errors."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nbsupport.data import datasets, fundus
from nbsupport.data.datasets import DataError, DataUnavailableError, build_dataset
from nbsupport.data.manifests import ManifestError, load_manifest

BASE = {"title": "T", "modality": "fundus", "license": "CC0", "citation": "-"}


def manifest(name, **fields):
    return load_manifest({"name": name, **BASE, **fields})


def save_images(folder: Path, n: int, start: int = 0, size: int = 32) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(start, start + n):
        img = np.full((size, size, 3), (i * 37) % 255, dtype=np.uint8)
        Image.fromarray(img).save(folder / f"im{i}.png")
        names.append(f"im{i}.png")
    return names


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_classification_shapes_and_determinism():
    a = build_dataset("fundus-procedural", "train", image_size=64, limit=10)
    b = build_dataset("fundus-procedural", "train", image_size=64, limit=10)
    x, y = a[3]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.equal(x, b[3][0]) and a.targets == b.targets
    assert len(a) == 10


def test_synthetic_splits_use_disjoint_seeds():
    tr = build_dataset("fundus-procedural", "train", image_size=64)
    te = build_dataset("fundus-procedural", "test", image_size=64)
    assert not set(tr.seeds) & set(te.seeds)


def test_synthetic_class_balance_is_exact():
    m = load_manifest("fundus-procedural")
    ds = build_dataset(m, "val", image_size=64)
    counts = np.bincount(ds.targets, minlength=5)
    expected = np.asarray(m.source["class_balance"]) * len(ds)
    assert np.abs(counts - expected).max() <= 1


def test_synthetic_segmentation_and_text_to_image():
    seg = build_dataset("fundus-procedural", "train", task="segmentation", image_size=64, limit=3)
    x, masks = seg[0]
    assert masks.shape == (len(fundus.LESION_KINDS), 64, 64) and set(masks.unique().tolist()) <= {0.0, 1.0}
    t2i = build_dataset("fundus-procedural", "train", task="text-to-image", image_size=64, limit=3)
    item = t2i[0]
    assert item["pixel_values"].min() >= -1 and item["pixel_values"].max() <= 1
    assert item["caption"].startswith("A colour fundus photograph")
    assert item["caption"] == t2i.sample(0).caption


def test_task_not_in_manifest():
    with pytest.raises(DataError, match="task 'segmentation' is not offered"):
        build_dataset("retinamnist-224", "train", task="segmentation")


# ----------------------------------------------------------------------------- folder

def test_folder_with_class_subfolders(tmp_path):
    save_images(tmp_path / "a", 6)
    save_images(tmp_path / "b", 4, start=10)
    m = manifest("f", tasks=["classification"], classes=["a", "b"], source={"type": "folder", "root": str(tmp_path)},
                 splits={"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 1})
    parts = {s: build_dataset(m, s, image_size=32) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 10
    paths = [set(str(it.path) for it in p.items) for p in parts.values()]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    x, y = parts["train"][0]
    assert x.shape == (3, 32, 32) and y in (0, 1)


def test_a_stratified_split_gives_every_class_the_same_fractions(tmp_path):
    sizes = {"a": 15, "b": 15, "c": 5, "d": 5, "e": 10}
    for k, (name, n) in enumerate(sizes.items()):
        save_images(tmp_path / name, n, start=100 * k)
    fields = dict(tasks=["classification"], classes=list(sizes), source={"type": "folder", "root": str(tmp_path)})
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    m = manifest("f", **fields, splits={"fractions": fractions, "stratify": True})
    per = {s: np.bincount(build_dataset(m, s).targets, minlength=5).tolist() for s in ("train", "val", "test")}
    assert per == {"train": [9, 9, 3, 3, 6], "val": [3, 3, 1, 1, 2], "test": [3, 3, 1, 1, 2]}
    assert "stratified by class" in m.split_rule()
    plain = manifest("f", **fields, splits={"fractions": fractions})     # unstratified: as before, by chance
    assert [np.bincount(build_dataset(plain, "test").targets, minlength=5).tolist()] != [per["test"]]
    report = datasets.verify(m)
    assert report["splits"]["test"] == {"images": 10, "classes": [3, 3, 1, 1, 2]}
    with pytest.raises(ManifestError, match="field 'splits.stratify': .*needs splits.fractions"):
        manifest("f", **fields, splits={"builtin": True, "stratify": True})


def test_folder_with_split_subfolders(tmp_path):
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        save_images(tmp_path / split / "a", n)
        save_images(tmp_path / split / "b", n, start=20)
    m = manifest("f", tasks=["classification"], classes=["a", "b"], source={"type": "folder", "root": str(tmp_path)},
                 splits={"builtin": True})
    assert len(build_dataset(m, "train", image_size=32)) == 6
    assert len(build_dataset(m, "val", image_size=32)) == 4


def test_folder_unknown_class_folder(tmp_path):
    save_images(tmp_path / "a", 2)
    save_images(tmp_path / "zebra", 2)
    m = manifest("f", tasks=["classification"], classes=["a", "b"], source={"type": "folder", "root": str(tmp_path)},
                 splits={"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}})
    with pytest.raises(DataError, match=r"zebra.*field 'classes'.*not a class"):
        build_dataset(m, "train")


def test_folder_missing_root(tmp_path):
    m = manifest("f", tasks=["classification"], classes=["a"], source={"type": "folder", "root": str(tmp_path / "nope")},
                 splits={"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}})
    with pytest.raises(DataError, match=r"nope: field 'source.root': folder not found"):
        build_dataset(m, "train")


# ----------------------------------------------------------------------------- csv

def csv_manifest(tmp_path, text, **extra):
    (tmp_path / "labels.csv").write_text(text)
    fields = dict(tasks=["classification"], classes=["a", "b", "c"],
                  source={"type": "csv", "path": str(tmp_path / "labels.csv"), "image_root": str(tmp_path / "img"),
                          "image_column": "file"},
                  label_columns=["y"], splits={"column": "split"})
    fields.update(extra)
    return manifest("c", **fields)


def test_csv_single_label_with_split_column(tmp_path):
    save_images(tmp_path / "img", 4)
    m = csv_manifest(tmp_path, "file,y,split\nim0.png,a,train\nim1.png,2,train\nim2.png,b,val\nim3.png,c,test\n")
    tr = build_dataset(m, "train", image_size=16)
    assert tr.targets == [0, 2] and len(build_dataset(m, "val")) == 1
    assert tr[1][0].shape == (3, 16, 16)


def test_csv_multi_label_columns_and_captions(tmp_path):
    save_images(tmp_path / "img", 3)
    src = {"type": "csv", "path": str(tmp_path / "labels.csv"), "image_root": str(tmp_path / "img"),
           "image_column": "file", "positive_values": ["1.0"]}
    (tmp_path / "labels.csv").write_text("file,Edema,Effusion\nim0.png,1.0,0.0\nim1.png,1.0,1.0\nim2.png,,-1.0\n")
    m = manifest("cx", tasks=["classification", "text-to-image"], findings=["Edema", "Effusion"],
                 label_columns=["Edema", "Effusion"], multi_label=True, source=src,
                 caption_template="Chest X-ray showing {findings}.", caption_empty="Normal chest X-ray.",
                 splits={"fractions": {"train": 1.0, "val": 0.0001, "test": 0.0001}} if False else
                 {"fractions": {"train": 0.34, "val": 0.33, "test": 0.33}})
    items = datasets.list_items(m)
    targets = {it.path.name: it.target for it in items}
    assert targets == {"im0.png": [1.0, 0.0], "im1.png": [1.0, 1.0], "im2.png": [0.0, 0.0]}
    ds = datasets.ImageListDataset(items, m, task="text-to-image", image_size=16)
    caps = {it.path.name: ds[i]["caption"] for i, it in enumerate(items)}
    assert caps == {"im0.png": "Chest X-ray showing Edema.", "im1.png": "Chest X-ray showing Edema, Effusion.",
                    "im2.png": "Normal chest X-ray."}
    x, y = datasets.ImageListDataset(items, m, image_size=16)[0]
    assert y.dtype == torch.float32 and y.shape == (2,)


def _separator_manifest(tmp_path, rows: str, **layout):
    save_images(tmp_path / "img", 3)
    (tmp_path / "d.csv").write_text("Image Index,Finding Labels\n" + rows)
    return manifest("nih", tasks=["classification"], findings=["Mass", "Nodule", "Hernia"], multi_label=True,
                    label_columns=["Finding Labels"],
                    source={"type": "csv", "path": str(tmp_path / "d.csv"), "image_root": str(tmp_path / "img"),
                            "image_column": "Image Index", "label_separator": "|", **layout},
                    splits={"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}})


def test_csv_label_separator(tmp_path):
    m = _separator_manifest(tmp_path, "im0.png,Mass|Nodule\nim1.png,No Finding\nim2.png,\n",
                            empty_values=["No Finding"])
    assert {it.path.name: it.target for it in datasets.list_items(m)} == {
        "im0.png": [1.0, 1.0, 0.0], "im1.png": [0.0, 0.0, 0.0], "im2.png": [0.0, 0.0, 0.0]}


def test_csv_label_separator_refuses_unknown_values(tmp_path):
    """A misspelt or differently cased finding is not silently 'no finding'."""
    rows = "im0.png,mass|Nodule\nim1.png,No Finding\nim2.png,Hernia\n"
    assert [it.target for it in datasets.list_items(_separator_manifest(tmp_path, rows.replace("mass", "Mass")))][1] \
        == [0.0, 0.0, 0.0]                                             # 'No Finding': a default empty value
    m = _separator_manifest(tmp_path, rows, empty_values=["-"])       # given: replaces the defaults
    with pytest.raises(DataError) as info:
        datasets.list_items(m)
    msg = str(info.value)
    assert "d.csv" in msg and "'mass' (line 2)" in msg and "'No Finding' (line 3)" in msg
    assert "case-sensitive" in msg and "empty_values" in msg


def test_csv_one_column_per_finding_follows_the_findings_order(tmp_path):
    save_images(tmp_path / "img", 2)
    (tmp_path / "labels.csv").write_text("file,Effusion,Edema\nim0.png,1,0\nim1.png,0,1\n")
    src = {"type": "csv", "path": str(tmp_path / "labels.csv"), "image_root": str(tmp_path / "img"),
           "image_column": "file"}
    fields = dict(tasks=["classification", "text-to-image"], multi_label=True, source=src,
                  caption_template="Chest X-ray showing {findings}.",
                  splits={"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}})
    m = manifest("cx", findings=["Edema", "Effusion"], label_columns=["Effusion", "Edema"], **fields)
    items = datasets.list_items(m)
    assert {it.path.name: it.target for it in items} == {"im0.png": [0.0, 1.0], "im1.png": [1.0, 0.0]}
    ds = datasets.ImageListDataset(items, m, task="text-to-image", image_size=16)
    assert {it.path.name: ds[i]["caption"] for i, it in enumerate(items)} == {
        "im0.png": "Chest X-ray showing Effusion.", "im1.png": "Chest X-ray showing Edema."}
    with pytest.raises(ManifestError) as info:
        manifest("cx", findings=["Edema", "Effusion", "Mass"], label_columns=["Effusion", "Edema"], **fields)
    assert "field 'label_columns'" in str(info.value) and "findings without a column: ['Mass']" in str(info.value)


@pytest.mark.parametrize("template, bad", [("X-ray showing {finding}.", "{finding}"), ("grade {grade}", "{grade}"),
                                           ("{}", "{}")])
def test_caption_template_placeholders_are_checked(template, bad):
    with pytest.raises(ManifestError) as info:
        manifest("t", tasks=["text-to-image"], classes=["a", "b"], caption_template=template,
                 source={"type": "folder", "root": "/nowhere"}, splits={"builtin": True})
    msg = str(info.value)
    assert "field 'caption_template'" in msg and bad in msg and "{findings}" in msg and "{label}" in msg


def test_csv_patient_grouped_split_is_disjoint(tmp_path):
    save_images(tmp_path / "img", 40)
    rows = "".join(f"im{i}.png,{i % 3},p{i // 4}\n" for i in range(40))
    m = csv_manifest(tmp_path, "file,y,patient\n" + rows, patient_column="patient",
                     splits={"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 3})
    items = datasets.list_items(m)
    by_split = {s: {it.patient for it in items if it.split == s} for s in ("train", "val", "test")}
    assert all(by_split.values())
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
    assert not (by_split["val"] & by_split["test"])
    from nbsupport.vit.experiment import patient_groups

    test = build_dataset(m, "test", image_size=16)
    groups = patient_groups(test)                      # the test-set bootstrap draws these patients
    assert groups == [it.patient for it in test.items] and len(set(groups)) == len(groups) // 4
    assert patient_groups(build_dataset("fundus-procedural", "test", limit=10, image_size=16)) is None


def test_csv_label_column_absent(tmp_path):
    save_images(tmp_path / "img", 1)
    m = csv_manifest(tmp_path, "file,grade,split\nim0.png,a,train\n")
    with pytest.raises(DataError) as info:
        build_dataset(m, "train")
    msg = str(info.value)
    assert "labels.csv" in msg and "field 'label_columns'" in msg and "column 'y' is not in the csv" in msg
    assert "['file', 'grade', 'split']" in msg


def test_csv_image_missing(tmp_path):
    save_images(tmp_path / "img", 1)
    m = csv_manifest(tmp_path, "file,y,split\nim0.png,a,train\nghost.png,b,train\n")
    with pytest.raises(DataError) as info:
        build_dataset(m, "train")
    assert "ghost.png" in str(info.value) and "field 'source.image_column'" in str(info.value)
    assert "1 image file(s)" in str(info.value) and "csv line 3" in str(info.value)


def test_csv_image_unreadable(tmp_path):
    save_images(tmp_path / "img", 1)
    (tmp_path / "img" / "broken.png").write_bytes(b"this is not a png")
    m = csv_manifest(tmp_path, "file,y,split\nim0.png,a,train\nbroken.png,b,train\n")
    ds = build_dataset(m, "train")
    with pytest.raises(DataError, match=r"broken.png: field 'image': cannot be read as an image"):
        ds[1]
    with pytest.raises(DataError, match="broken.png"):
        datasets.verify(m)


def test_csv_bad_label_value(tmp_path):
    save_images(tmp_path / "img", 1)
    m = csv_manifest(tmp_path, "file,y,split\nim0.png,zebra,train\n")
    with pytest.raises(DataError, match=r"line 2: label 'zebra'"):
        build_dataset(m, "train")


def test_csv_segmentation_masks(tmp_path):
    save_images(tmp_path / "img", 2)
    for i in range(2):
        mask = np.zeros((32, 32), np.uint8)
        mask[:16] = 255
        Image.fromarray(mask).save(tmp_path / "img" / f"m{i}.png")
    (tmp_path / "index.csv").write_text("image,mask,split\nim0.png,m0.png,train\nim1.png,m1.png,test\n")
    m = manifest("s", tasks=["segmentation"], findings=["lesion"],
                 source={"type": "csv", "path": str(tmp_path / "index.csv"), "image_root": str(tmp_path / "img"),
                         "image_column": "image", "mask_columns": ["mask"]}, splits={"column": "split"})
    x, masks = build_dataset(m, "train", task="segmentation", image_size=16)[0]
    assert masks.shape == (1, 16, 16) and masks[0, :8].all() and not masks[0, 8:].any()


# ----------------------------------------------------------------------------- medmnist

def test_medmnist_from_cached_npz(tmp_path):
    pytest.importorskip("medmnist")
    from nbsupport.core.paths import data_dir

    root = data_dir("retinamnist-224")
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(n, 224, 224, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 5).reshape(n, 1)
    np.savez(root / "retinamnist_224.npz", **arrays)
    ds = build_dataset("retinamnist-224", "train", image_size=64, download=False)
    assert len(ds) == 6 and ds.targets == [0, 1, 2, 3, 4, 0]
    x, y = ds[2]
    assert x.shape == (3, 64, 64) and y == 2
    assert len(build_dataset("retinamnist-224", "test", download=False, limit=2)) == 2


def test_nih_chestxray14_in_its_published_layout(tmp_path):
    """The shipped manifest on files laid out as the NIH download is: Data_Entry_2017.csv with its
    real columns, grayscale PNGs under images/, '|'-separated findings, 'No Finding' rows."""
    from PIL import Image

    from nbsupport.core.paths import data_dir

    root = data_dir("nih-chestxray14")
    (root / "images").mkdir(parents=True)
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
    findings = ["No Finding", "Edema", "Effusion|Mass", "Cardiomegaly|Edema|Hernia"]
    rows = []
    for i in range(40):
        name = f"{i // 2:08d}_{i % 2:03d}.png"
        Image.fromarray(np.full((32, 32), 10 * i % 255, np.uint8), mode="L").save(root / "images" / name)
        rows.append(f"{name},{findings[i % 4]},{i % 2},{i // 2},{40 + i},M,PA,2500,2048,0.143,0.143\n")
    (root / "Data_Entry_2017.csv").write_text(header + "".join(rows))
    train = build_dataset("nih-chestxray14", "train", task="text-to-image", image_size=16)
    test = build_dataset("nih-chestxray14", "test", task="classification", image_size=16)
    caps = {train[i]["caption"] for i in range(len(train))}
    assert caps <= {"Normal chest X-ray with no significant findings.", "Chest X-ray showing Edema.",
                    "Chest X-ray showing Effusion, Mass.", "Chest X-ray showing Cardiomegaly, Edema, Hernia."}
    assert train[0]["pixel_values"].shape == (3, 16, 16)
    x, y = test[0]
    assert y.shape == (14,) and set(y.tolist()) <= {0.0, 1.0}
    patients = {s: {it.patient for it in ds.items} for s, ds in (("train", train), ("test", test))}
    assert patients["train"] and patients["test"] and not patients["train"] & patients["test"]


def test_medmnist_missing_offline():
    pytest.importorskip("medmnist")
    with pytest.raises(DataUnavailableError, match="nbsupport data fetch retinamnist-224"):
        build_dataset("retinamnist-224", "train", download=False)


# ----------------------------------------------------------------------------- url (pooch)

@pytest.fixture
def http_dir(tmp_path):
    """A loopback HTTP server over a folder; yields (folder, base_url)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _zip_dataset(folder: Path, tmp_path: Path) -> str:
    src = tmp_path / "src"
    save_images(src / "a", 4)
    save_images(src / "b", 4, start=10)
    archive = folder / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*.png")):
            zf.write(f, f.relative_to(src))
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def url_manifest(url, sha):
    return manifest("web", tasks=["classification"], classes=["a", "b"],
                    source={"type": "url", "url": url, "sha256": sha, "archive": "zip",
                            "layout": {"type": "folder", "root": "."}},
                    splits={"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}})


def test_url_download_checked_and_loaded(http_dir, tmp_path):
    folder, base = http_dir
    sha = _zip_dataset(folder, tmp_path)
    m = url_manifest(f"{base}/set.zip", sha)
    ds = build_dataset(m, "train", image_size=16)
    assert len(ds) == 4
    (folder / "set.zip").unlink()   # cached: a second build needs no server
    assert len(build_dataset(m, "test", image_size=16)) == 2


def test_url_checksum_mismatch(http_dir, tmp_path):
    folder, base = http_dir
    _zip_dataset(folder, tmp_path)
    m = url_manifest(f"{base}/set.zip", "0" * 64)
    with pytest.raises(DataError) as info:
        build_dataset(m, "train")
    assert "field 'source.sha256'" in str(info.value) and "checksum mismatch" in str(info.value)


def test_file_url_works_for_a_local_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    sha = _zip_dataset(mirror, tmp_path)
    m = url_manifest((mirror / "set.zip").as_uri(), sha)
    assert m.source["url"].startswith("file://") and len(build_dataset(m, "train", image_size=16)) == 4
    bad = load_manifest({**url_manifest((mirror / "set.zip").as_uri(), "1" * 64).data, "name": "web-bad"})
    with pytest.raises(DataError, match="checksum mismatch"):
        build_dataset(bad, "train")


def test_url_network_unavailable():
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = url_manifest(f"http://127.0.0.1:{port}/set.zip", "0" * 64)
    with pytest.raises(DataUnavailableError) as info:
        build_dataset(m, "train")
    assert "could not download" in str(info.value) and "Network unavailable?" in str(info.value)


# ----------------------------------------------------------------------------- manual

def test_manual_prints_instructions_then_loads(tmp_path):
    m = manifest("byhand", tasks=["classification"], classes=["a", "b"],
                 source={"type": "manual", "instructions": "Ask the clinic for the files.",
                         "layout": {"type": "folder", "root": str(tmp_path / "put-here")}},
                 splits={"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}})
    with pytest.raises(DataUnavailableError) as info:
        build_dataset(m, "train")
    assert "Ask the clinic for the files." in str(info.value) and "put-here" in str(info.value)
    save_images(tmp_path / "put-here" / "a", 4)
    save_images(tmp_path / "put-here" / "b", 4, start=10)
    assert len(build_dataset(m, "train", image_size=16)) == 4


def test_shipped_manual_manifests_explain_themselves():
    for name in ("aptos2019", "ddr", "messidor2", "chexpert", "nih-chestxray14", "isic2016-seg", "kvasir-seg",
                 "idrid-seg"):
        with pytest.raises(DataUnavailableError, match="must be downloaded by hand"):
            datasets.fetch(name)


def test_verify_synthetic():
    rep = datasets.verify("fundus-procedural", max_images=10)
    assert rep["source"] == "synthetic" and set(rep["splits"]) == {"train", "val", "test"}


# ----------------------------------------------------------------------------- the user's own split


def user_csv(tmp_path, n=30, shared=0, **extra):
    """A user's folder of PNGs and a CSV with their own train/test column and patient codes
    (two images per patient); ``shared`` patients also have an image in the test rows."""
    save_images(tmp_path / "img", n)
    rows = [f"im{i}.png,{i % 3},{'TEST' if i >= n * 2 // 3 else 'TRAIN'},p{i // 2}" for i in range(n)]
    for k in range(shared):                                 # a training patient's second image sits in test
        rows[2 * k + 1] = f"im{2 * k + 1}.png,{(2 * k + 1) % 3},TEST,p{k}"
    return csv_manifest(tmp_path, "file,y,part,patient\n" + "\n".join(rows) + "\n", patient_column="patient",
                        splits={"column": "part", "values": {"train": "TRAIN", "test": "TEST"}, **extra})


def test_a_split_column_without_validation_rows_is_a_clear_error(tmp_path):
    m = user_csv(tmp_path)
    assert len(build_dataset(m, "train")) == 20 and len(build_dataset(m, "test")) == 10
    with pytest.raises(DataError, match="'val' split has no images.*splits.val_fraction"):
        build_dataset(m, "val")
    report = datasets.verify(m)
    assert report["splits"]["val"]["images"] == 0 and "val_fraction" in report["problems"][0]


def test_val_fraction_carves_whole_patients_out_of_the_users_training_rows(tmp_path):
    m = user_csv(tmp_path, seed=0, val_fraction=0.2)
    items = datasets.list_items(m)
    split_of = {it.path.name: it.split for it in items}
    assert {n for n, s in split_of.items() if s == "test"} == {f"im{i}.png" for i in range(20, 30)}   # the user's
    val_patients = {it.patient for it in items if it.split == "val"}
    train_patients = {it.patient for it in items if it.split == "train"}
    assert len(val_patients) == 2 and not (val_patients & train_patients)
    assert "validation = 20% of the training patients" in m.split_rule()
    assert datasets.verify(m)["problems"] == []


def test_ambiguous_split_settings_are_refused(tmp_path):
    with pytest.raises(ManifestError, match="splits.fractions.*given together with splits.column"):
        user_csv(tmp_path / "a", fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    with pytest.raises(ManifestError, match="splits.values.*same value 'TRAIN'"):
        csv_manifest(tmp_path, "file,y,split\n", splits={"column": "split", "values": {"train": "TRAIN",
                                                                                         "val": "TRAIN", "test": "T"}})


def test_patients_across_splits_warn_or_fail_when_the_manifest_says_so(tmp_path):
    m = user_csv(tmp_path / "a", shared=2)
    with pytest.warns(UserWarning, match=r"train/test: 2 patient\(s\)"):
        build_dataset(m, "train")
    report = datasets.verify(m)
    assert report["shared_patients"]["train/test"]["patients"] == 2 and any("p0" in p for p in report["problems"])
    strict = user_csv(tmp_path / "b", shared=2)
    strict = load_manifest({**strict.data, "patient_disjoint": True})
    with pytest.raises(DataError, match="field 'patient_disjoint': the same patients") as info:
        build_dataset(strict, "train")
    assert str(info.value).count("<dict>") <= 1                        # the manifest named once


def test_a_fractional_label_is_not_a_class(tmp_path):
    save_images(tmp_path / "img", 1)
    m = csv_manifest(tmp_path, "file,y,split\nim0.png,2.5,train\n")
    with pytest.raises(DataError, match=r"label '2.5'.*class index \(0-2\)"):
        build_dataset(m, "train")


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit radiograph PNG (mode I;16) keeps its contrast: PIL's own conversion to RGB would
    clip every value above 255 to white. ``data verify`` says which modes and sizes it found."""
    for name, lo in (("a", 1000), ("b", 3000)):
        (tmp_path / name).mkdir()
        for i in range(4):
            ramp = (lo + np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * (i + 1)).astype(np.uint16)
            Image.fromarray(ramp).save(tmp_path / name / f"x{i}.png")
    assert Image.open(tmp_path / "a" / "x0.png").mode.startswith("I")
    m = manifest("xr", tasks=["classification"], classes=["a", "b"],
                 source={"type": "folder", "root": str(tmp_path)},
                 splits={"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}})
    ds = build_dataset(m, "train", image_size=16, mean=None, std=None)
    x, _ = ds[0]
    assert 0.2 < x.mean().item() < 0.8 and x.min().item() < 0.05 and x.max().item() > 0.95
    report = datasets.verify(m)
    assert set(report["image_modes"]) <= set(datasets.WIDE_MODES) and report["image_sizes"] == {"48x32": 8}
    assert any("scaled from its own minimum and maximum" in n for n in report["notes"])
    assert any("resized" in n for n in report["notes"]) and report["classes"] == ["a", "b"]
