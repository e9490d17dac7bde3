"""Pictures for the chapters: image grids, lesion-mask overlays, the profile banner."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["LESION_COLOURS", "image_grid", "overlay_masks", "profile_banner", "to_uint8"]

LESION_COLOURS: dict[str, tuple[int, int, int]] = {
    "microaneurysms": (255, 0, 255),
    "haemorrhages": (0, 255, 255),
    "hard_exudates": (0, 255, 0),
    "cotton_wool_spots": (0, 90, 255),
    "neovascularisation": (255, 255, 0),
}


def to_uint8(image: np.ndarray | "torch.Tensor", mean: Sequence[float] | None = None,  # noqa: F821
             std: Sequence[float] | None = None) -> np.ndarray:
    """A displayable ``[H, W, 3]`` uint8 array from an array or a ``[3, H, W]`` tensor.

    Undoes mean/std normalisation when given; tensors in [-1, 1] are mapped to [0, 1].
    """
    import torch

    if isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        if mean is not None and std is not None:
            x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
        elif x.min() < 0:
            x = (x + 1) / 2
        return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    arr = np.asarray(image)
    return arr if arr.dtype == np.uint8 else (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)


def overlay_masks(image: np.ndarray, masks: dict[str, np.ndarray], alpha: float = 0.6) -> np.ndarray:
    """Colour each lesion kind's mask onto ``image`` ``[H, W, 3]`` uint8 (colours: LESION_COLOURS)."""
    out = image.astype(np.float32).copy()
    for kind, m in masks.items():
        colour = np.asarray(LESION_COLOURS.get(kind, (255, 255, 255)), dtype=np.float32)
        sel = np.asarray(m, dtype=bool)
        out[sel] = (1 - alpha) * out[sel] + alpha * colour
    return out.astype(np.uint8)


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int = 5,
               size: float = 2.4, suptitle: str | None = None):
    """A matplotlib figure with the images in a grid (titles optional). Returns the figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def profile_banner(profile: str, random_weights: bool) -> None:
    """Display a visible note on pages run with tiny random models (the smoke profile)."""
    from IPython.display import Markdown, display

    if random_weights:
        display(Markdown(
            f"> **Note - profile `{profile}`:** this page was executed with tiny, randomly initialised "
            "models on small procedural data, to prove that every cell runs. Its numbers say nothing "
            "about the methods; run it with `profile='gpu'` for the real experiment."))
    else:
        display(Markdown(f"> Executed with profile `{profile}`; see the run record for weights and device."))
