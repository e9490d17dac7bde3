"""Frozen-feature linear probes: how much of a task a backbone's features already carry.

The probe is the same everywhere in the book (pretraining checkpoints, the headroom benchmark,
chapter 01's evidence that pretraining is real): a standardised logistic regression whose ``C`` is
chosen by 3-fold cross-validation on the training split, scored by quadratic-weighted Kappa on the
test split. Nothing about the backbone is trained.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["token_features", "probe_qwk", "target_images", "target_probe"]

PROBE_SEED = 7   # the target probe's images: seeds (70 + split) * 10**6 + i, disjoint from chapter data


@torch.no_grad()
def token_features(model: nn.Module, images: np.ndarray, mean: Sequence[float], std: Sequence[float],
                   batch_size: int = 128) -> dict[str, np.ndarray]:
    """Frozen features of ``uint8`` images ``[n, H, W, 3]`` from a timm ViT.

    Returns ``{"cls": [n, D], "cls+mean": [n, 2D]}``: the class token after the final norm (what
    the book's linear-probe method reads) and that token concatenated with the mean patch token.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    cls, avg = [], []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255.0
        t = model.forward_features((x - m) / s)                      # [B, prefix + N, D]
        n_prefix = getattr(model, "num_prefix_tokens", 1)
        cls.append(t[:, 0].float().cpu())
        avg.append(t[:, n_prefix:].mean(1).float().cpu())
    model.train(was_training)
    c, a = torch.cat(cls).numpy(), torch.cat(avg).numpy()
    return {"cls": c, "cls+mean": np.concatenate([c, a], 1)}


def probe_qwk(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
              cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0)) -> float:
    """Test QWK of a standardised logistic regression, ``C`` from ``cs`` by 3-fold CV (QWK)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import cohen_kappa_score, make_scorer
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    qwk = make_scorer(cohen_kappa_score, weights="quadratic")
    grid = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
                        {"logisticregression__C": list(cs)}, scoring=qwk, cv=3)
    grid.fit(train_x, train_y)
    return float(cohen_kappa_score(test_y, grid.predict(test_x), weights="quadratic"))


def target_images(split: str, n: int, image_size: int = 64, camera: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Procedural images of the target camera, ``uint8 [n, S, S, 3]``, and their grades ``[n]``."""
    from ..data.corpus import TARGET_CAMERA
    from ..data.datasets import FundusDataset

    ds = FundusDataset(n, split, image_size, seed=PROBE_SEED, camera=camera or TARGET_CAMERA, cache=False)
    return np.stack([ds.sample(i).image for i in range(n)]), np.asarray(ds.grades)


def target_probe(model: nn.Module, mean: Sequence[float], std: Sequence[float], n_train: int = 400,
                 n_test: int = 200, image_size: int = 64, camera: str | None = None,
                 data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """Linear-probe QWK of ``model``'s frozen features on the target grading task.

    ``data`` (train images, train grades, test images, test grades) skips regenerating the images.
    Returns ``{"cls": qwk, "cls+mean": qwk}``.
    """
    if data is None:
        data = (*target_images("train", n_train, image_size, camera), *target_images("test", n_test, image_size, camera))
    tr_i, tr_y, te_i, te_y = data
    f_tr, f_te = token_features(model, tr_i, mean, std), token_features(model, te_i, mean, std)
    return {k: probe_qwk(f_tr[k], tr_y, f_te[k], te_y) for k in f_tr}
