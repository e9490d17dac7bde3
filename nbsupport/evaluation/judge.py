"""The alignment judge: a classifier that says what a generated image shows, independent of FID.

Prompt-image alignment asks a classifier whether an image shows what its prompt asked for. For
that number to be trusted the judge must be

- **independent of the FID feature extractor** (otherwise one model's blind spots count twice):
  at ``smoke``/``cpu`` FID uses the frozen pretrained pocket ViT, and the judge is a *fully
  fine-tuned* copy (every weight moved) or, at ``smoke``, a tiny random ViT; at ``gpu`` FID uses
  Inception and the judge is the profile's ViT;
- **trained on real target images the generator never saw**: the training split beyond the
  generator's image budget (the profile's ``sd_max_train``), checked disjoint by item identity;
  when the generator used the whole training split, the validation split is halved instead (one
  half trains, the other selects the epoch);
- **scored on real test images**, so its own accuracy is printed beside the alignment it reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from nbsupport.core.profiles import get_profile
from nbsupport.data.datasets import build_dataset
from nbsupport.data.leakage import assert_disjoint
from nbsupport.data.manifests import load_manifest
from nbsupport.evaluation.alignment import classifier_features

__all__ = ["Judge", "JUDGE_METHOD", "judge_training_set", "train_judge"]

JUDGE_METHOD = "full"   # full fine-tuning: no weight is shared with the frozen FID extractor


@dataclass
class Judge:
    """A trained alignment classifier and what it was trained and tested on.

    Attributes:
        model: a timm classifier (eval mode).
        image_size, mean, std: its input resolution and normalisation.
        score_name: the real-test metric (``test_kappa``, or ``test_auc`` for findings).
        test_score: that metric on the real test split.
        n_train: real images it was trained on.
        source: where those images came from (for the page).
        weights: the backbone's weights label; ``row``: the training run's table row.
    """

    model: nn.Module
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    score_name: str
    test_score: float
    n_train: int
    source: str
    weights: str
    backbone: str = ""
    row: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the page: what the judge is, what it learnt from, how good it is on real images."""
        accuracy = self.row.get("test_accuracy")      # over the test set as drawn, not the prompts' grade mix
        return (f"{JUDGE_METHOD} fine-tuning of {self.backbone} ({self.weights}) on {self.n_train} real images, "
                f"{self.source}. Its own {_SCORE_NAMES.get(self.score_name, self.score_name)} on the real test images: "
                f"{self.test_score:.3f}" + ("" if accuracy is None else f", accuracy {accuracy:.3f}"))

    def predict(self, images: Sequence[np.ndarray], device: torch.device | str = "cpu",
                multi_label: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Features ``[N, D]`` and probabilities ``[N, K]`` of uint8 ``[H, W, 3]`` images."""
        return classifier_features(self.model, images, self.image_size, self.mean, self.std, device,
                                   multi_label=multi_label)


_SCORE_NAMES = {"test_kappa": "Kappa", "test_auc": "AUC", "test_f1": "macro F1", "test_accuracy": "accuracy"}


def _with_targets(ds: Dataset, indices: list[int]) -> Subset:
    sub = Subset(ds, indices)
    targets = getattr(ds, "targets")
    sub.targets = [targets[i] for i in indices]  # type: ignore[attr-defined]
    return sub


def judge_training_set(dataset: str, profile: str, image_size: int, mean: Sequence[float] | None,
                       std: Sequence[float] | None, generator_train: Dataset, n: int,
                       task: str = "classification") -> tuple[Dataset, Dataset | None, str]:
    """Real target images for the judge: ``(train, val or None, description)``.

    The training split's images after the generator's first ``len(generator_train)`` (procedural
    sets: seeds the generator never used), at most ``n``; if there are none, the first half of the
    validation split (the second half is returned as ``val``). Raises ``AssertionError`` naming
    the overlap if any judge image is one the generator trained on. ``task="text-to-image"`` gives
    the same images as captioned items (chapter 7's real-vs-real noise floor uses them).
    """
    m = load_manifest(dataset)
    synthetic = m.source["type"] == "synthetic"
    kw = dict(task=task, image_size=image_size, mean=mean, std=std)
    skip = len(generator_train)
    full = build_dataset(m, "train", limit=skip + n if synthetic else None, **kw)
    idx = list(range(skip, min(len(full), skip + n)))
    if idx:
        train, val, source = _with_targets(full, idx), None, f"training-split images {skip}-{idx[-1]}, after the {skip} the generator trained on"
    else:
        whole_val = build_dataset(m, "val", limit=get_profile(profile).n_val if synthetic else None, **kw)
        half = len(whole_val) // 2
        train = _with_targets(whole_val, list(range(half)))
        val = _with_targets(whole_val, list(range(half, len(whole_val))))
        source = f"the first {half} of the validation split, since the generator trained on the whole training split"
    from nbsupport.data.fingerprint import item_keys

    assert_disjoint(item_keys(train), item_keys(generator_train), "image")
    try:
        patients = [p for p in item_keys(train, "patient") if p is not None]
        if patients:
            assert_disjoint(patients, [p for p in item_keys(generator_train, "patient") if p is not None], "patient")
    except TypeError:
        pass                                          # no patient identity for this kind of dataset
    return train, val, source


def train_judge(dataset: str, profile: str, generator_train: Dataset, chapter: str,
                device: torch.device | str = "cpu", n: int | None = None, epochs: int | None = None,
                seed: int = 0, progress: bool = True) -> Judge:
    """Train the alignment judge (resumable, cached, with a run record) and return it.

    ``n``: real images to train on (None: three times the profile's ``n_train``).
    """
    from nbsupport.vit import experiment

    p = get_profile(profile)
    m = load_manifest(dataset)
    bb = experiment.make_backbone(profile, num_classes=len(m.classes), seed=seed)
    data = experiment.load_classification_data(dataset, profile, bb)
    train, val, source = judge_training_set(dataset, profile, bb.image_size, bb.mean, bb.std, generator_train,
                                            n if n is not None else 3 * p.n_train)
    if val is not None:
        data = experiment.ClassificationData(data.train, val, data.test, data.num_classes, data.classes,
                                             data.dataset, data.multi_label)
    cfg = experiment.default_train_config(profile, JUDGE_METHOD, epochs=epochs, seed=seed)
    row = experiment.run_method(JUDGE_METHOD, bb, data, profile, chapter, device, train_config=cfg,
                                train_set=train, label="alignment judge", progress=progress,
                                extra_params={"role": "alignment judge", "source": source})
    model = experiment.load_model_from_run(row, bb, JUDGE_METHOD).to(device).eval()
    return Judge(model, bb.image_size, bb.mean, bb.std, data.score, float(row[data.score]), len(train), source,
                 bb.weights, bb.name, row)
