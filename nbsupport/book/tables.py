"""Tables for people: the profiles at a glance, and a gap judged by both of the book's yardsticks."""

from __future__ import annotations

from typing import Any

import numpy as np

from nbsupport.book import fmt
from nbsupport.core.profiles import PROFILES

__all__ = ["profiles_table", "YARDSTICK_LABELS", "yardsticks"]



def profiles_table() -> "Any":
    """The profiles side by side, in the columns a reader chooses by (a pandas DataFrame)."""
    import pandas as pd

    def weights(p: Any) -> str:
        if p.random_weights:
            return "tiny, random"
        return "pocket, pretrained by this book" if p.vit.startswith("pocket") else "pretrained (hub)"

    rows = [{"profile": p.name, "weights": weights(p),
             "ViT": p.vit.split(".")[0], "px (ViT / SD)": f"{p.image_size} / {p.sd_resolution}",
             "epochs": p.epochs, "data": f"{p.default_dataset}; {p.sd_dataset}"}
            for p in PROFILES.values()]
    return pd.DataFrame(rows).set_index("profile")


#: Display names of :func:`yardsticks`' columns.
YARDSTICK_LABELS: dict[str, str] = {"vs_seeds": "seeds: gap vs 2 × spread",
                                    "test_sets": "test sets: 95% interval",
                                    "test_sets_vs_0": "test sets: interval vs 0"}


def yardsticks(seeds: tuple[float, float, bool | None], resampled_gap: np.ndarray) -> dict[str, Any]:
    """One gap between two methods judged as chapters 3 and 9 judge it, by both yardsticks.

    Args:
        seeds: the gap judged by the seeds' spread, ``(gap, spread, beyond)`` of
            :func:`nbsupport.vit.experiment.difference`.
        resampled_gap: ``[R]`` the gap on each paired bootstrap resample of the test images
            (``out[a] - out[b]`` of :func:`nbsupport.vit.metrics.paired_bootstrap_kappa` or
            :func:`nbsupport.vit.segmentation.paired_bootstrap_dice`).

    Returns:
        ``vs_seeds`` (:func:`nbsupport.vit.experiment.seed_verdict`: "beyond", "barely beyond",
        "within", "one seed"; only "beyond" separates), ``test_sets`` (the middle 95% of the
        resampled gaps, as text), ``test_sets_vs_0`` ("clear of 0", "touches 0": an end exactly at 0, or
        "spans 0"; only "clear of 0" separates): a table row, with
        :data:`YARDSTICK_LABELS` as its column names; and ``interval`` ``(lo, hi)`` and ``both``
        (separated by both yardsticks), for the chapter's own verdicts.
    """
    from nbsupport.vit.experiment import seed_verdict

    lo, hi = (float(v) for v in np.percentile(resampled_gap, [2.5, 97.5]))
    clear = lo > 0 or hi < 0
    vs_seeds = seed_verdict(*seeds)
    return {"vs_seeds": vs_seeds,
            "test_sets": fmt.interval(lo, hi),
            "test_sets_vs_0": ("clear of 0" if clear else
                               "touches 0" if 0.0 in (lo, hi) else "spans 0"),
            "interval": (lo, hi), "both": vs_seeds == "beyond" and clear}
