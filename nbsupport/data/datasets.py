"""Turn a manifest into torch datasets for classification, segmentation and text-to-image.

>>> m = load_manifest("fundus-procedural")
>>> ds = build_dataset(m, "train", task="classification", image_size=64, limit=32)
>>> x, y = ds[0]            # x: [3, 64, 64] float, y: int grade

Sources: ``synthetic`` (the procedural fundus generator), ``folder`` (class sub-folders, optionally
under train/val/test), ``csv`` (path + label columns, multi-label, patient ids), ``medmnist``,
``url`` (pooch, sha256-checked, into the cache) and ``manual`` (instructions until the files are
in place). Nothing is downloaded unless a dataset is built with ``download=True`` (the default for
:func:`build_dataset`; ``nbsupport data fetch NAME`` does it ahead of time).
"""

from __future__ import annotations

from collections import Counter

import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from nbsupport.data import fundus
from nbsupport.data.manifests import SPLIT_NAMES, Manifest, load_manifest
from nbsupport.core.paths import data_dir

__all__ = [
    "DataError",
    "DataUnavailableError",
    "ImageItem",
    "FundusDataset",
    "ImageListDataset",
    "MedMNISTDataset",
    "build_dataset",
    "list_items",
    "fetch",
    "verify",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SYNTHETIC_SPLIT_ID = {"train": 1, "val": 2, "test": 3}
DEFAULT_CLASS_BALANCE = (0.2, 0.2, 0.2, 0.2, 0.2)


class DataError(ValueError):
    """Bad data on disk: names the file, the manifest field concerned and the expectation."""

    def __init__(self, file: str | Path, field: str, message: str) -> None:
        self.file, self.field, self.message = str(file), field, message
        super().__init__(f"{file}: field '{field}': {message}")


class DataUnavailableError(RuntimeError):
    """The data is not here and cannot be fetched now (offline, or a manual download)."""


@dataclass
class ImageItem:
    """One image of a file-based dataset.

    Attributes:
        path: image file.
        target: class index (single-label), multi-hot list (multi-label) or None.
        split: train / val / test (None until assigned).
        patient: patient id, if the manifest names a patient column.
        masks: mask files, one per finding (segmentation).
    """

    path: Path
    target: int | list[float] | None
    split: str | None = None
    patient: str | None = None
    masks: list[Path] | None = None


# ----------------------------------------------------------------------------- transforms


DEFAULT_EMPTY_VALUES = ("No Finding", "no finding", "None", "none")   # label_separator: no finding
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")    # 16-bit, 32-bit integer and float images


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``img``. A 16-bit, 32-bit or float image (a radiograph's PNG or TIFF,
    modes :data:`WIDE_MODES`) is first scaled from its own minimum and maximum to 0-255: PIL's plain
    conversion would clip every value above 255 to white. Other modes (grey, palette, RGBA) convert
    as PIL converts them."""
    if img.mode in WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.round(arr).astype(np.uint8))
    return img.convert("RGB")


def to_tensor(img: Image.Image, size: int, mean: Sequence[float] | None, std: Sequence[float] | None,
              resample: int = Image.BICUBIC) -> torch.Tensor:
    """PIL image -> ``[3, size, size]`` float tensor, normalised by mean/std when given
    (else left in [0, 1]); 16-bit and float images are scaled by their own range (:func:`to_rgb`)."""
    img = to_rgb(img)
    if img.size != (size, size):
        img = img.resize((size, size), resample)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    if mean is not None and std is not None:
        x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x


def _mask_tensor(masks: Sequence[np.ndarray | Image.Image], size: int) -> torch.Tensor:
    """Binary masks ``[K, size, size]``: a pixel is on when any of its channels is above 127 (so a
    red-on-black mask, as IDRiD's, counts as on; its grey value would be 76)."""
    out = []
    for m in masks:
        im = m if isinstance(m, Image.Image) else Image.fromarray(np.asarray(m).astype(np.uint8) * 255)
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.NEAREST)
        out.append(torch.from_numpy(np.asarray(im).max(axis=-1) > 127))
    return torch.stack(out).float()


class _TaskMixin:
    """Shared output logic: one ``__getitem__`` contract per task.

    classification : ``(x [3,S,S] normalised, y)``; y int (single) or float ``[C]`` (multi-label)
    segmentation   : ``(x [3,S,S] normalised, masks [K,S,S] float 0/1)``
    text-to-image  : ``{"pixel_values": [3,S,S] in [-1,1], "caption": str, "label": y}``
    """

    task: str
    image_size: int
    mean: Sequence[float] | None
    std: Sequence[float] | None
    transform: Callable[[Image.Image], torch.Tensor] | None
    manifest: Manifest

    def _image(self, img: Image.Image) -> torch.Tensor:
        if self.transform is not None:
            return self.transform(img)
        if self.task == "text-to-image":
            return to_tensor(img, self.image_size, None, None) * 2.0 - 1.0
        return to_tensor(img, self.image_size, self.mean, self.std)

    def _caption(self, target: Any, source_caption: str | None) -> str:
        template = self.manifest.get("caption_template", "{caption}")
        classes = self.manifest.classes
        if isinstance(target, list):
            present = [c for c, v in zip(classes, target) if v > 0.5]
            if not present and self.manifest.get("caption_empty"):
                return str(self.manifest["caption_empty"])
            label = ", ".join(present)
            findings = ", ".join(present)
        else:
            label = classes[target] if target is not None and classes else ""
            findings = label
        return template.format(label=label, findings=findings, caption=source_caption or label)


# ----------------------------------------------------------------------------- synthetic


class FundusDataset(_TaskMixin, Dataset):
    """The procedural fundus images as a dataset (deterministic; splits never share a seed).

    Args:
        n: number of images.
        split: train / val / test (selects a disjoint seed range).
        image_size: output side in pixels.
        seed: base seed of the whole dataset.
        class_balance: five grade proportions; counts are exact (rounded), order shuffled.
        camera: camera preset name or :class:`nbsupport.data.fundus.CameraModel`.
        task: classification / segmentation / text-to-image.
        cache: keep generated samples in memory (default: when they total < 256 MB).
    """

    def __init__(self, n: int, split: str = "train", image_size: int = 64, seed: int = 0,
                 class_balance: Sequence[float] = DEFAULT_CLASS_BALANCE,
                 camera: str | fundus.CameraModel = "default", task: str = "classification",
                 manifest: Manifest | None = None, mean: Sequence[float] | None = IMAGENET_MEAN,
                 std: Sequence[float] | None = IMAGENET_STD,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None,
                 cache: bool | None = None) -> None:
        if split not in SYNTHETIC_SPLIT_ID:
            raise ValueError(f"split={split!r}: expected one of {list(SYNTHETIC_SPLIT_ID)}")
        self.n, self.split, self.image_size, self.seed = int(n), split, int(image_size), int(seed)
        self.camera, self.task = camera, task
        # procedural masks have versions (fundus.MASKS_VERSION): part of the fingerprint of a
        # segmentation set, so a run on older masks is never resumed; None for other tasks
        self.masks_version = fundus.MASKS_VERSION if task == "segmentation" else None
        self.manifest = manifest or load_manifest("fundus-procedural")
        self.mean, self.std, self.transform = mean, std, transform
        self.classes = list(fundus.GRADE_SHORT)
        self.mask_kinds = list(self.manifest.get("mask_kinds") or fundus.LESION_KINDS)
        bad = [k for k in self.mask_kinds if k not in fundus.MASK_KINDS]
        if bad:
            raise DataError(self.manifest.path or self.manifest.name, "mask_kinds",
                            f"{bad} are not drawn by the generator; expected some of {list(fundus.MASK_KINDS)}")
        p = np.asarray(class_balance, dtype=np.float64)
        if p.shape != (5,) or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"class_balance={list(class_balance)}: expected 5 non-negative proportions")
        counts = np.floor(p / p.sum() * self.n).astype(int)
        remainder = self.n - counts.sum()
        order = np.argsort(-(p / p.sum() * self.n - counts))
        counts[order[:remainder]] += 1
        grades = np.repeat(np.arange(5), counts)
        rng = np.random.default_rng([self.seed, SYNTHETIC_SPLIT_ID[split]])
        self.grades = rng.permutation(grades).tolist()
        self.seeds = [(self.seed * 10 + SYNTHETIC_SPLIT_ID[split]) * 1_000_000 + i for i in range(self.n)]
        self.targets = list(self.grades)
        self._cache: dict[int, fundus.FundusSample] = {}
        self._use_cache = cache if cache is not None else self.n * self.image_size**2 * 3 < 256 * 2**20

    def __len__(self) -> int:
        return self.n

    def sample(self, i: int) -> fundus.FundusSample:
        """The raw :class:`~nbsupport.data.fundus.FundusSample` of item ``i``."""
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        if i in self._cache:
            return self._cache[i]
        s = fundus.generate_fundus(self.seeds[i], self.grades[i], self.image_size, self.camera)
        if self._use_cache:
            self._cache[i] = s
        return s

    def __getitem__(self, i: int) -> Any:
        s = self.sample(i)
        x = self._image(Image.fromarray(s.image))
        if self.task == "classification":
            return x, s.grade
        if self.task == "segmentation":
            return x, _mask_tensor([s.masks[k] for k in self.mask_kinds], self.image_size)
        return {"pixel_values": x, "caption": self._caption(s.grade, s.caption), "label": s.grade}


# ----------------------------------------------------------------------------- file based


def _read_image(path: Path, field: str = "image") -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise DataError(path, field, "image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(path, field, f"cannot be read as an image ({exc.__class__.__name__}: {exc}); "
                                     "re-download or remove it from the dataset") from None


class ImageListDataset(_TaskMixin, Dataset):
    """A dataset over a list of :class:`ImageItem` (folder, csv, url and manual sources)."""

    def __init__(self, items: list[ImageItem], manifest: Manifest, task: str = "classification",
                 image_size: int = 224, mean: Sequence[float] | None = IMAGENET_MEAN,
                 std: Sequence[float] | None = IMAGENET_STD,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None) -> None:
        self.items, self.manifest, self.task = items, manifest, task
        self.image_size, self.mean, self.std, self.transform = int(image_size), mean, std, transform
        self.classes = manifest.classes
        self.targets = [it.target for it in items]
        self.mask_kinds = manifest.findings if task == "segmentation" else []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        it = self.items[i]
        image = _read_image(it.path)
        x = self._image(image)
        if self.task == "classification":
            y = it.target
            return x, (torch.tensor(y, dtype=torch.float32) if isinstance(y, list) else int(y))
        if self.task == "segmentation":
            return x, _mask_tensor(_read_masks(it, image, self.manifest), self.image_size)
        return {"pixel_values": x, "caption": self._caption(it.target, None), "label": it.target}


class MedMNISTDataset(_TaskMixin, Dataset):
    """A MedMNIST+ split (e.g. RetinaMNIST at 224 px).

    The ``medmnist`` package downloads the archive (md5-checked) into the nbsupport cache; the
    arrays are then read memory-mapped from its ``.npz`` (no pickle).
    """

    def __init__(self, manifest: Manifest, split: str, task: str = "classification", image_size: int = 224,
                 mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None, download: bool = True) -> None:
        src = manifest.source
        flag, size = src["flag"], int(src.get("size", 28))
        root = data_dir(manifest.name)
        npz = root / f"{flag}{'' if size == 28 else f'_{size}'}.npz"
        if not npz.exists():
            if not download:
                raise DataUnavailableError(f"{npz} is missing: run `nbsupport data fetch {manifest.name}`")
            _download_medmnist(manifest, flag, size, root, npz)
        try:
            arrays = np.load(npz, mmap_mode="r", allow_pickle=False)
            self.images = arrays[f"{split}_images"]
            labels = np.asarray(arrays[f"{split}_labels"])
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(npz, "source.flag", f"not a readable MedMNIST archive with a {split!r} split "
                                                f"({exc}); delete it and fetch again") from None
        self.manifest, self.task, self.image_size = manifest, task, int(image_size)
        self.mean, self.std, self.transform = mean, std, transform
        self.classes = manifest.classes
        self.targets = [int(v) for v in labels.reshape(len(labels), -1)[:, 0]]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> Any:
        arr = np.asarray(self.images[i])
        img = to_rgb(Image.fromarray(arr))
        y = self.targets[i]
        x = self._image(img)
        if self.task == "classification":
            return x, y
        return {"pixel_values": x, "caption": self._caption(y, None), "label": y}


def _download_medmnist(manifest: Manifest, flag: str, size: int, root: Path, npz: Path) -> None:
    try:
        medmnist = importlib.import_module("medmnist")
    except ImportError:
        raise DataUnavailableError("the medmnist source needs the medmnist package: "
                                   "pip install 'nbsupport[data]' (or pip install medmnist)") from None
    if flag not in medmnist.INFO:
        raise DataError(manifest.path or manifest.name, "source.flag",
                        f"unknown MedMNIST flag {flag!r}; expected one of {sorted(medmnist.INFO)}")
    info = medmnist.INFO[flag]
    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, info["python_class"])
    try:
        cls(split="train", download=True, root=str(root), size=size, mmap_mode="r")
    except Exception as exc:  # medmnist raises bare RuntimeError / requests errors
        url = info.get(f"url_{size}", info["url"])
        raise DataUnavailableError(
            f"could not download MedMNIST {flag!r} at {size} px into {root} ({exc.__class__.__name__}: {exc}). "
            f"Network unavailable? Download {npz.name} from {url} and place it in {root}, "
            "or use profile='smoke' (procedural data)") from exc


def _items_from_folder(manifest: Manifest, layout: dict[str, Any], root: Path) -> list[ImageItem]:
    exts = tuple(e.lower() for e in layout.get("extensions", DEFAULT_EXTENSIONS))
    classes = manifest.classes
    where = manifest.path or manifest.name
    if not root.is_dir():
        raise DataError(root, "source.root", "folder not found: expected one sub-folder per class "
                                             f"({', '.join(classes)}), optionally under train/val/test")
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    split_dirs = [s for s in SPLIT_NAMES if s in subdirs]
    bases = [(root / s, s) for s in split_dirs] if split_dirs else [(root, None)]
    items: list[ImageItem] = []
    for base, split in bases:
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            if d.name not in classes:
                raise DataError(d, "classes", f"sub-folder {d.name!r} is not a class of manifest {where}; "
                                              f"expected one of {classes}")
            for f in sorted(d.rglob("*")):
                if f.suffix.lower() in exts and f.is_file():
                    items.append(ImageItem(f, classes.index(d.name), split))
    if not items:
        raise DataError(root, "source.root", f"no images with extensions {exts} under class sub-folders")
    return items


def _items_from_pairs(manifest: Manifest, layout: dict[str, Any], base: Path) -> list[ImageItem]:
    """An image folder and a mask folder: ``masks/<image stem><mask_suffix>`` for every image."""
    exts = tuple(e.lower() for e in layout.get("extensions", DEFAULT_EXTENSIONS))
    images = Path(os.path.expandvars(layout["images"])).expanduser()
    masks = Path(os.path.expandvars(layout["masks"])).expanduser()
    images, masks = (p if p.is_absolute() else base / p for p in (images, masks))
    for folder, field in ((images, manifest.layout_field("images")), (masks, manifest.layout_field("masks"))):
        if not folder.is_dir():
            raise DataError(folder, field, "folder not found")
    suffix = layout.get("mask_suffix", ".png")
    items, orphans = [], []
    for f in sorted(images.iterdir()):
        if f.suffix.lower() not in exts or not f.is_file():
            continue
        m = masks / f"{f.stem}{suffix}"
        if not m.is_file():
            orphans.append(f.name)
            continue
        items.append(ImageItem(f, None, None, None, [m]))
    if orphans:
        raise DataError(images / orphans[0], manifest.layout_field("masks"),
                        f"{len(orphans)} image(s) have no mask {masks}/<stem>{suffix}, e.g. {orphans[:3]}; "
                        "nothing trains on unpaired images: add the masks, remove the images, or fix mask_suffix")
    if not items:
        raise DataError(images, manifest.layout_field("images"), f"no images with extensions {exts}")
    return items


def _read_masks(it: ImageItem, image: Image.Image, manifest: Manifest) -> list[Any]:
    """The masks of one item, checked against its image: one ``bool [H, W]`` array per kind (one
    index or colour mask of a ``pairs`` source) or one image per mask column (csv)."""
    if not it.masks:
        raise DataError(it.path, manifest.layout_field("mask_columns"), "no mask files for this image")
    layout = manifest.source.get("layout", manifest.source)
    if layout.get("type") == "pairs":
        return _mask_channels(_read_image(it.masks[0], "mask"), image, manifest, it.masks[0])
    masks = [_read_image(m, "mask") for m in it.masks]
    for m, path in zip(masks, it.masks):
        if m.size != image.size:
            raise DataError(path, manifest.layout_field("mask_columns"),
                            f"mask is {m.size[0]}x{m.size[1]} but its image {it.path.name} is "
                            f"{image.size[0]}x{image.size[1]}: a misaligned pair; fix the mask")
    return masks


def _mask_channels(mask: Image.Image, image: Image.Image, manifest: Manifest, path: Path) -> list[np.ndarray]:
    """One ``bool [H, W]`` array per kind (``manifest.findings``) from an index or colour mask of a
    ``pairs`` source, checked against its image."""
    layout = manifest.source.get("layout", manifest.source)
    if mask.size != image.size:
        raise DataError(path, manifest.layout_field("masks"), f"mask is {mask.size[0]}x{mask.size[1]} but its image is "
                                                     f"{image.size[0]}x{image.size[1]}: a misaligned pair; "
                                                     "fix the mask (nothing trains on it)")
    colour = any(isinstance(v, list) for v in layout["mask_map"].values())
    arr = np.asarray(mask.convert("RGB" if colour else "L"), dtype=np.int16)
    tol = int(layout.get("mask_tolerance", 0))
    background = layout.get("background", [0, 0, 0] if colour else 0)

    def near(value: Any) -> np.ndarray:
        diff = np.abs(arr - np.asarray(value, dtype=np.int16))
        return (diff.max(-1) if colour else diff) <= tol

    channels = [near(layout["mask_map"][k]) for k in manifest.findings]
    known = near(background)
    for c in channels:
        known |= c
    if not known.all():
        values = arr[~known][:1000].tolist()
        shown = sorted({tuple(v) if colour else v for v in values})[:5]
        raise DataError(path, manifest.layout_field("mask_map"), f"{int((~known).sum())} pixel(s) have values {shown} that "
                                                        f"are neither background {background} nor in mask_map "
                                                        f"{layout['mask_map']} (tolerance {tol}); JPEG masks need "
                                                        "mask_tolerance > 0")
    return channels


def _items_from_csv(manifest: Manifest, layout: dict[str, Any], base: Path) -> list[ImageItem]:
    import pandas as pd

    csv_path = Path(os.path.expandvars(layout["path"])).expanduser()
    csv_path = csv_path if csv_path.is_absolute() else base / csv_path
    if not csv_path.is_file():
        raise DataError(csv_path, "source.path", "csv file not found")
    names = layout.get("column_names")
    df = pd.read_csv(csv_path, sep=layout.get("separator", ","), dtype=str, keep_default_na=False,
                     header=None if names else "infer", names=names)
    labelled = bool({"classification", "text-to-image"} & set(manifest.tasks))
    label_cols = list(manifest["label_columns"]) if labelled else []
    needed = {"source.image_column": [layout["image_column"]], "label_columns": label_cols}
    if "patient_column" in manifest.data:
        needed["patient_column"] = [manifest["patient_column"]]
    if "column" in manifest["splits"]:
        needed["splits.column"] = [manifest["splits"]["column"]]
    for field, cols in needed.items():
        for col in cols:
            if col not in df.columns:
                raise DataError(csv_path, field, f"column {col!r} is not in the csv; its columns are "
                                                 f"{list(df.columns)}")
    image_root = Path(layout.get("image_root", "."))
    image_root = image_root if image_root.is_absolute() else (
        manifest.resolve(layout["image_root"]) if "image_root" in layout else csv_path.parent)
    suffix = layout.get("image_suffix", "")
    classes = manifest.classes
    multi = manifest.multi_label or len(label_cols) > 1
    label_sep = layout.get("label_separator")
    positives = {str(v) for v in layout.get("positive_values", ["1", "1.0", "True", "true"])}
    split_cfg = manifest["splits"]
    used = [k for k in SPLIT_NAMES if not (k == "val" and "val_fraction" in split_cfg)]
    values = {k: split_cfg.get("values", {}).get(k, k) for k in used}      # split -> value in the column
    empty = {str(v) for v in layout.get("empty_values", DEFAULT_EMPTY_VALUES)} | {""}   # "no finding"
    unknown: dict[str, int] = {}                                         # label value -> first csv line
    items: list[ImageItem] = []
    missing: list[str] = []
    target: int | list[float] | None
    for row_no, row in enumerate(df.itertuples(index=False), start=2):
        r = dict(zip(df.columns, row))
        path = image_root / f"{r[layout['image_column']]}{suffix}"
        if not path.is_file():
            missing.append(f"{path} (csv line {row_no})")
            continue
        if not labelled:
            target = None
        elif multi and label_sep:
            present = {v.strip() for v in str(r[label_cols[0]]).split(label_sep)} - empty
            for v in present - set(classes):
                unknown.setdefault(v, row_no)
            target: int | list[float] = [1.0 if c in present else 0.0 for c in classes]
        elif multi:                               # one 0/1 column per finding, in the findings' order
            target = [1.0 if str(r[c]) in positives else 0.0 for c in (classes or label_cols)]
        else:
            raw = str(r[label_cols[0]])
            if raw in classes:
                target = classes.index(raw)
            else:
                try:
                    value = float(raw)
                    if not value.is_integer():
                        raise ValueError(raw)
                    target = int(value)
                except ValueError:
                    raise DataError(csv_path, "label_columns", f"line {row_no}: label {raw!r} in column "
                                                               f"{label_cols[0]!r} is neither a class name "
                                                               f"{classes} nor a class index (0-{len(classes) - 1})") from None
                if not 0 <= target < len(classes):
                    raise DataError(csv_path, "label_columns", f"line {row_no}: class index {target} out of "
                                                               f"range for {len(classes)} classes")
        split = None
        if "column" in split_cfg:
            raw_split = str(r[split_cfg["column"]])
            split = next((k for k, v in values.items() if v == raw_split), None)
            if split is None:
                raise DataError(csv_path, "splits.column", f"line {row_no}: split value {raw_split!r} is not "
                                                           f"one of {sorted(set(values.values()))}; map the "
                                                           "column's values with splits.values (e.g. "
                                                           "{train: TRAIN, test: HOLDOUT})")
        masks = None
        if "mask_columns" in layout:
            masks = [image_root / str(r[c]) for c in layout["mask_columns"]]
        patient = str(r[manifest["patient_column"]]) if "patient_column" in manifest.data else None
        items.append(ImageItem(path, target, split, patient, masks))
    if unknown:
        shown = ", ".join(f"{v!r} (line {n})" for v, n in list(unknown.items())[:5])
        raise DataError(csv_path, "label_columns", f"{len(unknown)} value(s) of column {label_cols[0]!r} are not "
                                                   f"among the findings {classes} (names are case-sensitive): "
                                                   f"{shown}; correct the csv, add them to findings, or list "
                                                   "the ones meaning 'no finding' in source.layout.empty_values "
                                                   "(e.g. ['No Finding'])")
    if missing:
        raise DataError(missing[0].split(" (")[0], "source.image_column",
                        f"{len(missing)} image file(s) listed in {csv_path} are missing, e.g. {missing[:3]}; "
                        "check image_root / image_suffix in the manifest")
    return items


def _group(it: ImageItem) -> str:
    return it.patient if it.patient is not None else str(it.path)


def _carve_validation(items: list[ImageItem], fraction: float, seed: int) -> None:
    """Move ``fraction`` of the training groups (patients, else images) to validation."""
    groups = sorted({_group(it) for it in items if it.split == "train"})
    rng = np.random.default_rng([seed, 1])
    n_val = max(1, int(round(fraction * len(groups)))) if groups else 0
    chosen = {groups[i] for i in rng.permutation(len(groups))[:n_val]}
    for it in items:
        if it.split == "train" and _group(it) in chosen:
            it.split = "val"


def _assign_splits(items: list[ImageItem], split_cfg: dict[str, Any]) -> None:
    """The manifest's split rule: the user's column (validation carved out of its training rows
    with ``val_fraction``), else a random split by ``fractions``, grouped by patient when known
    (never split a patient); with ``stratify``, each class is split in those fractions on its own
    (a patient counts in the class most of their images have, the higher on a tie)."""
    if all(it.split is not None for it in items):
        if "val_fraction" in split_cfg:
            _carve_validation(items, float(split_cfg["val_fraction"]), int(split_cfg.get("seed", 0)))
        return
    fr = split_cfg.get("fractions")
    if fr is None:
        raise ValueError("items have no split and the manifest gives no 'fractions'")
    group_of = {id(it): it.patient if it.patient is not None else str(it.path) for it in items}
    groups = sorted(set(group_of.values()))
    strata: dict[Any, list[str]] = {None: groups}
    if split_cfg.get("stratify"):
        labels: dict[str, list[int]] = {}
        for it in items:
            labels.setdefault(group_of[id(it)], []).append(int(it.target))
        strata = {}
        for g in groups:                                        # each patient's commonest class
            counts = np.bincount(labels[g])
            strata.setdefault(int(len(counts) - 1 - counts[::-1].argmax()), []).append(g)
        strata = dict(sorted(strata.items()))
    rng = np.random.default_rng(int(split_cfg.get("seed", 0)))
    which: dict[str, str] = {}
    for members in strata.values():
        order = rng.permutation(len(members))
        n_train = int(round(fr["train"] * len(members)))
        n_val = int(round(fr["val"] * len(members)))
        for rank, gi in enumerate(order):
            which[members[gi]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    for it in items:
        it.split = which[group_of[id(it)]]


def _layout_base(manifest: Manifest) -> tuple[dict[str, Any], Path]:
    src = manifest.source
    layout = src.get("layout", src)
    if src["type"] in ("url", "manual"):
        base = manifest.resolve(layout.get("root", "."))
    elif layout["type"] in ("folder", "pairs"):
        base = manifest.resolve(layout.get("root", "."))
    else:
        base = data_dir(manifest.name)
    return layout, base


def list_items(manifest: Manifest, download: bool = True) -> list[ImageItem]:
    """Every image of a file-based manifest with its target and split."""
    src = manifest.source
    if src["type"] == "url":
        fetch(manifest, download=download)
    elif src["type"] == "manual":
        _check_manual(manifest)
    layout, base = _layout_base(manifest)
    items = (_items_from_folder(manifest, layout, base) if layout["type"] == "folder"
             else _items_from_pairs(manifest, layout, base) if layout["type"] == "pairs"
             else _items_from_csv(manifest, layout, base))
    _assign_splits(items, manifest["splits"])
    _check_patients(manifest, items)
    return items


def shared_patients(items: list[ImageItem]) -> dict[str, list[str]]:
    """Patients with images in more than one split (``{"train/test": [ids]}``), see
    :func:`nbsupport.data.leakage.shared_groups`."""
    from nbsupport.data.leakage import shared_groups

    return shared_groups({s: [it.patient for it in items if it.split == s] for s in SPLIT_NAMES})


def _check_patients(manifest: Manifest, items: list[ImageItem]) -> None:
    """Patients across splits: an error when the manifest says ``patient_disjoint: true``, else a warning."""
    shared = shared_patients(items)
    if not shared:
        return
    where = manifest.path or manifest.name
    said = "; ".join(f"{pair}: {len(ids)} patient(s), e.g. {ids[:3]}" for pair, ids in shared.items())
    msg = (f"the same patients have images in more than one split ({said}). A model tested on a "
           "patient it trained on scores too well. Fix the split column, or use splits.fractions / "
           "splits.val_fraction with patient_column (they never split a patient)")
    if manifest.get("patient_disjoint"):
        raise DataError(where, "patient_disjoint", msg)
    warnings.warn(f"{where}: {msg}", stacklevel=3)


def _check_manual(manifest: Manifest) -> None:
    layout, base = _layout_base(manifest)
    target = base / layout["path"] if layout["type"] == "csv" else base
    if not target.exists():
        src = manifest.source
        what = f"the csv named in {manifest.layout_field('path')}" if layout["type"] == "csv" else "one folder per class"
        raise DataUnavailableError(
            f"dataset {manifest.name!r} must be downloaded by hand.\n{src['instructions'].strip()}\n"
            f"Put it so that {target} exists ({what}); "
            f"the cache root is set by $NBSUPPORT_CACHE. Homepage: {src.get('homepage', manifest.get('homepage', '-'))}")


def _copy_local(url: str, output_file: Any, pooch_: Any) -> None:
    """A pooch downloader for ``file://`` URLs (a local mirror): copies the file; pooch checks the hash."""
    import shutil
    from urllib.parse import unquote, urlparse

    path = Path(unquote(urlparse(url).path))
    if not path.is_file():
        raise FileNotFoundError(f"{url}: no such local file ({path})")
    if hasattr(output_file, "write"):
        with open(path, "rb") as f:
            shutil.copyfileobj(f, output_file)
    else:
        shutil.copyfile(path, output_file)


def fetch(manifest: Manifest | str, download: bool = True) -> Path:
    """Make a manifest's data available locally; return its directory.

    ``url``: pooch downloads and checks the sha256 (once; cached); ``file://`` URLs copy from a
    local mirror (hash checked the same way). ``medmnist``: the npz.
    ``manual``: raises :class:`DataUnavailableError` with instructions until the files are there.
    ``synthetic``/``folder``/``csv``: nothing to fetch.
    """
    manifest = load_manifest(manifest) if not isinstance(manifest, Manifest) else manifest
    src = manifest.source
    target = data_dir(manifest.name)
    if src["type"] == "url":
        import pooch

        target.mkdir(parents=True, exist_ok=True)
        fname = src["url"].rstrip("/").split("/")[-1].split("?")[0] or "download"
        done = target / f".fetched-{src['sha256'][:16]}"
        if done.exists():
            return target
        if not download:
            raise DataUnavailableError(f"{manifest.name}: not downloaded yet; run `nbsupport data fetch {manifest.name}`")
        archive = src.get("archive", "none")
        processor = pooch.Unzip(extract_dir=".") if archive == "zip" else (
            pooch.Untar(extract_dir=".") if archive == "tar" else None)
        try:
            pooch.retrieve(src["url"], known_hash=f"sha256:{src['sha256'].lower()}", fname=fname,
                           path=target, processor=processor, progressbar=False,
                           downloader=_copy_local if src["url"].startswith("file://") else None)
        except ValueError as exc:
            if "hash" in str(exc).lower():
                raise DataError(src["url"], "source.sha256",
                                f"checksum mismatch: expected sha256 {src['sha256'].lower()} ({exc}). The file "
                                "changed upstream or the download is corrupt: delete it and retry, or update "
                                "the manifest's sha256 if you trust the new file") from None
            raise
        except Exception as exc:  # requests' ConnectionError / Timeout / HTTPError
            raise DataUnavailableError(
                f"could not download {src['url']} for dataset {manifest.name!r} "
                f"({exc.__class__.__name__}: {exc}). Network unavailable? Download it by hand and put "
                f"{fname} in {target}, then run `nbsupport data fetch {manifest.name}` again; or use "
                "profile='smoke' (procedural data)") from exc
        done.write_text(src["sha256"])
        return target
    if src["type"] == "medmnist":
        MedMNISTDataset(manifest, "train", download=download)
        return target
    if src["type"] == "manual":
        _check_manual(manifest)
        return _layout_base(manifest)[1]
    return target


def verify(manifest: Manifest | str, max_images: int | None = None) -> dict[str, Any]:
    """Check that a dataset is complete and readable; return the images per split (and per class, for
    single-label classes), the split rule, patients shared between splits and ``problems``.

    Every listed image is opened, with its masks checked against it as a chapter would (up to
    ``max_images``); the first unreadable or misaligned file raises :class:`DataError`.
    """
    manifest = load_manifest(manifest) if not isinstance(manifest, Manifest) else manifest
    src = manifest.source
    report: dict[str, Any] = {"name": manifest.name, "source": src["type"], "splits": {}}
    report["split_rule"] = manifest.split_rule()
    if src["type"] == "synthetic":
        for s in SPLIT_NAMES:
            ds = build_dataset(manifest, s, image_size=64, limit=max_images)
            report["splits"][s] = {"images": manifest["splits"][s],
                                   "classes": np.bincount(ds.targets, minlength=5).tolist()}
        return report
    if src["type"] == "medmnist":
        for s in SPLIT_NAMES:
            ds = MedMNISTDataset(manifest, s, download=False)
            report["splits"][s] = {"images": len(ds), "classes": np.bincount(ds.targets).tolist()}
        return report
    report["split_rule"] = manifest.split_rule()
    with warnings.catch_warnings():                       # shared patients are reported below instead
        warnings.simplefilter("ignore", UserWarning)
        items = list_items(manifest, download=False)
    report["shared_patients"] = {pair: {"patients": len(ids), "examples": ids[:3]}
                                 for pair, ids in shared_patients(items).items()}
    modes: Counter[str] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()                        # (width, height) -> images
    for i, it in enumerate(items):
        if max_images is not None and i >= max_images:
            break
        image = _read_image(it.path)
        modes[image.mode] += 1
        sizes[image.size] += 1
        if it.masks:                            # the checks a chapter makes when it loads the pair
            _read_masks(it, image, manifest)
    report["image_modes"] = dict(modes)
    report["image_sizes"] = {f"{w}x{h}": n for (w, h), n in sizes.most_common(5)}
    notes = []
    wide = sorted(m for m in modes if m in WIDE_MODES)
    if wide:
        notes.append(f"{sum(modes[m] for m in wide)} image(s) in mode {', '.join(wide)} (16-bit or float): each "
                     "is scaled from its own minimum and maximum to 8 bits when loaded")
    if len(sizes) > 1 or any(w != h for w, h in sizes):
        notes.append("images of several sizes or not square: each is resized to the chapter's square "
                     "image size, without cropping (the aspect ratio changes)")
    report["notes"] = notes
    single = bool(manifest.classes) and not manifest.multi_label
    if single:
        report["classes"] = manifest.classes             # the order of each split's "classes" counts
    for s in SPLIT_NAMES:
        sub = [it for it in items if it.split == s]
        report["splits"][s] = {"images": len(sub)}
        if single and all(isinstance(it.target, int) for it in sub):     # images per class, as the others
            report["splits"][s]["classes"] = np.bincount([it.target for it in sub],
                                                         minlength=len(manifest.classes)).tolist()
        elif manifest.multi_label and sub and all(isinstance(it.target, list) for it in sub):
            counts = np.asarray([it.target for it in sub]).sum(0).astype(int).tolist()
            report["splits"][s]["findings"] = dict(zip(manifest.classes, counts))
            report["splits"][s]["no finding"] = sum(1 for it in sub if not any(it.target))
    problems = [f"the {s!r} split has no images: the chapters need train, val and test"
                + (" (add splits.val_fraction to carve validation out of the training rows)"
                   if s == "val" and "column" in manifest["splits"] else "")
                for s in SPLIT_NAMES if not report["splits"][s]["images"]]
    problems += [f"{v['patients']} patient(s) in both {pair}, e.g. {v['examples']}"
                 for pair, v in report["shared_patients"].items()]
    report["problems"] = problems
    return report


def build_dataset(
    manifest: Manifest | str,
    split: str = "train",
    task: str = "classification",
    image_size: int = 224,
    limit: int | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    download: bool = True,
) -> Dataset:
    """A torch dataset for one split and task of a manifest.

    Args:
        manifest: a :class:`Manifest` or a manifest name / path.
        split: ``train`` / ``val`` / ``test``.
        task: ``classification`` / ``segmentation`` / ``text-to-image`` (must be in the manifest).
        image_size: square output side in pixels.
        limit: keep at most this many images (the first ones, for determinism; synthetic sets are
            generated at this size instead).
        mean, std: normalisation for classification/segmentation (``None`` leaves [0, 1]).
        transform: replaces the default PIL -> tensor transform.
        download: fetch url/medmnist data when it is not cached.
    """
    manifest = load_manifest(manifest) if not isinstance(manifest, Manifest) else manifest
    where = manifest.path or manifest.name
    if task not in manifest.tasks:
        raise DataError(where, "tasks", f"task {task!r} is not offered by this manifest; it offers {manifest.tasks}")
    if split not in SPLIT_NAMES:
        raise ValueError(f"split={split!r}: expected one of {SPLIT_NAMES}")
    src = manifest.source
    if src["type"] == "synthetic":
        n = int(manifest["splits"][split])
        n = min(n, limit) if limit is not None else n
        return FundusDataset(n, split, image_size, seed=int(src.get("seed", 0)),
                             class_balance=src.get("class_balance", DEFAULT_CLASS_BALANCE),
                             camera=src.get("camera", "default"), task=task, manifest=manifest,
                             mean=mean, std=std, transform=transform)
    if src["type"] == "medmnist":
        ds = MedMNISTDataset(manifest, split, task, image_size, mean, std, transform, download)
        if limit is not None and limit < len(ds):
            return _Subset(ds, list(range(limit)))
        return ds
    everything = list_items(manifest, download=download)
    items = [it for it in everything if it.split == split]
    if not items:
        counts = {s: sum(it.split == s for it in everything) for s in SPLIT_NAMES}
        fix = ("add splits.val_fraction (e.g. 0.15) to carve a validation split out of the training rows"
               if split == "val" and "column" in manifest["splits"] else
               "check splits.column / splits.values, or the fractions")
        raise DataError(where, "splits", f"the {split!r} split has no images (split rule: {manifest.split_rule()}; "
                                         f"images per split: {counts}); {fix}")
    if limit is not None:
        items = items[:limit]
    return ImageListDataset(items, manifest, task, image_size, mean, std, transform)


class _Subset(torch.utils.data.Subset):
    """A Subset that keeps ``targets`` and ``classes`` of its base."""

    def __init__(self, base: Dataset, indices: list[int]) -> None:
        super().__init__(base, indices)
        self.targets = [base.targets[i] for i in indices]  # type: ignore[attr-defined]
        self.classes = getattr(base, "classes", None)
        self.manifest = getattr(base, "manifest", None)
