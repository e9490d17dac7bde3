"""Vision Transformer backbones by timm name, with honest weights.

``create_vit`` builds a timm ViT for a classification task. Pretrained weights come from the
Hugging Face hub through timm (optionally pinned to a revision, ``name@revision``) or from a local
file; when they cannot be had, the error says so and names the fix. Random weights are used only
when asked for (``pretrained=False``, e.g. by the ``smoke`` profile), and :func:`weights_label`
says which weights a model carries, for run records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

__all__ = ["BackboneSpec", "BACKBONES", "WeightsUnavailableError", "create_vit", "weights_label",
           "TINY_VIT_KWARGS", "data_config"]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (offline, gated, or a bad local path)."""


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone choice.

    Attributes:
        timm_name: timm model name with pretrained tag.
        revision: hub revision (commit) to pin, or None for the tag's default.
        description: one line for tables.
    """

    timm_name: str
    revision: str | None
    description: str


BACKBONES: dict[str, BackboneSpec] = {
    "clip-vit-b16": BackboneSpec("vit_base_patch16_clip_224.openai", None,
                                 "CLIP ViT-B/16 image tower (OpenAI); the DVPT paper's backbone"),
    "in21k-vit-b16": BackboneSpec("vit_base_patch16_224.augreg_in21k", None,
                                  "ViT-B/16 pre-trained on ImageNet-21k (AugReg)"),
    "in21k-ft-vit-b16": BackboneSpec("vit_base_patch16_224.augreg2_in21k_ft_in1k", None,
                                     "ViT-B/16, ImageNet-21k then fine-tuned on ImageNet-1k"),
    "vit-s16": BackboneSpec("vit_small_patch16_224.augreg_in21k", None, "ViT-S/16, ImageNet-21k (AugReg)"),
}

# The smoke profile's tiny ViT: same code path as ViT-B/16, a few thousand times cheaper.
TINY_VIT_KWARGS: dict[str, Any] = {"embed_dim": 96, "depth": 4, "num_heads": 3}


def _resolve(name: str) -> tuple[str, str | None]:
    if name in BACKBONES:
        spec = BACKBONES[name]
        return spec.timm_name, spec.revision
    if "@" in name:
        base, rev = name.split("@", 1)
        return base, rev
    return name, None


def create_vit(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    img_size: int | None = None,
    weights_path: str | Path | None = None,
    tiny: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Create a timm ViT with a fresh ``num_classes`` head.

    Args:
        name: a key of :data:`BACKBONES`, or any timm ViT name (``name@revision`` pins a revision).
        num_classes: classes of the task (the head is new and randomly initialised).
        pretrained: load hub weights; False builds the architecture with random weights.
        img_size: input resolution (position embeddings are resampled by timm when it differs).
        weights_path: a local ``.safetensors``/``.pth`` file to load instead of the hub.
        tiny: shrink the architecture (:data:`TINY_VIT_KWARGS`), random weights only.

    Raises:
        WeightsUnavailableError: naming the model and the fixes when weights can't be loaded.
    """
    timm_name, revision = _resolve(name)
    extra: dict[str, Any] = dict(kwargs)
    if img_size is not None:
        extra["img_size"] = img_size
    if tiny:
        if pretrained or weights_path:
            raise ValueError("tiny=True builds a shrunken architecture, which has no pretrained weights")
        extra = {**TINY_VIT_KWARGS, **extra}
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"weights_path={str(path)!r} does not exist")
        extra["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    elif pretrained and revision:
        base_cfg = timm.models.get_pretrained_cfg(timm_name)
        hub_id = getattr(base_cfg, "hf_hub_id", None) or f"timm/{timm_name}"
        extra["pretrained_cfg_overlay"] = {"hf_hub_id": f"{hub_id.split('@')[0]}@{revision}"}
    try:
        model = timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, **extra)
    except (OSError, RuntimeError, ValueError, ConnectionError) as exc:
        if not pretrained:
            raise
        raise WeightsUnavailableError(
            f"could not load pretrained weights for {timm_name!r}"
            f"{'@' + revision if revision else ''} ({exc.__class__.__name__}: {str(exc)[:300]}). "
            "Offline or gated? Fixes: pass weights_path='/path/to/model.safetensors' (a local copy), "
            "pretrained=False for random weights (say so in your results), or profile='smoke'.") from exc
    model.nbsupport_weights = weights_label(timm_name, pretrained, revision, weights_path, tiny)  # type: ignore[attr-defined]
    return model


def weights_label(timm_name: str, pretrained: bool, revision: str | None = None,
                  weights_path: str | Path | None = None, tiny: bool = False) -> str:
    """The ``weights`` string of a run record."""
    if weights_path is not None:
        return f"local:{weights_path}"
    if not pretrained:
        return "random"
    return f"pretrained:{timm_name}@{revision or 'default'}"


def data_config(model: nn.Module) -> dict[str, Any]:
    """Mean/std/input size the model expects (timm's resolved data config)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "input_size": tuple(cfg["input_size"])}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (unique) parameters."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


@torch.no_grad()
def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter; return the module."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module
