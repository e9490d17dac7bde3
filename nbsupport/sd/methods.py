"""Stable Diffusion fine-tuning methods: one registry, one call.

>>> groups = prepare(components, "lora")     # freezes everything, adds LoRA, returns param groups
>>> torch.optim.AdamW(groups, weight_decay=1e-2)

The eleven configurations of the Pixels-Under-Pressure study plus DiffFit as Xie et al. (2023)
define it:

==================  ==========================================================  ==========
method              trains                                                      lr
==================  ==========================================================  ==========
unet                the whole UNet                                              1e-5
text_encoder        the whole CLIP text encoder                                 5e-6
vae                 the whole VAE (+ a pixel reconstruction loss)               1e-6
text_encoder+unet   both (text encoder at 1e-6 next to the UNet)                1e-5 / 1e-6
vae+unet            both                                                        1e-5 / 1e-6
vae+text_encoder    both                                                        1e-6 / 5e-6
all                 UNet, text encoder and VAE                                  1e-5/1e-6/1e-6
lora                LoRA r=8, alpha=16 on the UNet's to_q, to_k, to_v, to_out.0  1e-4
dora                DoRA (LoRA + per-output magnitudes), same targets           1e-4
bitfit              every bias of the UNet                                      1e-4
difffit             UNet biases, norms, and a learnable scale on each           1e-4
                    transformer block's residual branches (attn1, attn2, ff)
==================  ==========================================================  ==========

The study's own "DiffFit" trains a zero-initialised full-size delta on every weight, which is full
fine-tuning in disguise; ``difffit`` here is the published method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nbsupport.core.checkpoints import load_into, save_tensors
from nbsupport.sd.models import SDComponents

__all__ = ["SDMethodSpec", "SD_METHODS", "prepare", "trainable_state", "save_trainable", "load_trainable",
           "parameter_table", "LORA_TARGETS", "DIFFFIT_BRANCHES", "ScaledBranch"]

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
DIFFFIT_BRANCHES = ("attn1", "attn2", "ff")
COMPONENTS = ("unet", "text_encoder", "vae")


@dataclass(frozen=True)
class SDMethodSpec:
    """A registered Stable Diffusion fine-tuning method.

    Attributes:
        name: registry key.
        label: for tables and plots.
        full: components trained in full.
        peft: ``None`` or one of ``lora``, ``dora``, ``bitfit``, ``difffit`` (always on the UNet).
        defaults: default options (LoRA rank and alpha).
    """

    name: str
    label: str
    full: tuple[str, ...]
    peft: str | None = None
    defaults: tuple[tuple[str, Any], ...] = ()

    @property
    def trains_vae(self) -> bool:
        return "vae" in self.full

    @property
    def trains_text_encoder(self) -> bool:
        return "text_encoder" in self.full


SD_METHODS: dict[str, SDMethodSpec] = {m.name: m for m in [
    SDMethodSpec("unet", "UNet", ("unet",)),
    SDMethodSpec("text_encoder", "Text encoder", ("text_encoder",)),
    SDMethodSpec("vae", "VAE", ("vae",)),
    SDMethodSpec("text_encoder+unet", "Text encoder + UNet", ("text_encoder", "unet")),
    SDMethodSpec("vae+unet", "VAE + UNet", ("vae", "unet")),
    SDMethodSpec("vae+text_encoder", "VAE + text encoder", ("vae", "text_encoder")),
    SDMethodSpec("all", "UNet + text encoder + VAE", ("unet", "text_encoder", "vae")),
    SDMethodSpec("lora", "LoRA", (), "lora", (("r", 8), ("alpha", 16))),
    SDMethodSpec("dora", "DoRA", (), "dora", (("r", 8), ("alpha", 16))),
    SDMethodSpec("bitfit", "BitFit", (), "bitfit"),
    SDMethodSpec("difffit", "DiffFit", (), "difffit"),
]}

# Learning rates of the study (constant schedule).
LR = {"unet": 1e-5, "text_encoder": 5e-6, "text_encoder_with_unet": 1e-6, "vae": 1e-6, "peft": 1e-4}


class ScaledBranch(nn.Module):
    """DiffFit's scale: ``branch(x) * gamma`` with a learnable per-channel ``gamma`` (init 1).

    A module (not a forward hook), so deep copies (EMA), ``state_dict`` and ``to()`` see it. The
    wrapped module stays reachable as ``.inner`` (its attention processor included).
    """

    def __init__(self, inner: nn.Module, dim: int) -> None:
        super().__init__()
        self.inner = inner
        ref = next(inner.parameters())
        self.gamma = nn.Parameter(torch.ones(dim, device=ref.device, dtype=torch.float32))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.inner(*args, **kwargs)
        return out * self.gamma.to(out.dtype)


def _add_difffit_scales(unet: nn.Module) -> list[nn.Parameter]:
    """Wrap each transformer block's residual branches (attn1, attn2, ff) in a :class:`ScaledBranch`.

    Placement as Xie et al. (2023) for DiT: a scale on every attention and feed-forward branch of
    every transformer block, none in the ResNet blocks (the UNet's convolutional part, which DiT
    does not have, gets only its biases and norms trained).
    """
    from diffusers.models.attention import BasicTransformerBlock

    scales = []
    for block in unet.modules():
        if not isinstance(block, BasicTransformerBlock):
            continue
        dim = block.norm1.normalized_shape[0]
        for branch in DIFFFIT_BRANCHES:
            module = getattr(block, branch, None)
            if module is None or isinstance(module, ScaledBranch):
                continue
            wrapped = ScaledBranch(module, dim)
            setattr(block, branch, wrapped)
            scales.append(wrapped.gamma)
    return scales


def prepare(components: SDComponents, method: str, **options: Any) -> list[dict[str, Any]]:
    """Freeze everything, apply ``method``, and return AdamW parameter groups with the study's
    learning rates (``name`` says which component a group is).

    ``options``: ``r``, ``alpha`` for LoRA/DoRA; ``lr`` overrides every group's learning rate.
    """
    if method not in SD_METHODS:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(SD_METHODS)}")
    spec = SD_METHODS[method]
    cfg = {**dict(spec.defaults), **{k: v for k, v in options.items() if k != "lr"}}
    unknown = set(cfg) - set(dict(spec.defaults))
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {sorted(unknown)}")
    for m in components.models().values():
        m.requires_grad_(False)
    groups: list[dict[str, Any]] = []
    for comp in spec.full:
        model = getattr(components, comp)
        model.requires_grad_(True)
        lr = LR["text_encoder_with_unet"] if (comp == "text_encoder" and "unet" in spec.full) else LR[comp]
        groups.append({"name": comp, "params": list(model.parameters()), "lr": lr})
    unet = components.unet
    if spec.peft in ("lora", "dora"):
        from peft import LoraConfig, inject_adapter_in_model

        lcfg = LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], target_modules=list(LORA_TARGETS),
                          init_lora_weights="gaussian", use_dora=spec.peft == "dora")
        inject_adapter_in_model(lcfg, unet)
        params = [p for n, p in unet.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        groups.append({"name": f"unet.{spec.peft}", "params": params, "lr": LR["peft"]})
    elif spec.peft == "bitfit":
        _split_layernorm_affine(unet)
        params = [p for n, p in unet.named_parameters() if n.endswith("bias")]
        for p in params:
            p.requires_grad_(True)
        groups.append({"name": "unet.bitfit", "params": params, "lr": LR["peft"]})
    elif spec.peft == "difffit":
        scales = {id(p) for p in _add_difffit_scales(unet)}
        params = [p for n, p in unet.named_parameters()
                  if n.endswith("bias") or id(p) in scales or _is_norm_weight(unet, n)]
        for p in params:
            p.requires_grad_(True)
        groups.append({"name": "unet.difffit", "params": params, "lr": LR["peft"]})
    if "lr" in options:
        for g in groups:
            g["lr"] = options["lr"]
    components.extra["method"] = {"name": method, "options": cfg}
    return groups


def _split_layernorm_affine(model: nn.Module) -> None:
    """LayerNorm as ``normalise(x) * weight + bias`` (same function). With a frozen weight and a
    trainable bias, torch 2.11's fused CUDA LayerNorm backward returned an empty bias gradient at
    large batch (seen on an H100 at batch 32); the split form avoids that kernel."""
    import types

    def forward(self: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.layer_norm(x, self.normalized_shape, None, None, self.eps)
        return y * self.weight.to(y.dtype) + self.bias.to(y.dtype)

    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and module.weight is not None and module.bias is not None:
            module.forward = types.MethodType(forward, module)


def _is_norm_weight(model: nn.Module, name: str) -> bool:
    if not name.endswith(".weight"):
        return False
    module = model.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(module, (nn.GroupNorm, nn.LayerNorm))


def trainable_state(components: SDComponents) -> dict[str, torch.Tensor]:
    """Trainable tensors of all components, named ``<component>.<parameter>``, on CPU."""
    out: dict[str, torch.Tensor] = {}
    for comp, model in components.models().items():
        for n, p in model.named_parameters():
            if p.requires_grad:
                out[f"{comp}.{n}"] = p.detach().to("cpu").contiguous()
    return out


def save_trainable(components: SDComponents, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Trainable tensors only (safetensors) + JSON of the method."""
    meta = {"method": components.extra.get("method"), "weights": components.weights, **(extra or {})}
    return save_tensors(trainable_state(components), path, meta)


def load_trainable(components: SDComponents, path: str | Path) -> SDComponents:
    """Load a trainable-only checkpoint into components prepared with the same method."""
    named = {f"{c}.{n}": p for c, m in components.models().items() for n, p in m.named_parameters()}
    load_into(named, set(trainable_state(components)), path, "prepare the components with the same method before loading")
    return components


def parameter_table(methods: list[str] | None = None, model: str | None = None) -> list[dict[str, Any]]:
    """Trainable parameters of every method on an SD architecture built on ``meta`` (no weights).

    Args:
        methods: registry keys (default: all).
        model: ``None`` for SD 1.5's architecture, or a diffusers SD snapshot (local folder or hub id)
            whose configs define it (SD 2.x, a fine-tune, the pocket model exported as a snapshot, ...).

    ``checkpoint_bytes`` counts the trainable tensors in fp32 (what ``save_trainable`` writes,
    without its small JSON header).
    """
    from nbsupport.sd.models import build_from_configs, build_sd15

    def build() -> SDComponents:
        return build_sd15("meta") if model is None else build_from_configs(model, "meta")

    rows = []
    for method in methods or list(SD_METHODS):
        comp = build()
        sizes = {k: sum(p.numel() for p in m.parameters()) for k, m in comp.models().items()}
        groups = prepare(comp, method)
        trainable = sum(p.numel() for g in groups for p in g["params"])
        total = sum(p.numel() for m in comp.models().values() for p in m.parameters())
        rows.append({
            "method": method, "label": SD_METHODS[method].label, "trainable": trainable,
            "trainable_pct": 100.0 * trainable / sum(sizes.values()), "added": total - sum(sizes.values()),
            "checkpoint_bytes": 4 * trainable,
            "learning_rates": {g["name"]: g["lr"] for g in groups},
        })
    return rows
