"""What a dataset *is*, as keys and a hash: for leakage checks and for run keys.

:func:`item_keys` names each item (a procedural seed, a file path, a patient id); :func:`fingerprint`
hashes everything that decides what a model trained on the dataset sees: the items, their labels,
how they are rendered (camera, image size, normalisation) and the manifest's content. A changed
split, a relabelled image or another camera gives another fingerprint, so a checkpoint trained on
the old data is never resumed for the new (see :func:`nbsupport.vit.experiment.run_method`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset, Subset

__all__ = ["item_keys", "fingerprint"]


def item_keys(ds: Dataset, by: str = "image") -> list[Any]:
    """Identity keys of a dataset's items, for leakage checks: procedural seeds, file paths,
    or patient ids (``by="patient"``, file-based sets with a patient column)."""
    if isinstance(ds, Subset):
        keys = item_keys(ds.dataset, by)
        return [keys[i] for i in ds.indices]
    if isinstance(ds, ConcatDataset):
        return [k for part in ds.datasets for k in item_keys(part, by)]
    if hasattr(ds, "seeds"):
        return list(ds.seeds)
    if hasattr(ds, "items"):
        return [(it.patient if by == "patient" else str(it.path)) for it in ds.items]
    if hasattr(ds, "entries") and hasattr(ds, "root"):                  # generated images
        return [str(Path(ds.root) / e["file"]) for e in ds.entries]
    if hasattr(ds, "images") and hasattr(ds, "targets"):   # MedMNIST: indices within one split file
        split = getattr(ds, "split", "?")
        return [("medmnist", getattr(getattr(ds, "manifest", None), "name", "?"), split, i) for i in range(len(ds))]
    raise TypeError(f"cannot identify the items of a {type(ds).__name__}")


WORDING_FIELDS = ("label_noun",)     # manifest fields that change printed words only, never a tensor


def _manifest_digest(manifest: Any) -> str | None:
    if manifest is None:
        return None
    data = getattr(manifest, "data", manifest)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in WORDING_FIELDS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _transform_name(transform: Any) -> str | None:
    """``repr`` without memory addresses (a lambda's repr changes every run)."""
    return None if transform is None else re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))


def _describe(ds: Dataset) -> Any:
    """A JSON-able description of everything that decides the dataset's tensors."""
    if isinstance(ds, Subset):
        indices = list(map(int, ds.indices))
        if indices == list(range(len(ds.dataset))):                     # all of it, in order: the same data
            return _describe(ds.dataset)
        return {"subset_of": _describe(ds.dataset), "indices": indices}
    if isinstance(ds, ConcatDataset):
        return {"concat": [_describe(d) for d in ds.datasets]}
    camera = getattr(ds, "camera", None)
    if camera is not None and not isinstance(camera, str):
        camera = repr(camera)
    entries = getattr(ds, "entries", None)
    return {
        "type": type(ds).__name__,
        "manifest": _manifest_digest(getattr(ds, "manifest", None)),
        "split": getattr(ds, "split", None),
        "items": item_keys(ds),
        "targets": [t if t is None or isinstance(t, (int, float, str)) else list(map(float, t))
                    for t in getattr(ds, "targets", [])],                   # None: a mask is the label
        "render": [getattr(ds, "image_size", None), camera, getattr(ds, "task", None),
                   list(getattr(ds, "mean", None) or []), list(getattr(ds, "std", None) or []),
                   _transform_name(getattr(ds, "transform", None))],
        "generated": [e.get("prompt") for e in entries] if entries else None,
        **({"masks_version": ds.masks_version} if getattr(ds, "masks_version", None) else {}),
        **({"masks": _mask_files(ds.items)} if getattr(ds, "task", None) == "segmentation"
           and hasattr(ds, "items") else {}),
    }


def _mask_files(items: Any) -> list[list[str]]:
    """Each item's mask files with a digest of their bytes: an edited mask is new labels."""
    return [[f"{m}:{hashlib.sha256(Path(m).read_bytes()).hexdigest()[:16]}" for m in (it.masks or [])]
            for it in items]


def fingerprint(ds: Dataset) -> str:
    """A short hash of what a model trained on ``ds`` sees (items, labels, rendering, manifest)."""
    blob = json.dumps(_describe(ds), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
