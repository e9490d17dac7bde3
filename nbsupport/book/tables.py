"""Tables for people: the profiles at a glance."""

from __future__ import annotations

from typing import Any

from nbsupport.core.profiles import PROFILES

__all__ = ["profiles_table"]



def profiles_table() -> "Any":
    """The profiles side by side, in the columns a reader chooses by (a pandas DataFrame)."""
    import pandas as pd

    rows = [{"profile": p.name, "weights": "tiny, random" if p.random_weights else "pretrained",
             "ViT": p.vit, "image px": p.image_size, "train / val / test": f"{p.n_train:,} / {p.n_val:,} / {p.n_test:,}",
             "epochs": p.epochs, "SD px": p.sd_resolution, "SD steps": f"{p.sd_steps:,}",
             "classification data": p.default_dataset, "text-to-image data": p.sd_dataset}
            for p in PROFILES.values()]
    return pd.DataFrame(rows).set_index("profile")
