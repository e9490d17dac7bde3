"""Dense prediction with an adapted ViT: a light decoder on the patch tokens, Dice + BCE, Dice/IoU.

The DVPT paper adapts a segmentation backbone (SegFormer-B4) with DVPT and trains on
``0.5 * cross-entropy + 0.5 * Dice``, reporting Dice and IoU. Here every method of
:mod:`nbsupport.vit.methods` adapts a timm ViT exactly as for classification (the backbone gets no
classification head), and a small decoder turns its patch tokens into masks:

``x [B, 3, H, W] -> backbone -> patch tokens [B, (H/p)(W/p), D] -> [B, D, H/p, W/p]
-> 1x1 conv to ``width`` (32) -> (2x upsample, 3x3 conv, GroupNorm, GELU) x (log2(p) - 1) -> [B, 32, H/2, W/2]
-> 2x bilinear -> concat detail stem(x) [B, 16, H, W] -> 1x1 conv -> logits [B, K, H, W]``

(progressive upsampling, as SETR-PUP). A ViT's tokens describe 16 x 16 pixel patches: a decoder that
sees only them paints structures thinner than a patch as blobs (a 64 px fundus has 1-2 px vessels
and 4 x 4 tokens). So, as ViT-Adapter's *spatial prior module* does for plain ViTs (Chen et al.,
2023, arXiv:2205.08534), a small convolutional **detail stem** (two 3x3 convolutions, ``detail``
channels, at full resolution) reads the image itself, and its features join the upsampled ones
before the last 1x1 convolution. The decoder, stem included, is always trained: it plays the part
the classification head plays, so ``linear`` here means *decoder only* on a frozen backbone.

Masks are multi-label (one sigmoid per kind: vessels, optic disc and lesions overlap), so the
loss is ``0.5 * binary cross-entropy + 0.5 * soft Dice``, the multi-label form of the paper's.
Dice and IoU are counted per class over all test pixels pooled (``2TP / (2TP + FP + FN)`` and
``TP / (TP + FP + FN)`` at a 0.5 threshold), then averaged over classes.

DVPT for a dense task: with ``inject="tokens"`` (the default) every patch token reads the dynamic
prompts through the cross-attention, which is what a per-pixel decoder needs; ``inject="cls"``
would change only the class token, which the decoder never reads, so it is refused here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metrics import bootstrap_counts

__all__ = ["PatchDecoder", "SegmentationModel", "segmentation_loss", "dice_iou", "SegmentationCounts", "image_counts",
           "pooled_dice", "paired_bootstrap_dice"]


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8 if c_out % 8 == 0 else 1, c_out), nn.GELU())


class PatchDecoder(nn.Module):
    """Patch-token grid ``[B, D, g, g]`` -> logits ``[B, K, g * 2^n, g * 2^n]`` by ``n`` doublings.

    With ``detail > 0`` the image ``[B, 3, g * 2^n, g * 2^n]`` also enters through the detail stem,
    which carries the full-resolution detail; the token path then convolves up to half resolution
    only and is upsampled bilinearly for the last doubling (its 3x3 convolution at full resolution
    would cost three quarters of the decoder's compute)."""

    def __init__(self, dim: int, num_classes: int, upsamplings: int, width: int = 32, detail: int = 0) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, width, 1)
        convolved = max(upsamplings - 1, 0) if detail else upsamplings
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv_block(width, width))
            for _ in range(convolved))
        self.detail = nn.Sequential(_conv_block(3, detail), _conv_block(detail, detail)) if detail else None
        self.out = nn.Conv2d(width + detail, num_classes, 1)

    def forward(self, grid: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj(grid)
        for stage in self.stages:
            x = stage(x)                                                   # [B, width, H/2, W/2] with a stem
        if self.detail is not None:
            if image is None:
                raise ValueError("this decoder has a detail stem: pass the image too")
            if image.shape[-2:] != x.shape[-2:]:
                x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, self.detail(image)], dim=1)                  # [B, width + detail, H, W]
        return self.out(x)


class SegmentationModel(nn.Module):
    """An adapted timm ViT (no classification head) and a :class:`PatchDecoder`.

    Args:
        backbone: a ViT adapted by :func:`nbsupport.vit.methods.adapt` (built with ``num_classes=0``).
        num_classes: mask kinds ``K``.
        width: decoder channels.
        detail: channels of the full-resolution detail stem (0: tokens only).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, width: int = 32, detail: int = 16) -> None:
        super().__init__()
        method = getattr(backbone, "nbsupport_method", {}) or {}
        if method.get("name") == "dvpt" and method.get("config", {}).get("inject") == "cls":
            raise ValueError("dvpt with inject='cls' changes only the class token, which a segmentation decoder "
                             "never reads: use inject='tokens' (the default) for dense tasks")
        self.backbone = backbone
        patch = backbone.patch_embed.patch_size[0]
        if patch & (patch - 1):
            raise ValueError(f"patch size {patch}: the decoder upsamples by doublings, so it must be a power of two")
        self.patch = patch
        self.decoder = PatchDecoder(backbone.embed_dim, num_classes, int(math.log2(patch)), width, detail)
        # the decoder is part of what a checkpoint holds: its shape enters the run key
        self.nbsupport_method = {**method, "decoder": {"kind": "PatchDecoder", "width": width, "classes": num_classes,
                                                       **({"detail": detail} if detail else {})}}

    def get_classifier(self) -> nn.Module:
        """The decoder (what the classification head is for a classifier: always trained)."""
        return self.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, H, W]`` -> logits ``[B, K, H, W]``."""
        tokens = self.backbone.forward_features(x)                      # [B, prefix + N, D]
        tokens = tokens[:, self.backbone.num_prefix_tokens:]            # class, register and VPT tokens off
        gh, gw = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        grid = tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)   # [B, D, H/p, W/p]
        logits = self.decoder(grid, x)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``0.5 * BCE + 0.5 * (1 - soft Dice)``; Dice per class over the batch's pixels, averaged.

    Args:
        logits: ``[B, K, H, W]``.
        target: ``[B, K, H, W]`` in {0, 1}.
    """
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid()
    inter = (p * target).sum(dim=(0, 2, 3))
    dice = (2 * inter + eps) / (p.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + eps)
    return 0.5 * bce + 0.5 * (1 - dice).mean()


def _dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Dice from pixel counts (any matching shapes); 1 where there is nothing to find and nothing found."""
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """IoU (Jaccard) from pixel counts; 1 where there is nothing to find and nothing found."""
    denom = tp + fp + fn
    return np.where(denom > 0, tp / np.maximum(denom, 1), 1.0)


class SegmentationCounts:
    """Per-class true positives, false positives and false negatives, pooled over batches."""

    def __init__(self, num_classes: int) -> None:
        self.tp = np.zeros(num_classes, np.int64)
        self.fp = np.zeros(num_classes, np.int64)
        self.fn = np.zeros(num_classes, np.int64)

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> "SegmentationCounts":
        """From pooled counts ``[K, 3]`` (TP, FP, FN per class), e.g. per-image counts summed over images."""
        counts = np.asarray(counts)
        if counts.ndim != 2 or counts.shape[1] != 3:
            raise ValueError(f"counts of shape {counts.shape}: expected [K, 3] (TP, FP, FN per class)")
        out = cls(len(counts))
        out.tp, out.fp, out.fn = (counts[:, j].astype(np.int64) for j in range(3))
        return out

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``, ``target``: bool/0-1 ``[B, K, H, W]``."""
        batch = image_counts(pred, target).sum(0)                            # [K, 3]
        self.tp += batch[:, 0]
        self.fp += batch[:, 1]
        self.fn += batch[:, 2]

    def metrics(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """``dice``, ``iou`` (means over classes) and ``dice_per_class``, ``iou_per_class``.

        A class with no pixel in either the prediction or the target scores 1 (nothing to find,
        nothing found)."""
        dice = _dice(self.tp, self.fp, self.fn)
        iou = _iou(self.tp, self.fp, self.fn)
        names = list(names) if names is not None else [str(i) for i in range(len(dice))]
        return {"dice": float(dice.mean()), "iou": float(iou.mean()),
                "dice_per_class": dict(zip(names, map(float, dice))),
                "iou_per_class": dict(zip(names, map(float, iou)))}


def dice_iou(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
             names: Sequence[str] | None = None) -> dict[str, Any]:
    """Dice and IoU of binary masks ``[N, K, H, W]`` (see :class:`SegmentationCounts`)."""
    pred_t, target_t = torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(target))
    counts = SegmentationCounts(pred_t.shape[1])
    counts.update(pred_t, target_t)
    return counts.metrics(names)


def _as_mask(m: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A boolean tensor, on the device it is on (an array goes to the CPU)."""
    return m.bool() if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m)).bool()


def image_counts(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
    """Each image's true positives, false positives and false negatives per class: binary masks
    ``[N, K, H, W]`` -> ``int64 [N, K, 3]``. Summed over images they are what :class:`SegmentationCounts`
    pools, so a resample of the images is a resample of these rows (:func:`paired_bootstrap_dice`)."""
    pred_t, target_t = _as_mask(pred), _as_mask(target)
    dims = (2, 3)
    return torch.stack([(pred_t & target_t).sum(dims), (pred_t & ~target_t).sum(dims),
                        (~pred_t & target_t).sum(dims)], dim=-1).cpu().numpy().astype(np.int64)


def pooled_dice(counts: np.ndarray) -> np.ndarray:
    """Dice per class from pooled counts ``[..., K, 3]`` (TP, FP, FN), averaged over the classes:
    ``[...]``. A class with no pixel in either the prediction or the target scores 1, as in
    :meth:`SegmentationCounts.metrics`."""
    return _dice(counts[..., 0], counts[..., 1], counts[..., 2]).mean(-1)


def paired_bootstrap_dice(counts: Mapping[str, np.ndarray], n_resamples: int = 2000,
                          seed: int = 0, groups: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
    """How much the test set's own sampling moves each method's Dice: ``n_resamples`` resamples of
    the test images (with replacement), the *same* resamples for every method, each scored as the
    chapters score a test set (pixels pooled over the images, Dice per class, mean over classes).

    Args:
        counts: method -> ``[S, N, K, 3]`` per-image counts of its ``S`` seeds (:func:`image_counts`;
            ``[N, K, 3]``: one seed), every method on the same ``N`` test images in the same order.
        groups: ``[N]`` each test image's patient, to draw patients rather than images
            (:func:`nbsupport.vit.metrics.bootstrap_counts`); None: images.

    Returns:
        method -> ``[n_resamples]`` mean-over-seeds Dice on each resample; the 2.5th and 97.5th
        percentiles of ``out[a] - out[b]`` are a 95% interval for the gap on eyes like these (what
        sampling a test set of this size leaves uncertain).
    """
    if not counts:
        raise ValueError("paired_bootstrap_dice needs the counts of at least one method")
    arrays = {}
    for name, c in counts.items():
        c = np.asarray(c)
        if c.ndim not in (3, 4) or c.shape[-1] != 3:
            raise ValueError(f"counts[{name!r}] has shape {c.shape}: expected [S, N, K, 3] or [N, K, 3] "
                             "(image_counts of each seed's run)")
        arrays[name] = c if c.ndim == 4 else c[None]
    shapes = {name: a.shape[1:3] for name, a in arrays.items()}                     # (N, K)
    if len(set(shapes.values())) > 1:
        raise ValueError(f"counts cover different numbers of test images or kinds {shapes} (images, kinds): "
                         "give every method's counts on the same test split, in its order")
    n = next(iter(shapes.values()))[0]
    times = bootstrap_counts(n, n_resamples, seed, groups).astype(np.float64)   # how often each image is drawn: [R, N]
    out = {}
    for name, a in arrays.items():                           # a: [S, N, K, 3]
        pooled = [(times @ s.reshape(n, -1)).reshape(n_resamples, *s.shape[1:]) for s in a]  # [R, K, 3]
        out[name] = np.mean([pooled_dice(p) for p in pooled], axis=0)
    return out
