"""Classification metrics: accuracy, quadratic-weighted Kappa, macro AUC, macro F1.

Kappa is written out (it is the book's headline metric for DR grading) and tested against
scikit-learn; AUC and F1 are scikit-learn's.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["quadratic_weighted_kappa", "quadratic_weighted_kappa_rows", "bootstrap_counts", "paired_bootstrap_kappa",
           "classification_metrics", "multilabel_metrics", "selection_metric"]


def quadratic_weighted_kappa(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> float:
    """Cohen's Kappa with quadratic weights: agreement beyond chance, large errors cost more.

    ``kappa = 1 - sum(W * O) / sum(W * E)`` with ``W[i, j] = (i - j)^2 / (K - 1)^2``, ``O`` the
    confusion matrix and ``E`` the outer product of its marginals scaled to the same total.
    Returns 0.0 when both raters use a single identical class (undefined, by convention).
    """
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    k = num_classes or int(max(t.max(initial=0), p.max(initial=0)) + 1)
    return float(quadratic_weighted_kappa_rows(t[None], p[None], k)[0])


def quadratic_weighted_kappa_rows(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int,
                                  counts: np.ndarray | None = None) -> np.ndarray:
    """:func:`quadratic_weighted_kappa` of each row at once: ``y_true``, ``y_pred`` ``[R, N]`` -> ``[R]``
    (one confusion matrix ``O`` per row, the same formula; 0.0 where a row's Kappa is undefined).

    ``counts`` ``[R, N]`` (optional) weighs each pair by how often row ``r`` holds it, e.g. a
    bootstrap resample's :func:`bootstrap_counts`; ``y_true`` and ``y_pred`` may then be ``[N]``.
    A grade outside ``0 .. num_classes - 1`` is an error, not a pair counted in another cell.
    """
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    k = num_classes
    for name, v in (("y_true", t), ("y_pred", p)):
        if v.size and (v.min() < 0 or v.max() >= k):
            bad = int(v.min() if v.min() < 0 else v.max())
            raise ValueError(f"{name} holds grade {bad}, outside 0..{k - 1} (num_classes={k}): "
                             "give 0-based class indices, and num_classes for every class")
    if counts is not None:
        counts = np.asarray(counts)
        t, p = np.broadcast_to(t, counts.shape), np.broadcast_to(p, counts.shape)
    r = t.shape[0]
    flat = (np.arange(r)[:, None] * k + t) * k + p                                  # [R, N] cell of each pair
    observed = np.bincount(flat.ravel(), weights=None if counts is None else counts.ravel(),
                           minlength=r * k * k).reshape(r, k, k).astype(np.float64)
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    weights = (i - j) ** 2 / max(k - 1, 1) ** 2                                      # [K, K]
    n = np.maximum(observed.sum((1, 2)), 1.0)                                        # [R]
    expected = observed.sum(2)[:, :, None] * observed.sum(1)[:, None, :] / n[:, None, None]
    denom = (weights * expected).sum((1, 2))
    num = (weights * observed).sum((1, 2))
    return np.where(denom > 0, 1.0 - num / np.where(denom > 0, denom, 1.0), 0.0)


def bootstrap_counts(n: int, n_resamples: int, seed: int = 0, groups: Sequence[Any] | None = None) -> np.ndarray:
    """How often each of ``n`` test images is drawn in each of ``n_resamples`` bootstrap resamples:
    ``int64 [R, N]`` (0: left out of that resample).

    Without ``groups``, each resample draws ``n`` images with replacement. With ``groups`` (``[N]``,
    e.g. each image's patient), it draws patients instead: as many draws as there are patients,
    each bringing all of that patient's images, so two eyes of one person move together as they
    would in another sample of patients (a resample then holds about ``n`` images, not exactly).
    Every image its own group is the plain bootstrap, draw for draw. One seed gives the same
    resamples to every method scored with it, which is what makes the paired bootstraps
    (:func:`paired_bootstrap_kappa`, ``segmentation.paired_bootstrap_dice``) paired.
    """
    if n < 1 or n_resamples < 1:
        raise ValueError(f"bootstrap_counts needs at least one image and one resample, got n={n}, "
                         f"n_resamples={n_resamples}")
    if groups is None:
        codes = np.arange(n)
    else:
        groups = list(groups)
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} images: give one group (patient) "
                             "per test image, in the test split's order")
        first: dict[Any, int] = {}
        codes = np.array([first.setdefault(g, len(first)) for g in groups])    # groups in order of appearance
    g = int(codes.max()) + 1
    draws = np.random.default_rng(seed).integers(0, g, size=(n_resamples, g))  # [R, G]
    times = np.zeros((n_resamples, g), dtype=np.int64)
    np.add.at(times, (np.arange(n_resamples)[:, None], draws), 1)
    return times[:, codes]


def paired_bootstrap_kappa(y_true: Sequence[int], predictions: Mapping[str, np.ndarray], num_classes: int,
                           n_resamples: int = 2000, seed: int = 0,
                           groups: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
    """How much the test set's own sampling moves each method's Kappa: ``n_resamples`` resamples of
    the test images (with replacement), the *same* resamples for every method (paired, so a
    difference between two methods keeps only the noise that differs between them).

    Args:
        y_true: ``[N]`` test labels.
        predictions: method -> ``[S, N]`` predicted grades of its ``S`` seeds (``[N]``: one seed).
        num_classes: ``K``.
        groups: ``[N]`` each test image's patient, to draw patients rather than images
            (:func:`bootstrap_counts`); None: images.

    Returns:
        method -> ``[n_resamples]`` mean-over-seeds Kappa on each resample. The 2.5th and 97.5th
        percentiles of ``out[a] - out[b]`` are a 95% interval for the gap on eyes like these (what
        sampling a test set of this size leaves uncertain).
    """
    y = np.asarray(y_true, dtype=np.int64)
    times = bootstrap_counts(len(y), n_resamples, seed, groups)                        # [R, N]
    out = {}
    for name, pred in predictions.items():
        p = np.atleast_2d(np.asarray(pred, dtype=np.int64))                            # [S, N]
        if p.shape[1] != len(y):
            raise ValueError(f"predictions[{name!r}] has {p.shape[1]} images per seed, the labels {len(y)}: "
                             "give every method's predictions on the same test split, in its order")
        out[name] = np.mean([quadratic_weighted_kappa_rows(y, s, num_classes, times) for s in p], axis=0)
    return out


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, quadratic-weighted Kappa, macro one-vs-rest AUC and macro F1.

    Args:
        y_true: ``[N]`` integer labels.
        probs: ``[N, K]`` class probabilities.
        num_classes: ``K``.

    AUC averages over the classes present in ``y_true`` (NaN when fewer than two are present); F1
    over the classes present in the labels or the predictions (scikit-learn's default set): a class
    that neither holds nor is predicted has no F1, and scoring it 0 would punish a perfect model.
    """
    from sklearn.metrics import f1_score, roc_auc_score

    y = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(1)
    present = np.unique(y)
    if len(present) >= 2:
        aucs = [roc_auc_score(y == c, probs[:, c]) for c in present]
        auc = float(np.mean(aucs))
    else:
        auc = float("nan")
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "kappa": quadratic_weighted_kappa(y, pred, num_classes),
        "auc": auc,
        "f1": float(f1_score(y, pred, labels=np.union1d(y, pred), average="macro", zero_division=0)),
    }


def multilabel_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, object]:
    """Multi-label (findings) metrics: macro AUC over findings with both outcomes present,
    per-finding AUC, macro F1 (over findings present in the labels or the predictions) and mean
    per-finding accuracy at a 0.5 threshold.

    Args:
        y_true: ``[N, C]`` 0/1 labels.
        probs: ``[N, C]`` independent probabilities (sigmoid outputs).
    """
    from sklearn.metrics import f1_score, roc_auc_score

    y = np.asarray(y_true) > 0.5
    p = np.asarray(probs, dtype=np.float64)
    per = {}
    for c in range(y.shape[1]):
        if 0 < y[:, c].sum() < len(y):
            per[c] = float(roc_auc_score(y[:, c], p[:, c]))
    pred = p >= 0.5
    seen = y.any(0) | pred.any(0)                    # [C] findings with an F1
    return {
        "auc": float(np.mean(list(per.values()))) if per else float("nan"),
        "per_finding_auc": per,
        "f1": (float(f1_score(y[:, seen], pred[:, seen], average="macro", zero_division=0))
               if seen.any() else float("nan")),
        "accuracy": float((pred == y).mean()),
    }


def selection_metric(multi_label: bool) -> str:
    """The validation metric that picks the best checkpoint: Kappa for grading, macro AUC for findings."""
    return "auc" if multi_label else "kappa"
