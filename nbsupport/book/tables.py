"""Tables for people: the profiles at a glance."""

from __future__ import annotations

from typing import Any

from nbsupport.core.profiles import PROFILES

__all__ = ["profiles_table"]



def profiles_table() -> "Any":
    """The profiles side by side, in the columns a reader chooses by (a pandas DataFrame)."""
    import pandas as pd

    rows = [{"profile": p.name, "weights": "tiny, random" if p.random_weights else "pretrained",
             "ViT": p.vit.split(".")[0], "px (ViT / SD)": f"{p.image_size} / {p.sd_resolution}",
             "epochs": p.epochs, "data": f"{p.default_dataset}; {p.sd_dataset}"}
            for p in PROFILES.values()]
    return pd.DataFrame(rows).set_index("profile")
