"""Data manifests: one YAML file per dataset, validated against a schema.

A manifest says what a dataset is (tasks, modality, classes, findings, caption template), where it
comes from (``source``: synthetic, folder, csv, medmnist, url, manual), how it is split, and under
which licence and citation it may be used. :func:`load_manifest` validates it and raises
:class:`ManifestError` naming the file, the field and what was expected.

Relative paths inside a manifest (``root``, ``path``, ``image_root``) are resolved against the
dataset's cache directory (``$NBSUPPORT_CACHE/data/<name>``); absolute paths and ``${ENV_VAR}``
references are used as given.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from nbsupport.core.paths import data_dir, manifests_dir

__all__ = [
    "ManifestError",
    "Manifest",
    "MANIFEST_SCHEMA",
    "SOURCE_SCHEMAS",
    "load_manifest",
    "validate_manifest",
    "list_manifests",
    "load_manifests",
    "dataset_name",
]

TASKS = ["classification", "segmentation", "text-to-image"]
SPLIT_NAMES = ["train", "val", "test"]


class ManifestError(ValueError):
    """A manifest that does not validate: names the file, the field and the expectation."""

    def __init__(self, file: str | Path, field: str, message: str) -> None:
        self.file = str(file)
        self.field = field
        self.message = message
        super().__init__(f"{file}: field '{field}': {message}")


_str = {"type": "string", "minLength": 1}
_str_list = {"type": "array", "items": _str, "minItems": 1}
_pos_int = {"type": "integer", "minimum": 1}

_layout_folder = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type"],
    "properties": {
        "type": {"const": "folder"},
        "root": _str,
        "extensions": _str_list,
    },
}
_layout_csv = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "path", "image_column"],
    "properties": {
        "type": {"const": "csv"},
        "path": _str,
        "image_root": _str,
        "image_column": _str,
        "mask_columns": _str_list,
        "image_suffix": {"type": "string"},
        "separator": _str,
        "column_names": _str_list,
        "label_separator": _str,
        "positive_values": {"type": "array"},
        "empty_values": {"type": "array", "items": {"type": "string"}},
    },
}

_mask_value = {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 255},
                         {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255},
                          "minItems": 3, "maxItems": 3}]}
_layout_pairs = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "images", "masks", "mask_map"],
    "properties": {
        "type": {"const": "pairs"},
        "images": _str,                      # folder of images
        "masks": _str,                       # folder of masks, one per image
        "mask_suffix": {"type": "string"},   # mask name = image stem + suffix (default: ".png")
        "extensions": _str_list,
        # kind -> grey value (index masks) or [r, g, b] (colour masks); everything else must be background
        "mask_map": {"type": "object", "minProperties": 1, "additionalProperties": _mask_value},
        "background": _mask_value,           # default 0 / [0, 0, 0]
        "mask_tolerance": {"type": "integer", "minimum": 0, "maximum": 255},   # JPEG masks: > 0
    },
}

SOURCE_SCHEMAS: dict[str, dict[str, Any]] = {
    "synthetic": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "generator"],
        "properties": {
            "type": {"const": "synthetic"},
            "generator": {"enum": ["fundus"]},
            "seed": {"type": "integer", "minimum": 0},
            "camera": _str,
            "class_balance": {"type": "array", "items": {"type": "number", "minimum": 0},
                              "minItems": 5, "maxItems": 5},
        },
    },
    "folder": _layout_folder,
    "csv": _layout_csv,
    "pairs": _layout_pairs,
    "medmnist": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "flag"],
        "properties": {
            "type": {"const": "medmnist"},
            "flag": _str,
            "size": {"enum": [28, 64, 128, 224]},
        },
    },
    "url": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "url", "sha256", "layout"],
        "properties": {
            "type": {"const": "url"},
            "url": {"type": "string", "pattern": "^(https?|ftp|file)://"},
            "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
            "archive": {"enum": ["none", "zip", "tar"]},
            "layout": {"type": "object"},
        },
    },
    "manual": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "instructions", "layout"],
        "properties": {
            "type": {"const": "manual"},
            "instructions": _str,
            "homepage": _str,
            "layout": {"type": "object"},
        },
    },
}

MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "title", "tasks", "modality", "source", "license", "citation", "splits"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        "title": _str,
        "description": {"type": "string"},
        "tasks": {"type": "array", "items": {"enum": TASKS}, "minItems": 1, "uniqueItems": True},
        "modality": _str,
        "source": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": list(SOURCE_SCHEMAS)}},
        },
        "license": _str,
        "citation": _str,
        "homepage": _str,
        "classes": _str_list,
        "findings": _str_list,
        "mask_kinds": _str_list,
        "label_columns": _str_list,
        "multi_label": {"type": "boolean"},
        "patient_column": _str,
        "patient_disjoint": {"type": "boolean"},
        "caption_template": _str,
        "caption_empty": _str,
        "label_noun": {"type": "string", "pattern": "^[a-z][a-z -]*$"},
        "native_resolution": _pos_int,
        "splits": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "train": _pos_int,
                "val": _pos_int,
                "test": _pos_int,
                "column": _str,
                "values": {"type": "object", "additionalProperties": _str},
                "fractions": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": SPLIT_NAMES,
                    "properties": {k: {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
                                   for k in SPLIT_NAMES},
                },
                "seed": {"type": "integer", "minimum": 0},
                "val_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "stratify": {"type": "boolean"},
                "builtin": {"type": "boolean"},
            },
        },
    },
}

_TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "true or false", "array": "a list", "object": "a mapping"}


def _field_path(error: jsonschema.ValidationError, prefix: str = "") -> str:
    parts = [prefix] if prefix else []
    parts += [f"[{p}]" if isinstance(p, int) else str(p) for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


CAPTION_FIELDS = {"label": "the class name (single-label) or the findings present, joined by ', '",
                  "findings": "the findings present, joined by ', ' (the class name when single-label)",
                  "caption": "the dataset's own caption, where it has one (else the label)"}


def _layout_field(source: dict[str, Any], key: str) -> str:
    """The manifest path of a layout field, for error messages: ``source.layout.<key>`` for a
    ``url`` or ``manual`` source (the layout is nested), ``source.<key>`` otherwise."""
    return f"source.layout.{key}" if "layout" in source else f"source.{key}"


def _check_caption_template(file: str | Path, template: str) -> None:
    """Raise :class:`ManifestError` naming any placeholder of ``caption_template`` that is not one of
    :data:`CAPTION_FIELDS`, or a template that ``str.format`` cannot parse."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ManifestError(file, "caption_template", f"{template!r} is not a valid template ({e}); write a "
                                                      "literal brace as {{ or }}") from None
    bad = sorted({f for f in fields if f.split(".")[0].split("[")[0] not in CAPTION_FIELDS})
    if bad:
        known = "; ".join(f"{{{k}}}: {v}" for k, v in CAPTION_FIELDS.items())
        raise ManifestError(file, "caption_template", f"{template!r} names {', '.join('{' + b + '}' for b in bad)}; "
                                                      f"the placeholders are {known}")


def _explain(error: jsonschema.ValidationError, prefix: str = "") -> tuple[str, str]:
    """(field, message) for a jsonschema error, in plain words."""
    field = _field_path(error, prefix)
    v = error.validator
    if v == "required":
        missing = [m for m in error.validator_value if m not in (error.instance or {})]
        name = missing[0] if missing else "?"
        full = f"{field}.{name}" if field != "<top level>" else name
        return full, "missing required field"
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        full = f"{field}.{extra[0]}" if field != "<top level>" else extra[0]
        return full, f"unknown field (allowed here: {', '.join(allowed)})"
    if v == "type":
        want = error.validator_value
        want_s = " or ".join(_TYPE_NAMES.get(w, w) for w in (want if isinstance(want, list) else [want]))
        return field, f"expected {want_s}, got {type(error.instance).__name__} {error.instance!r}"
    if v == "enum":
        return field, f"expected one of {error.validator_value}, got {error.instance!r}"
    if v == "const":
        return field, f"expected {error.validator_value!r}, got {error.instance!r}"
    if v == "pattern":
        return field, f"value {error.instance!r} does not match the pattern {error.validator_value!r}"
    if v in ("minItems", "maxItems", "minimum", "maximum", "exclusiveMinimum", "minLength", "uniqueItems"):
        return field, f"value {error.instance!r} violates {v}={error.validator_value!r}"
    return field, error.message


def _first_error(validator: jsonschema.Draft202012Validator, data: Any) -> jsonschema.ValidationError | None:
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    return errors[0] if errors else None


def validate_manifest(data: Any, file: str | Path = "<manifest>") -> dict[str, Any]:
    """Validate a parsed manifest; return it with defaults filled in.

    Raises:
        ManifestError: for the first problem found, naming file, field and expectation.
    """
    if not isinstance(data, dict):
        raise ManifestError(file, "<top level>", f"expected a mapping of fields, got {type(data).__name__}")
    err = _first_error(jsonschema.Draft202012Validator(MANIFEST_SCHEMA), data)
    if err is not None:
        raise ManifestError(file, *_explain(err))
    src = data["source"]
    err = _first_error(jsonschema.Draft202012Validator(SOURCE_SCHEMAS[src["type"]]), src)
    if err is not None:
        raise ManifestError(file, *_explain(err, "source"))
    if src["type"] in ("url", "manual"):
        layout = src["layout"]
        lt = layout.get("type")
        if lt not in ("folder", "csv", "pairs"):
            raise ManifestError(file, "source.layout.type", f"expected one of ['folder', 'csv', 'pairs'], got {lt!r}")
        err = _first_error(jsonschema.Draft202012Validator(SOURCE_SCHEMAS[lt]), layout)
        if err is not None:
            raise ManifestError(file, *_explain(err, "source.layout"))

    out = copy.deepcopy(data)
    tasks = out["tasks"]
    if "classification" in tasks and "classes" not in out and "findings" not in out:
        raise ManifestError(file, "classes", "missing: a classification manifest needs 'classes' "
                                              "(single-label) or 'findings' (multi-label)")
    if "text-to-image" in tasks and "caption_template" not in out:
        raise ManifestError(file, "caption_template", "missing: a text-to-image manifest needs a "
                                                       "caption template, e.g. 'Chest X-ray showing {findings}.'")
    if "segmentation" in tasks and src["type"] != "synthetic" and "findings" not in out:
        raise ManifestError(file, "findings", "missing: a segmentation manifest names its mask kinds in 'findings'")
    layout = src.get("layout", src)
    if layout.get("type") == "pairs":
        if set(tasks) != {"segmentation"}:
            raise ManifestError(file, "tasks", "a 'pairs' source (image folder + mask folder) has masks only: "
                                               "tasks must be [segmentation]")
        unmapped = [k for k in out.get("findings", []) if k not in layout["mask_map"]]
        if unmapped:
            raise ManifestError(file, _layout_field(src, "mask_map"), f"findings {unmapped} have no value in mask_map "
                                             f"({sorted(layout['mask_map'])})")
    labelled = bool({"classification", "text-to-image"} & set(tasks))
    if layout.get("type") == "csv" and labelled and "label_columns" not in out:
        raise ManifestError(file, "label_columns", "missing: a csv source needs the label column name(s)")
    if "empty_values" in layout and not layout.get("label_separator"):
        raise ManifestError(file, _layout_field(src, "empty_values"), "applies to a label_separator column (values "
                                                            "meaning 'no finding'); there is none")
    if layout.get("type") == "csv" and labelled and not layout.get("label_separator") and (
            out.get("multi_label") or len(out.get("label_columns", [])) > 1):
        names = out.get("findings") or out.get("classes") or []
        cols = out["label_columns"]
        if names and sorted(names) != sorted(cols):
            raise ManifestError(file, "label_columns", f"one 0/1 column per finding: the columns {cols} must be "
                                                       f"the findings {names} (in any order); extra columns: "
                                                       f"{sorted(set(cols) - set(names))}, findings without a "
                                                       f"column: {sorted(set(names) - set(cols))}")
    if "caption_template" in out:
        _check_caption_template(file, out["caption_template"])
    splits = out["splits"]
    if src["type"] == "synthetic":
        for k in SPLIT_NAMES:
            if k not in splits:
                raise ManifestError(file, f"splits.{k}", "missing: a synthetic source needs a size per split")
    else:
        if not any(k in splits for k in ("column", "fractions", "builtin")):
            raise ManifestError(file, "splits", "expected one of 'column' (a split column in the csv), "
                                                "'fractions' (random split) or 'builtin: true'")
        if "fractions" in splits:
            total = sum(splits["fractions"].values())
            if abs(total - 1.0) > 1e-6:
                raise ManifestError(file, "splits.fractions", f"fractions must sum to 1, got {total:g}")
        if "column" in splits and "fractions" in splits:
            raise ManifestError(file, "splits.fractions", "given together with splits.column: the column decides "
                                                          "the split; to carve a validation split out of the "
                                                          "column's training rows use splits.val_fraction instead")
        if splits.get("stratify") and ("fractions" not in splits or out.get("multi_label")
                                       or not out.get("classes")):
            raise ManifestError(file, "splits.stratify", "splits each class in the same fractions: it needs "
                                                         "splits.fractions and one class per image (not multi_label)")
        if "val_fraction" in splits and "column" not in splits and "builtin" not in splits:
            raise ManifestError(file, "splits.val_fraction", "carves validation out of the training rows of "
                                                             "splits.column (or a builtin split); with "
                                                             "splits.fractions give fractions.val instead")
        values = splits.get("values", {})
        unknown = sorted(set(values) - set(SPLIT_NAMES))
        if unknown:
            raise ManifestError(file, f"splits.values.{unknown[0]}", f"unknown split name; expected some of {SPLIT_NAMES}")
        if "val_fraction" in splits and "val" in values:
            raise ManifestError(file, "splits.values.val", "given together with splits.val_fraction: validation "
                                                           "comes either from the column or from the training rows")
        used = [k for k in SPLIT_NAMES if not (k == "val" and "val_fraction" in splits)]
        raw = [values.get(k, k) for k in used]
        if len(set(raw)) != len(raw):
            dup = sorted({v for v in raw if raw.count(v) > 1})[0]
            raise ManifestError(file, "splits.values", f"two splits map to the same value {dup!r}: each value of "
                                                       "the split column must name one split (to take validation "
                                                       "images from the training rows, use splits.val_fraction)")
    if out.get("patient_disjoint") and "patient_column" not in out:
        raise ManifestError(file, "patient_disjoint", "needs patient_column (which column names the patient)")
    if "patient_column" in out and layout.get("type") != "csv":
        raise ManifestError(file, "patient_column", "only a csv source can name a patient column")
    out.setdefault("description", "")
    out.setdefault("multi_label", False)
    return out


@dataclass
class Manifest:
    """A validated manifest.

    Attributes:
        name: dataset name.
        data: the validated fields (plain dict, as in the YAML).
        path: the YAML file it came from (None when built from a dict).
    """

    name: str
    data: dict[str, Any]
    path: Path | None = None

    @property
    def source(self) -> dict[str, Any]:
        return self.data["source"]

    @property
    def tasks(self) -> list[str]:
        return list(self.data["tasks"])

    @property
    def classes(self) -> list[str]:
        return list(self.data.get("classes") or self.data.get("findings") or [])

    @property
    def findings(self) -> list[str]:
        return list(self.data.get("findings") or [])

    @property
    def multi_label(self) -> bool:
        return bool(self.data.get("multi_label"))

    @property
    def label_noun(self) -> str:
        """What one label is called in printed text ("grade" for diabetic-retinopathy sets): the
        manifest's ``label_noun``, else "finding" (multi-label) or "class"."""
        return str(self.data.get("label_noun") or ("finding" if self.multi_label else "class"))

    def layout_field(self, key: str) -> str:
        """The manifest path of a layout field, for error messages (``source.layout.<key>`` or
        ``source.<key>``)."""
        return _layout_field(self.source, key)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def split_rule(self) -> str:
        """How this manifest's images are split, in words (printed by ``data verify``, recorded in runs)."""
        sp = self.data["splits"]
        if self.source["type"] == "synthetic":
            return f"procedural: {sp['train']} / {sp['val']} / {sp['test']} images (train / val / test)"
        by = f"patients ({self.data['patient_column']!r})" if "patient_column" in self.data else "images"
        if "column" in sp:
            values = {k: sp.get("values", {}).get(k, k) for k in SPLIT_NAMES}
            if "val_fraction" in sp:
                values.pop("val")
            rule = f"column {sp['column']!r}: " + ", ".join(f"{k} = {v!r}" for k, v in values.items())
        elif "fractions" in sp:
            fr = sp["fractions"]
            how = "random, stratified by class," if sp.get("stratify") else "random"
            return (f"{how} by {by}: {fr['train']:.0%} / {fr['val']:.0%} / {fr['test']:.0%} (train / val / test), "
                    f"seed {sp.get('seed', 0)}")
        else:
            rule = "the dataset's own (builtin) split"
        if "val_fraction" in sp:
            rule += f"; validation = {sp['val_fraction']:.0%} of the training {by}, seed {sp.get('seed', 0)}"
        return rule

    def resolve(self, value: str) -> Path:
        """Resolve a path field: ``${VAR}`` and ``~`` expanded; relative to the cache data dir."""
        expanded = os.path.expanduser(os.path.expandvars(value))
        if "$" in expanded:
            raise ManifestError(self.path or self.name, "path",
                                f"{value!r} uses an environment variable that is not set")
        p = Path(expanded)
        return p if p.is_absolute() else data_dir(self.name) / p

    def describe(self) -> str:
        """A few lines for ``nbsupport data describe``."""
        d = self.data
        lines = [f"{d['name']}: {d['title']}", f"  tasks     : {', '.join(d['tasks'])}",
                 f"  modality  : {d['modality']}", f"  source    : {d['source']['type']}",
                 f"  license   : {d['license']}", f"  citation  : {d['citation']}"]
        if self.classes:
            lines.append(f"  {'findings' if self.multi_label else 'classes'}   : {', '.join(self.classes)}")
        if "native_resolution" in d:
            lines.append(f"  resolution: {d['native_resolution']} px")
        if d.get("description"):
            lines.append(f"  {d['description'].strip()}")
        return "\n".join(lines)


def _manifest_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return manifests_dir() / f"{name_or_path}.yaml"


def load_manifest(name_or_path: str | Path | dict[str, Any]) -> Manifest:
    """Load and validate a manifest by name (``data_manifests/<name>.yaml``), path, or dict.

    Raises:
        FileNotFoundError: naming the file and listing the shipped manifests.
        ManifestError: for invalid YAML or an invalid field.
    """
    if isinstance(name_or_path, dict):
        data = validate_manifest(name_or_path, "<dict>")
        return Manifest(data["name"], data, None)
    path = _manifest_path(name_or_path)
    if not path.is_file():
        known = ", ".join(list_manifests()) or "none"
        raise FileNotFoundError(f"no manifest {str(name_or_path)!r} (looked for {path}); "
                                f"shipped manifests: {known}. To add one, see book/add_a_dataset.md")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ManifestError(path, "<yaml>", f"not valid YAML: {exc}") from exc
    data = validate_manifest(raw, path)
    return Manifest(data["name"], data, path)


def list_manifests(directory: Path | None = None) -> list[str]:
    """Names of the manifests in ``data_manifests/``."""
    directory = directory or manifests_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def dataset_name(dataset: str) -> str:
    """The name a dataset goes by in record and folder names: ``dataset`` itself, or the ``name``
    field of a manifest given as a file path (``-p dataset path/to/my.yaml``)."""
    if dataset.endswith((".yaml", ".yml")) or "/" in dataset:
        return load_manifest(dataset).name
    return dataset


def load_manifests(directory: Path | None = None) -> dict[str, Manifest | Exception]:
    """Every manifest in ``data_manifests/`` by name, loaded; a file that does not load maps to its
    error (:class:`ManifestError` naming the field, or the reading error), so one bad file never
    hides the others (``nbsupport data list``, chapter 0's catalogue)."""
    directory = directory or manifests_dir()
    out: dict[str, Manifest | Exception] = {}
    for name in list_manifests(directory):
        try:
            out[name] = load_manifest(directory / f"{name}.yaml")
        except (ManifestError, OSError, ValueError) as exc:
            out[name] = exc
    return out
