"""The classification experiment the chapters share: data per profile, a backbone factory,
and ``run_method`` (adapt, train, test, record) so that a chapter cell stays one line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from nbsupport.vit import methods
from nbsupport.core import records
from nbsupport.vit.backbones import BACKBONES, count_parameters, create_vit, data_config
from nbsupport.core.checkpoints import run_key
from nbsupport.data.datasets import IMAGENET_MEAN, IMAGENET_STD, build_dataset, to_tensor
from nbsupport.data.fingerprint import fingerprint, item_keys
from nbsupport.data.manifests import dataset_name, load_manifest
from nbsupport.core.paths import cache_dir
from nbsupport.core.profiles import Profile, get_profile
from nbsupport.vit.metrics import quadratic_weighted_kappa
from nbsupport.vit.train import TrainConfig, predict, steps_per_epoch, train_classifier

__all__ = ["ClassificationData", "Backbone", "make_backbone", "load_classification_data", "load_segmentation_data",
           "build_model", "label_subset",
           "run_method", "run_seeds", "summarise", "versus", "difference", "near_threshold", "seed_verdict",
           "default_train_config", "predictions_on_test", "patient_groups",
           "segmentation_counts_on_test"]


@dataclass
class Backbone:
    """How to build the chapter's model: ``factory(seed=None)`` returns a fresh ViT with a task
    head (initialised from ``seed``, default the backbone's own seed)."""

    factory: Callable[..., nn.Module]
    name: str
    weights: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int


def make_backbone(profile: str | Profile, num_classes: int, backbone: str | None = None,
                  pretrained: bool | None = None, image_size: int | None = None,
                  weights_path: str | None = None, seed: int = 0) -> Backbone:
    """The backbone of a profile: ``smoke`` a tiny random ViT; others the profile's timm ViT with
    hub weights (or ``weights_path``). ``pretrained=False`` forces random weights (and says so).

    The first build happens here, so a missing download fails now, with the fix in the message.
    """
    p = get_profile(profile)
    name = backbone or p.vit
    if name in BACKBONES and BACKBONES[name].file is None:
        name = BACKBONES[name].timm_name
    tiny = p.random_weights and backbone is None and weights_path is None
    use_pretrained = (not p.random_weights) if pretrained is None else pretrained
    size = image_size or p.image_size

    def factory(seed_: int | None = None) -> nn.Module:
        torch.manual_seed(seed if seed_ is None else seed_)
        return create_vit(name, num_classes, pretrained=use_pretrained and not tiny, img_size=size,
                          weights_path=weights_path, tiny=tiny)

    probe = factory()
    cfg = data_config(probe)
    if tiny or not use_pretrained:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = cfg["mean"], cfg["std"]
    label = getattr(probe, "nbsupport_weights", "random")
    shown = f"{name} (tiny: {probe.embed_dim}-d, {len(probe.blocks)} layers)" if tiny else name
    return Backbone(factory, shown, label, tuple(mean), tuple(std), size)


@dataclass
class ClassificationData:
    """Train / val / test splits of a manifest, ready for a backbone."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    classes: list[str]
    dataset: str
    multi_label: bool = False
    task: str = "classification"

    @property
    def score(self) -> str:
        """The headline test metric: ``test_kappa`` (grading), ``test_auc`` (findings) or
        ``test_dice`` (segmentation)."""
        if self.task == "segmentation":
            return "test_dice"
        return "test_auc" if self.multi_label else "test_kappa"

    @property
    def select(self) -> str:
        """The validation metric that picks the best epoch (and the learning rate)."""
        return self.score.removeprefix("test_")


def _splits(dataset: str, profile: str | Profile, backbone: Backbone, task: str) -> tuple[Any, Dataset, Dataset, Dataset]:
    """The manifest and its train/val/test splits for ``task`` at the backbone's resolution and
    normalisation: procedural data at the profile's sizes, real data with ``max_train`` capping training."""
    p = get_profile(profile)
    m = load_manifest(dataset)
    synthetic = m.source["type"] == "synthetic"
    kw = dict(task=task, image_size=backbone.image_size, mean=backbone.mean, std=backbone.std)
    train = build_dataset(m, "train", limit=p.n_train if synthetic else p.max_train, **kw)
    val = build_dataset(m, "val", limit=p.n_val if synthetic else None, **kw)
    test = build_dataset(m, "test", limit=p.n_test if synthetic else None, **kw)
    return m, train, val, test


def load_segmentation_data(dataset: str, profile: str | Profile, backbone: Backbone) -> ClassificationData:
    """The three splits of a segmentation manifest: images at the backbone's resolution and
    normalisation, masks ``[K, S, S]`` (``classes`` are the mask kinds)."""
    m, train, val, test = _splits(dataset, profile, backbone, "segmentation")
    kinds = list(getattr(train, "mask_kinds", None) or m.findings)
    return ClassificationData(train, val, test, len(kinds), kinds, m.name, False, "segmentation")


_BACKBONE_SIZES: dict[tuple[str, str, int], int] = {}


def _backbone_size(backbone: Backbone) -> int:
    """Parameters of the backbone without its head (built once per backbone and remembered)."""
    key = (backbone.name, backbone.weights, backbone.image_size)
    if key not in _BACKBONE_SIZES:
        model = backbone.factory()
        _BACKBONE_SIZES[key] = count_parameters(model) - sum(p.numel() for p in model.get_classifier().parameters())
    return _BACKBONE_SIZES[key]


def build_model(backbone: Backbone, method: str, data: ClassificationData, seed: int | None = None,
                config: dict[str, Any] | None = None) -> nn.Module:
    """A fresh backbone adapted with ``method``; for segmentation wrapped with a mask decoder
    (:class:`nbsupport.vit.segmentation.SegmentationModel`, always trained)."""
    model = backbone.factory(seed)
    torch.manual_seed(0 if seed is None else seed)
    model = methods.adapt(model, method, **(config or {}))
    if data.task == "segmentation":
        from nbsupport.vit.segmentation import SegmentationModel

        model = SegmentationModel(model, data.num_classes)
    return model


def load_classification_data(dataset: str, profile: str | Profile, backbone: Backbone) -> ClassificationData:
    """The three splits of ``dataset`` at the backbone's resolution and normalisation.

    Procedural data is generated at the profile's sizes (``n_train``/``n_val``/``n_test``); real
    data uses its splits, with ``max_train`` capping the training set.
    """
    m, train, val, test = _splits(dataset, profile, backbone, "classification")
    return ClassificationData(train, val, test, len(m.classes), m.classes, m.name, m.multi_label)


def label_subset(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """A stratified ``fraction`` of a labelled dataset; smaller fractions are subsets of larger ones.

    Each class keeps ``ceil(fraction * n_class)`` images (at least one), chosen by a fixed
    per-class permutation, so that the 10% set is inside the 25% set, and so on.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: expected 0 < fraction <= 1")
    targets = np.asarray(dataset.targets)  # type: ignore[attr-defined]
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    if targets.ndim == 2:      # multi-label: a nested random subset (stratifying findings jointly is ill-posed)
        order = rng.permutation(len(targets))
        keep = sorted(order[: max(1, int(np.ceil(fraction * len(targets))))].tolist())
        sub = Subset(dataset, keep)
        sub.targets = [list(map(float, targets[i])) for i in keep]  # type: ignore[attr-defined]
        return sub
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        keep += idx[: max(1, int(np.ceil(fraction * len(idx))))].tolist()
    keep.sort()
    sub = Subset(dataset, keep)
    sub.targets = [int(targets[i]) for i in keep]  # type: ignore[attr-defined]
    return sub


def default_train_config(profile: str | Profile, method: str, **overrides: Any) -> TrainConfig:
    """The profile's epochs and batch size with the method's learning rate."""
    p = get_profile(profile)
    methods.check_names([method])
    cfg = TrainConfig(epochs=p.epochs, batch_size=p.batch_size, lr=methods.METHODS[method].lr,
                      num_workers=p.num_workers, amp=p.mixed_precision,
                      warmup_epochs=min(1.0, p.epochs / 5))
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg


def optimizer_steps(n_train: int, cfg: TrainConfig) -> int:
    """Optimizer steps of :func:`~nbsupport.vit.train.train_classifier` on ``n_train`` images:
    every batch is a step, the last one partial."""
    return steps_per_epoch(n_train, cfg) * cfg.epochs


def _data_provenance(data: ClassificationData, train_set: Dataset) -> dict[str, Any]:
    """What the run trained and was tested on: the split rule and the splits' fingerprints."""
    manifest = getattr(data.test, "manifest", None)
    return {"split_rule": manifest.split_rule() if manifest is not None else None, "n_train": len(train_set),
            "fingerprints": {"train": fingerprint(train_set), "val": fingerprint(data.val),
                             "test": fingerprint(data.test)}}


def run_method(
    method: str,
    backbone: Backbone,
    data: ClassificationData,
    profile: str,
    chapter: str,
    device: torch.device | str = "cpu",
    config: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    train_set: Dataset | None = None,
    label: str | None = None,
    resume: bool = True,
    record: bool = True,
    progress: bool = True,
    extra_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Adapt a fresh backbone with ``method``, train, test, write a run record; return a table row.

    Checkpoints go to ``$NBSUPPORT_CACHE/checkpoints/classification/<method>-<key>`` where the key
    hashes everything that decides the trained model (backbone and its weights, method and its
    config, training config and seed, the content of the train/val/test splits: see
    :func:`nbsupport.data.fingerprint.fingerprint`), so re-running an interrupted chapter resumes
    it, a finished run asked for again is reused (and says so), and a changed split or setting
    starts afresh.

    Returns:
        ``method``, ``label``, test metrics, best validation Kappa and epoch, ``trainable``,
        ``trainable_pct`` (of the backbone), ``checkpoint_bytes``, ``step_time_s``, ``images_per_s``,
        ``peak_memory_bytes``, ``history`` and the record path.
    """
    train_config = train_config or default_train_config(profile, method)
    train_set = train_set if train_set is not None else data.train
    timer = records.RunTimer(device)
    backbone_n = _backbone_size(backbone)
    # the head or decoder (and a random backbone) drawn from the run's seed
    model = build_model(backbone, method, data, train_config.seed, config)
    # the key holds everything that decides the trained model, and nothing else: the same run asked for by
    # two chapters (or under two labels) is trained once; a changed split or label is trained afresh
    key = run_key("classification-v3", backbone.name, backbone.weights, backbone.image_size, method,
                  model.nbsupport_method, train_config.key(), fingerprint(train_set), fingerprint(data.val),
                  fingerprint(data.test), *(["segmentation"] if data.task == "segmentation" else []))
    ckpt = cache_dir() / "checkpoints" / data.task / f"{method}-{key}"
    res = train_classifier(model, train_set, data.val, data.test, data.num_classes, train_config, device,
                           checkpoint_dir=ckpt, resume=resume, progress=progress)
    trainable = count_parameters(model, trainable_only=True)
    row = {
        "method": method,
        "label": label or methods.METHODS[method].label,
        **{f"test_{k}": v for k, v in res.test.items()},
        "best_val_kappa": res.best_val.get("kappa"),
        "best_val_score": res.best_val.get(data.select),
        "best_epoch": res.best_epoch,
        "trainable": trainable,
        "trainable_pct": 100.0 * trainable / backbone_n,
        "checkpoint_bytes": methods.checkpoint_bytes(model),
        "step_time_s": res.step_time_s,
        "images_per_s": res.images_per_s,
        "peak_memory_bytes": res.peak_memory_bytes,
        "n_train": len(train_set),
        "train_seed": train_config.seed,
        "history": res.history,
        "checkpoint": res.checkpoint,
    }
    if record:
        dataset = dataset_name(data.dataset)                           # a manifest by path: its name
        name = f"{chapter}-{label or method}-{dataset}-s{train_config.seed}".replace(" ", "_")
        path = records.write_record(
            chapter=chapter, profile=profile, dataset=dataset, weights=backbone.weights,
            method=method, metrics={k: v for k, v in row.items() if k not in ("method", "label", "checkpoint")},
            params={"backbone": backbone.name, "method_config": model.nbsupport_method["config"],
                    "train": asdict(train_config), "resumed_from_epoch": res.resumed_from_epoch,
                    "data": _data_provenance(data, train_set), "checkpoint_key": key, **(extra_params or {})},
            timer=timer, device=device, name=name)
        row["record"] = str(path)
    del model
    return row


def choose_lr(method: str, backbone: Backbone, data: ClassificationData, profile: str | Profile,
              device: torch.device | str, seed: int = 0, epochs: int | None = None,
              config: dict[str, Any] | None = None, factors: Sequence[float] | None = None,
              progress: bool = False, train_overrides: dict[str, Any] | None = None) -> tuple[float, dict[float, float]]:
    """The profile's learning-rate rule: the method's registry rate times each of ``factors``
    (default: the profile's ``lr_factors``), trained once with ``seed`` on the training split;
    the rate with the best validation score wins (ties: the smaller rate).

    Selection uses the validation split only, the same grid and budget for every method. Runs are
    cached by content, so the winning run is reused as that seed's result and a chapter that asks
    again (another chapter, or a label fraction of 100%) trains nothing. Returns the rate and the
    grid ``{lr: best validation score}``.
    """
    p = get_profile(profile)
    factors = tuple(factors if factors is not None else p.lr_factors)
    base = methods.METHODS[method].lr
    grid: dict[float, float] = {}
    for f in factors:
        cfg = default_train_config(p, method, **{"epochs": epochs, **(train_overrides or {}), "seed": seed,
                                                 "lr": base * f})
        row = run_method(method, backbone, data, p.name, "lr-grid", device, config=config, train_config=cfg,
                         record=False, progress=progress)
        score = row["best_val_score"]
        grid[base * f] = float(score) if score is not None and score == score else float("-inf")
    best = max(sorted(grid), key=lambda lr: grid[lr])                 # sorted + strict max: the smaller on ties
    return best, grid


def profile_lr(method: str, backbone: Backbone, data: ClassificationData, profile: str | Profile,
               device: torch.device | str, seed: int = 0, epochs: int | None = None,
               config: dict[str, Any] | None = None,
               train_overrides: dict[str, Any] | None = None) -> tuple[float, dict[float, float] | None]:
    """The profile's learning-rate rule for ``method``: the registry rate when the profile has one
    factor (grid ``None``), else :func:`choose_lr` with ``seed`` on the *full* training split (so
    runs on a label fraction, or with extra images, use the rate chosen with all real labels).
    Returns the rate and the grid ``{lr: best validation score}``."""
    if len(get_profile(profile).lr_factors) == 1:
        return default_train_config(profile, method).lr, None
    return choose_lr(method, backbone, data, profile, device, seed=seed, epochs=epochs, config=config,
                     train_overrides=train_overrides)


def run_seeds(method: str, backbone: Backbone, data: ClassificationData, profile: str, chapter: str,
              device: torch.device | str, seeds: Sequence[int], epochs: int | None = None,
              lr: float | None = None, train_overrides: dict[str, Any] | None = None,
              **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`run_method` once per seed (data order, dropout and new modules drawn from it), with
    the profile's schedule (``train_overrides``: other :class:`TrainConfig` fields, e.g.
    ``batch_size``, or ``epochs`` over the ``epochs`` argument); returns one row per seed, each
    with its ``seed``, ``lr`` and ``lr_grid`` (``{lr: best validation score}`` of the rule's grid,
    or None when the rate was given or the profile has one rate).

    ``lr=None`` applies the profile's rule: the registry rate when the profile has one factor,
    else :func:`choose_lr` on the first seed and the *full* training split (so a label-fraction run
    uses the rate chosen with all labels; the grid is recorded with every run).
    """
    rows = []
    extra_params = kwargs.pop("extra_params", None) or {}
    grid: dict[float, float] | None = None
    if lr is None:                    # the rate is chosen on the profile's schedule, not on a changed one
        schedule_free = {k: v for k, v in (train_overrides or {}).items() if k not in ("epochs", "warmup_epochs")}
        lr, grid = profile_lr(method, backbone, data, profile, device, seed=seeds[0], epochs=epochs,
                              config=kwargs.get("config"), train_overrides=schedule_free)
    for s in seeds:
        cfg = default_train_config(profile, method, **{"epochs": epochs, **(train_overrides or {}), "seed": s, "lr": lr})
        extra = {**extra_params, "seed": s, **({"lr_grid": {f"{k:.2e}": v for k, v in grid.items()}} if grid else {})}
        rows.append({**run_method(method, backbone, data, profile, chapter, device, train_config=cfg,
                                  extra_params=extra, **kwargs), "seed": s, "lr": cfg.lr, "lr_grid": grid})
    return rows


SCORES = ("test_kappa", "test_accuracy", "test_auc", "test_f1")
SEGMENTATION_SCORES = ("test_dice", "test_iou")


def summarise(rows: Sequence[dict[str, Any]]) -> "pandas.DataFrame":  # noqa: F821
    """One line per label: test metrics as mean and ``_std`` over seeds (the sample std, ``n - 1``
    in the denominator; NaN for one seed; a NaN score, such as AUC on a test split with one class,
    is left out of its mean), ``seeds`` (how many runs), trainable parameters, checkpoint bytes, mean step time, peak memory and
    the learning rate used (``lr``, when the rows say). Segmentation rows: Dice and IoU."""
    import pandas as pd

    scores = SEGMENTATION_SCORES if rows and "test_dice" in rows[0] else SCORES
    cols = ["label", *scores, "trainable", "trainable_pct", "checkpoint_bytes", "step_time_s", "peak_memory_bytes", "lr"]
    df = pd.DataFrame([{k: r.get(k) for k in cols} for r in rows])
    for c in cols[1:]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    g = df.groupby("label", sort=False)
    out = g[list(scores)].mean()
    for c in scores:
        out.insert(out.columns.get_loc(c) + 1, f"{c}_std", g[c].std(ddof=1))
    out["seeds"] = g.size()
    out[["trainable", "trainable_pct", "checkpoint_bytes"]] = g[["trainable", "trainable_pct", "checkpoint_bytes"]].first()
    out["step_time_s"] = g["step_time_s"].mean()
    out["peak_memory_bytes"] = g["peak_memory_bytes"].max()
    if df["lr"].notna().any():
        out["lr"] = g["lr"].first()
    return out


def difference(mean_a: float, std_a: float, mean_b: float, std_b: float) -> tuple[float, float, bool | None]:
    """The book's yardstick for comparing two settings run on seeds: the difference of means, its
    spread ``sqrt(std_a^2 + std_b^2)`` (the seed spread of one run's difference: a cautious one) and
    whether the difference exceeds twice it (``None`` with one seed: no estimate of the noise)."""
    d, spread = float(mean_a - mean_b), float(np.hypot(std_a, std_b))
    return d, spread, None if spread != spread else bool(abs(d) > 2 * spread)


def near_threshold(d: float, spread: float, margin: float = 0.1) -> bool:
    """Whether a gap ``d`` lies within ``margin`` (a tenth) of its threshold, twice ``spread``, on
    either side: the book reads such a gap as not separated, whichever side it falls on (three seeds
    estimate a spread roughly). False with one seed (``spread`` NaN)."""
    return spread == spread and abs(abs(d) - 2 * spread) <= margin * 2 * spread


def seed_verdict(d: float, spread: float, beyond: bool | None) -> str:
    """The seeds' yardstick in one word, from :func:`difference`'s ``(d, spread, beyond)``:
    ``"beyond"`` (separated), ``"barely beyond"`` (beyond twice the spread by less than a tenth of
    it, :func:`near_threshold`: not separated), ``"within"`` or ``"one seed"``. Only ``"beyond"``
    separates; every verdict the book prints from the seeds goes through here."""
    if beyond is None:
        return "one seed"
    if not beyond:
        return "within"
    return "barely beyond" if near_threshold(d, spread) else "beyond"


def versus(table: "pandas.DataFrame", a: str, b: str, metric: str = "test_kappa") -> str:  # noqa: F821
    """One sentence comparing rows ``a`` and ``b`` of a :func:`summarise` table with :func:`difference`."""
    d, spread, beyond = difference(table.loc[a, metric], table.loc[a, f"{metric}_std"],
                                   table.loc[b, metric], table.loc[b, f"{metric}_std"])
    name = {"test_kappa": "Kappa", "test_dice": "Dice", "test_iou": "IoU"}.get(metric, metric)
    word = seed_verdict(d, spread, beyond)
    if word == "one seed":
        return f"{a} - {b}: {d:+.3f} {name} (one seed: no estimate of the noise)"
    verdict = {"beyond": "beyond the seed noise", "within": "within the seed noise",
               "barely beyond": "beyond the seed noise, but by less than a tenth of the threshold: "
                                "not separated"}[word]
    return f"{a} - {b}: {d:+.3f} {name}, {verdict} (twice the seeds' spread: {2 * spread:.3f})"


class GeneratedImages(Dataset):
    """Generated images listed in a manifest (see :func:`nbsupport.sd.sampling.generate_to_disk`) as
    a classification dataset ``(x [3, S, S] normalised, label)``; labels are the prompted ones."""

    def __init__(self, manifest_path: str | Path, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        manifest_path = Path(manifest_path)
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no generated-images manifest; run chapter 06 (the same "
                                    "profile and dataset; for a training-caption set, with this method in its "
                                    "`train_set_methods`) first")
        meta = json.loads(manifest_path.read_text(encoding="utf-8"))
        self.entries = meta["images"]
        self.method = meta.get("method")
        self.root = manifest_path.parent
        self.image_size, self.mean, self.std = image_size, mean, std
        self.targets = [[float(v) for v in e["labels"]] if isinstance(e["labels"], list) else int(e["labels"])
                        for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def image(self, i: int) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.open(self.root / self.entries[i]["file"]).convert("RGB"))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        from PIL import Image

        img = Image.open(self.root / self.entries[i]["file"])
        y = self.targets[i]
        return to_tensor(img, self.image_size, self.mean, self.std), (torch.tensor(y) if isinstance(y, list) else y)


def dataset_keys(ds: Dataset, by: str = "image") -> list[Any]:
    """Identity keys of a dataset's items (see :func:`nbsupport.data.fingerprint.item_keys`)."""
    return item_keys(ds, by)


def load_model_from_run(row: dict[str, Any], backbone: Backbone, method: str, config: dict[str, Any] | None = None,
                        data: ClassificationData | None = None) -> nn.Module:
    """The best-on-validation model of a :func:`run_method` row, rebuilt and loaded (pass ``data``
    for a segmentation run, whose model has a decoder)."""
    seed = row.get("train_seed", row.get("seed"))      # a random backbone (smoke) is drawn from the run's seed
    if data is not None:
        model = build_model(backbone, method, data, seed=seed, config=config)
    else:
        model = methods.adapt(backbone.factory(seed), method, **(config or {}))
    return methods.load_trainable(model, row["checkpoint"])


def _check_rescore(row: dict[str, Any], metric: str, now: float, recorded: float, tolerance: float) -> None:
    """Refuse a run whose checkpoint, scored again on the test split, no longer gives what it recorded."""
    if abs(now - recorded) > tolerance:
        raise RuntimeError(f"{row.get('record', row['checkpoint'])}: its checkpoint scores test {metric} {now:.4f} "
                           f"now, the run recorded {recorded:.4f}; the checkpoint or the test split "
                           "changed since. Re-run the method (delete the checkpoint to retrain it).")


def patient_groups(ds: Dataset) -> list[Any] | None:
    """Each image's patient, for a bootstrap that draws patients rather than images
    (:func:`nbsupport.vit.metrics.bootstrap_counts`): ``[N]``, an image without a patient id its own
    group; None when no two images share a patient (procedural eyes, a manifest without
    ``patient_column``): then drawing images is drawing patients."""
    keys = [("image", i) if k is None else k for i, k in enumerate(item_keys(ds, by="patient"))]
    return keys if len(set(keys)) < len(keys) else None


def segmentation_counts_on_test(rows: Sequence[dict[str, Any]], backbone: Backbone, data: ClassificationData,
                                device: torch.device | str, tolerance: float = 5e-3) -> np.ndarray:
    """Each segmentation run's best-on-validation checkpoint on ``data.test``, image by image:
    ``int64 [S, N_test, K, 3]`` true positives, false positives and false negatives per mask kind
    (one row per run, in order), e.g. for :func:`nbsupport.vit.segmentation.paired_bootstrap_dice`.

    Each run's Dice from these counts must match the ``test_dice`` its row recorded, within
    ``tolerance`` (see :func:`predictions_on_test`).
    """
    from nbsupport.vit.segmentation import pooled_dice
    from nbsupport.vit.train import segmentation_image_counts

    if not rows:
        raise ValueError("segmentation_counts_on_test needs at least one run row (from run_seeds or run_method)")
    device = torch.device(device)
    out = []
    for row in rows:
        model = load_model_from_run(row, backbone, row["method"], data=data).to(device)
        counts = segmentation_image_counts(model, data.test, device)                  # [N, K, 3]
        _check_rescore(row, "Dice", float(pooled_dice(counts.sum(0))), row["test_dice"], tolerance)
        out.append(counts)
        del model
    return np.stack(out)


def predictions_on_test(rows: Sequence[dict[str, Any]], backbone: Backbone, data: ClassificationData,
                        device: torch.device | str, tolerance: float = 5e-3) -> tuple[np.ndarray, np.ndarray]:
    """The predicted grades of each run's best-on-validation checkpoint on ``data.test``:
    ``[S, N_test]`` (one row per run, in order) and the labels ``[N_test]``, e.g. for
    :func:`nbsupport.vit.metrics.paired_bootstrap_kappa`.

    Each run's Kappa from these predictions must match the ``test_kappa`` its row recorded, within
    ``tolerance``: a larger difference means the checkpoint or the test split is not the one the row
    was scored on. (On a GPU, mixed precision at another batch size can flip an image or two, which
    moves a Kappa by about 1/N; on a CPU in fp32 the two agree exactly.)
    """
    if not rows:
        raise ValueError("predictions_on_test needs at least one run row (from run_seeds or run_method)")
    device = torch.device(device)
    preds, labels = [], None
    for row in rows:
        model = load_model_from_run(row, backbone, row["method"]).to(device).eval()
        probs, labels = predict(model, data.test, device)                      # [N, K], [N]
        grades = probs.argmax(1)
        kappa = quadratic_weighted_kappa(labels, grades, data.num_classes)
        _check_rescore(row, "Kappa", kappa, row["test_kappa"], tolerance)
        preds.append(grades)
        del model
    return np.stack(preds), np.asarray(labels)

