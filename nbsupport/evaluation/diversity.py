"""Diversity of generated images: the Vendi score (Friedman & Dieng 2023), written out and checked
against the ``vendi-score`` package: the exponential of the Shannon entropy of the eigenvalues of
``K / n``, ``K`` the cosine-similarity matrix of the features; "the effective number of distinct images".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["pixel_features", "vendi_score"]


def pixel_features(images: Sequence[np.ndarray], side: int = 32) -> np.ndarray:
    """``[N, side * side * 3]`` pixel vectors of ``[H, W, 3]`` images subsampled to about ``side`` px,
    for a Vendi score on pixels (diversity that ignores what a classifier finds relevant)."""
    return np.stack([np.asarray(im)[::max(1, im.shape[0] // side), ::max(1, im.shape[1] // side)].reshape(-1)
                     for im in images]).astype(np.float64)


def vendi_score(features: np.ndarray | torch.Tensor) -> float:
    """Vendi score of ``[N, D]`` features under the cosine-similarity kernel.

    ``exp(-sum_i l_i log l_i)`` over the eigenvalues ``l`` of ``K / N``, ``K = X X^T`` with unit-norm
    rows ``X``: 1 when all items are identical, N when all are orthogonal.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    k = x @ x.T / len(x)
    w = np.linalg.eigvalsh(k)
    w = w[w > 1e-12]
    return float(np.exp(-(w * np.log(w)).sum()))
