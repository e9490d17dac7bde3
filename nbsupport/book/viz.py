"""Pictures for the chapters: image grids, lesion-mask overlays, the profile banner."""

from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["LESION_COLOURS", "comparison_grid", "heat_colourbar", "image_grid", "mask_colour_key", "method_colours", "overlay_masks", "profile_banner", "to_uint8"]

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
    lines = max((str(t).count("\n") + 1 for t in titles), default=1) if titles is not None else 0
    title_room = 0.3 * lines * nrows                             # or each row's titles overlap the row above
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + title_room + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=10)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def comparison_grid(columns: Mapping[str, Sequence[np.ndarray]], row_labels: Sequence[str], max_cols: int = 7,
                    size: float = 1.5, wrap: int = 16, keep: int = 0):
    """Many named columns of images over the same few inputs, e.g. one column per method and one
    row per prompt: the columns are wrapped into blocks of at most ``max_cols``, stacked top to
    bottom, each block titling its columns and labelling its rows. Wide rather than tall, so each
    image stays large on a page. ``columns`` maps a title to one ``[H, W, 3]`` image per row label;
    the first ``keep`` columns (references, e.g. the real image) open every block, so each block
    compares with them without scrolling back. Returns the figure."""
    import matplotlib.pyplot as plt

    names = list(columns)
    if not names or not row_labels:
        raise ValueError("comparison_grid needs at least one column and one row label")
    for name in names:
        if len(columns[name]) != len(row_labels):
            raise ValueError(f"column {name!r} has {len(columns[name])} images for {len(row_labels)} row labels "
                             f"({list(row_labels)}): give each column one image per row")
    if not 0 <= keep < max_cols:
        raise ValueError(f"keep={keep}: the kept columns must leave room in a block of max_cols={max_cols}")
    head, rest = names[:keep], names[keep:]
    per = max_cols - keep                                        # new columns per block
    chunks = [rest[i:i + per] for i in range(0, len(rest), per)] or [[]]
    block_names = [head + c for c in chunks]
    n_rows, ncols, blocks = len(row_labels), max(map(len, block_names)), len(block_names)
    gap = 0.35                                                   # a spacer row between blocks, in images' heights
    ratios = ([1.0] * n_rows + [gap]) * (blocks - 1) + [1.0] * n_rows
    fig, all_axes = plt.subplots(len(ratios), ncols, squeeze=False, height_ratios=ratios,
                                 figsize=(size * ncols + 0.5, blocks * (size * n_rows + 0.5) + (blocks - 1) * gap * size))
    for spacer in all_axes[n_rows::n_rows + 1].flat:
        fig.delaxes(spacer)
    axes = np.delete(all_axes, np.s_[n_rows::n_rows + 1], axis=0)   # [blocks * n_rows, ncols]
    for b, block in enumerate(block_names):
        for j in range(ncols):
            for r in range(n_rows):
                ax = axes[b * n_rows + r, j]
                ax.set_xticks([]), ax.set_yticks([])
                ax.spines[:].set_visible(False)
                if j >= len(block):
                    ax.axis("off")
                    continue
                ax.imshow(columns[block[j]][r])
                if r == 0:
                    ax.set_title(textwrap.fill(block[j], wrap), fontsize=10)
                if j == 0:
                    ax.set_ylabel(row_labels[r], fontsize=10)
    fig.tight_layout()
    return fig


def heat_colourbar(fig, label: str, cmap: str = "inferno",  # type: ignore[no-untyped-def]
                   ticks: dict[float, str] | None = None):
    """A colour bar on the right of ``fig`` for maps drawn by :func:`heatmap_overlay`.

    The bar runs from 0 to 1, the overlay's scaled range: by default each map's own minimum and
    maximum ("low" to "high"); with a fixed ``vmin``/``vmax``, pass ``ticks`` to name positions on
    that scale, e.g. ``{0: "0", 1/3: "flat (1/N)", 1: "3/N or more"}``."""
    from matplotlib.cm import ScalarMappable

    ticks = ticks or {0: "low", 1: "high"}
    bar = fig.colorbar(ScalarMappable(cmap=cmap), ax=fig.axes, shrink=0.8, fraction=0.03, pad=0.02)
    bar.set_ticks(list(ticks), labels=list(ticks.values()))
    bar.set_label(label, fontsize=9)
    bar.ax.tick_params(labelsize=9)
    return bar


def method_colours() -> dict[str, Any]:
    """One colour per ViT method's display label (registry order, ``tab10``), so a method has the same
    colour in every chapter's plot; ``"Decoder only"`` (the linear probe of segmentation) shares the
    linear probe's. Use as a seaborn ``palette`` or look up ``colours[label]``."""
    import seaborn as sns

    from nbsupport.vit.methods import METHODS

    colours = dict(zip((m.label for m in METHODS.values()), sns.color_palette("tab10", len(METHODS))))
    colours["Decoder only"] = colours[METHODS["linear"].label]
    return colours


def profile_banner(profile: str, random_weights: bool, provenance: str = "",
                   own_data: tuple[str, str] | None = None) -> None:
    """Display the page's provenance (profile, device, versions) and, on pages run with tiny random
    models (the smoke profile), a visible note that the numbers are not results. ``own_data``
    ``(dataset, default)``: the run used another dataset than the one the page's prose describes,
    which the banner says."""
    from IPython.display import Markdown, display

    line = f"<small>{provenance}</small>\n>\n> " if provenance else ""
    if own_data is not None:
        line += (f"**Your data, `{own_data[0]}`:** the text of this page was written for the book's "
                 f"default data (`{own_data[1]}` at this profile). The printed numbers and the figures "
                 "are this run's; where the text describes the data (its size, its images), it "
                 "describes the default.\n>\n> ")
    if random_weights:
        display(Markdown(
            f"> {line}**Note - profile `{profile}`:** this page was executed with tiny, randomly initialised "
            "models on a few images, to prove that every cell runs. Its numbers say nothing "
            "about the methods; run it with `profile='gpu'` for the real experiment."))
    else:
        display(Markdown(f"> {line}Executed with profile `{profile}`; see the run record for weights and device."))


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "inferno",
                    vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Overlay a low-resolution heat map ``[h, w]`` (any range) on ``image`` ``[H, W, 3]`` uint8.

    The colours span ``vmin`` to ``vmax`` (values outside are clipped); by default the map's own
    minimum and maximum, which makes even a nearly flat map show a bright spot. Give every panel of a
    figure the same ``vmin``/``vmax`` to compare how peaked the maps are."""
    import matplotlib
    from PIL import Image

    h = np.asarray(heat, dtype=np.float32)
    lo = float(h.min()) if vmin is None else vmin
    hi = float(h.max()) if vmax is None else vmax
    h = np.clip((h - lo) / (hi - lo + 1e-8), 0.0, 1.0)
    big = np.asarray(Image.fromarray((h * 255).astype(np.uint8)).resize(image.shape[1::-1], Image.BILINEAR),
                     dtype=np.float32) / 255.0
    colour = matplotlib.colormaps[cmap](big)[..., :3] * 255
    return ((1 - alpha) * image + alpha * colour).astype(np.uint8)


def patch_grid(image: np.ndarray, patch: int, colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """``image`` with lines every ``patch`` pixels: what a ViT's patch embedding sees as tokens."""
    out = image.copy()
    out[::patch, :] = colour
    out[:, ::patch] = colour
    return out


def vit_attention(model, x, layer: int = -1):  # type: ignore[no-untyped-def]
    """Self-attention weights of one timm ViT block: ``[B, heads, N, N]`` (N includes prefix tokens).

    Recomputed from the block's ``qkv`` on the block's actual input (captured with a hook), so it
    works with fused attention kernels and with adapted blocks (VPT, SSF, LoRA).
    """
    import torch

    blk = model.blocks[layer]
    blk = getattr(blk, "block", blk)
    attn = blk.attn
    store = {}
    handle = attn.register_forward_pre_hook(lambda m, args: store.__setitem__("x", args[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    t = store["x"]
    b, n, c = t.shape
    with torch.no_grad():
        qkv = attn.qkv(t).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)


MASK_COLOURS: tuple[tuple[int, int, int], ...] = ((0, 200, 255), (255, 230, 0), (255, 40, 40), (80, 255, 80),
                                                   (255, 0, 255), (255, 140, 0))
MASK_COLOUR_NAMES: tuple[str, ...] = ("cyan", "yellow", "red", "green", "magenta", "orange")   # of MASK_COLOURS


def mask_colour_key(kinds: Sequence[str]) -> str:
    """The key to :func:`mask_overlay`'s default colours: ``"optic disc: cyan / exudates: yellow"``."""
    names = [MASK_COLOUR_NAMES[k % len(MASK_COLOUR_NAMES)] for k in range(len(kinds))]
    return " / ".join(f"{kind}: {name}" for kind, name in zip(kinds, names))


def mask_overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.55,
                 colours: Sequence[tuple[int, int, int]] = MASK_COLOURS) -> np.ndarray:
    """Masks ``[K, H, W]`` (bool or 0/1) painted over ``image`` ``[H, W, 3]`` uint8, one colour per kind
    (:data:`MASK_COLOURS` in order); later kinds are painted over earlier ones."""
    out = np.asarray(image, dtype=np.float32).copy()
    for k, m in enumerate(np.asarray(masks) > 0.5):
        c = np.asarray(colours[k % len(colours)], dtype=np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * c
    return out.clip(0, 255).astype(np.uint8)

