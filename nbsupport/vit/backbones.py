"""Vision Transformer backbones by timm name, with honest weights.

``create_vit`` builds a timm ViT for a classification task. Pretrained weights come from the
Hugging Face hub through timm (optionally pinned to a revision, ``name@revision``), from a local
file, or, for the book's pocket ViT (``pocket-fundus-vit``), from the package itself, checked
against its sha256; when they cannot be had, the error says so and names the fix. Random weights are used only
when asked for (``pretrained=False``, e.g. by the ``smoke`` profile), and :func:`weights_label`
says which weights a model carries, for run records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hashlib
import warnings

import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

__all__ = ["BackboneSpec", "BACKBONES", "WeightsUnavailableError", "create_vit", "weights_label",
           "TINY_VIT_KWARGS", "POCKET_ARCH", "pocket_architecture", "data_config", "sha256_of",
           "weights_dir"]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (offline, gated, or a bad local path)."""


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone choice.

    Attributes:
        timm_name: timm model name with pretrained tag (for a shipped model: its own name).
        revision: hub revision (commit) to pin, or None for the tag's default.
        description: one line for tables.
        file: for weights shipped inside the package: the file under ``nbsupport/weights/``.
        sha256: the shipped file's hash, checked at every load.
    """

    timm_name: str
    revision: str | None
    description: str
    file: str | None = None
    sha256: str | None = None


BACKBONES: dict[str, BackboneSpec] = {
    "clip-vit-b16": BackboneSpec("vit_base_patch16_clip_224.openai", None,
                                 "CLIP ViT-B/16 image tower (OpenAI); the DVPT paper's backbone"),
    "in21k-vit-b16": BackboneSpec("vit_base_patch16_224.augreg_in21k", None,
                                  "ViT-B/16 pre-trained on ImageNet-21k (AugReg)"),
    "in21k-ft-vit-b16": BackboneSpec("vit_base_patch16_224.augreg2_in21k_ft_in1k", None,
                                     "ViT-B/16, ImageNet-21k then fine-tuned on ImageNet-1k"),
    "vit-s16": BackboneSpec("vit_small_patch16_224.augreg_in21k", None, "ViT-S/16, ImageNet-21k (AugReg)"),
    "pocket-fundus-vit": BackboneSpec(
        "pocket-fundus-vit", None, "the book's pocket ViT (patch 8, width 192, depth 6, 64 px), "
        "pretrained by nbsupport.vit.pretrain on procedural source-domain eyes; ships in the package",
        file="pocket-fundus-vit.safetensors",
        sha256="2b00c291fa0b2f849a91b202d41c947b82d9cba313f2b2aabc80e5c1922aedb5"),
}

# The smoke profile's tiny ViT: same code path as ViT-B/16, a few thousand times cheaper.
TINY_VIT_KWARGS: dict[str, Any] = {"embed_dim": 96, "depth": 4, "num_heads": 3}

# The book's pocket foundation ViT (pretrained by nbsupport.vit.pretrain): ViT-B/16's code at
# 1/30 of its width x depth, 8 x 8 patches of a 64 px image.
POCKET_ARCH: dict[str, Any] = {"img_size": 64, "patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3}
POCKET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
POCKET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def pocket_architecture(num_classes: int = 0, img_size: int | None = None, **kwargs: Any) -> nn.Module:
    """The pocket ViT's architecture (a timm ``VisionTransformer``), randomly initialised.

    Its pretrained config carries the normalisation the pocket weights were trained with, so
    :func:`data_config` and every data pipeline of the book read it from the model.
    """
    arch = {**POCKET_ARCH, **({"img_size": img_size} if img_size else {}), **kwargs}
    size = arch["img_size"]
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=num_classes,
        pretrained_cfg_overlay={"mean": POCKET_MEAN, "std": POCKET_STD, "input_size": (3, size, size),
                                "crop_pct": 1.0}, **arch)


def weights_dir() -> Path:
    """Where the package's shipped weights live (``nbsupport/weights``)."""
    return Path(__file__).resolve().parent.parent / "weights"


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _create_shipped(spec: BackboneSpec, name: str, num_classes: int, pretrained: bool,
                    img_size: int | None, weights_path: str | Path | None, **kwargs: Any) -> nn.Module:
    """A backbone whose weights ship inside the package (the pocket ViT), hash-checked."""
    size = img_size or POCKET_ARCH["img_size"]
    model = pocket_architecture(num_classes=num_classes, img_size=size, **kwargs)
    if not pretrained and weights_path is None:
        model.nbsupport_weights = "random"  # type: ignore[attr-defined]
        return model
    path = Path(weights_path).expanduser() if weights_path is not None else weights_dir() / str(spec.file)
    reproduce = (f"reproduce it with `python -m nbsupport pretrain --export {path}` (a GPU in practice), "
                 f"or pass pretrained=False for random weights (and say so in your results)")
    if not path.is_file():
        raise WeightsUnavailableError(f"{name}: weights file {path} is missing. Reinstall nbsupport from a "
                                      f"complete checkout (git lfs is not used; the file is in git), or {reproduce}")
    digest = sha256_of(path)
    if weights_path is None and digest != spec.sha256:
        raise WeightsUnavailableError(f"{name}: {path} has sha256 {digest[:16]}..., expected {spec.sha256[:16]}... "
                                      f"(corrupted, truncated or replaced). Restore it with `git checkout -- {path.name}` "
                                      f"in nbsupport/weights, or {reproduce}")
    state = safetensors.torch.load_file(str(path))
    pos = state["pos_embed"]
    grid = size // POCKET_ARCH["patch_size"]
    if pos.shape[1] != 1 + grid * grid:
        old = int(round((pos.shape[1] - 1) ** 0.5))
        warnings.warn(f"{name} was pretrained at {old * POCKET_ARCH['patch_size']} px; its position embeddings "
                      f"are interpolated (bicubic) from {old}x{old} to {grid}x{grid} patches for img_size={size}. "
                      "Features at another resolution are not what was pretrained (lesions change size in pixels).",
                      stacklevel=3)
        state["pos_embed"] = resample_abs_pos_embed(pos.float(), new_size=(grid, grid), num_prefix_tokens=1)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    bad_missing = [k for k in missing if not k.startswith("head.")]
    if bad_missing or unexpected:
        raise WeightsUnavailableError(f"{name}: {path} does not fit the pocket architecture "
                                      f"(missing {bad_missing[:4]}, unexpected {unexpected[:4]}); {reproduce}")
    model.nbsupport_weights = (f"local:{path}" if weights_path is not None  # type: ignore[attr-defined]
                               else f"pretrained:{name}@sha256:{digest[:16]}")
    return model


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
        name: a key of :data:`BACKBONES` (``pocket-fundus-vit`` loads offline from the package), or
            any timm ViT name (``name@revision`` pins a revision).
        num_classes: classes of the task (the head is new and randomly initialised).
        pretrained: load hub weights; False builds the architecture with random weights.
        img_size: input resolution (position embeddings are resampled by timm when it differs).
        weights_path: a local ``.safetensors``/``.pth`` file to load instead of the hub.
        tiny: shrink the architecture (:data:`TINY_VIT_KWARGS`), random weights only.

    Raises:
        WeightsUnavailableError: naming the model and the fixes when weights can't be loaded.
    """
    spec = BACKBONES.get(name)
    if spec is not None and spec.file is not None:
        if tiny:
            raise ValueError(f"tiny=True builds a shrunken architecture; {name!r} is already small")
        return _create_shipped(spec, name, num_classes, pretrained, img_size, weights_path, **kwargs)
    timm_name, revision = _resolve(name)
    if not timm.is_model(timm_name.split(".")[0]):
        raise ValueError(f"unknown backbone {name!r}: expected one of {', '.join(BACKBONES)} or a timm "
                         "ViT name (see timm.list_models('vit_*'))")
    extra: dict[str, Any] = dict(kwargs)
    if img_size is not None:
        extra["img_size"] = img_size
    _check_family(timm_name, {k: v for k, v in extra.items() if k != "img_size"})
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
            "Offline or gated? Fixes: a local copy of the weights (weights_path='/path/to/model.safetensors'; "
            "in a chapter: -p weights /path/to/model.safetensors), another model (in a chapter: -p backbone NAME), "
            "pretrained=False for random weights (say so in your results), or the smoke profile "
            "(-p profile smoke).") from exc
    if pretrained and weights_path is None:       # the commit the weights came from, read back from the hub cache
        from nbsupport.core.hub import loaded_revision

        hub_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
        if hub_id:
            repo, _, asked = hub_id.partition("@")
            revision = loaded_revision(repo, HUB_WEIGHT_FILES, asked or revision) or revision
    model.nbsupport_weights = weights_label(timm_name, pretrained, revision, weights_path, tiny)  # type: ignore[attr-defined]
    return model


#: the file names timm loads pretrained weights from on the hub
HUB_WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                    "open_clip_pytorch_model.bin")


def _check_family(timm_name: str, kwargs: dict[str, Any]) -> None:
    """Refuse a non-ViT before any download: built on ``meta`` (no memory), its class is checked."""
    from nbsupport.vit.families import SUPPORTED_FAMILIES, UnsupportedModelError

    with torch.device("meta"):
        probe = timm.create_model(timm_name, pretrained=False, **kwargs)
    fam = type(probe).__name__
    if fam not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"create_vit({timm_name!r}): a timm {fam} is not a Vision Transformer; the book's backbones and "
            f"methods support the timm families {', '.join(SUPPORTED_FAMILIES)} (e.g. vit_base_patch16_224, "
            "eva02_base_patch14_224). To fine-tune a CNN, build it with timm.create_model and use the methods "
            "'linear' or 'full' of nbsupport.vit.methods.adapt")


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
