"""The classification method registry: one call adapts a timm ViT, one function counts.

>>> model = create_vit("vit_base_patch16_224", num_classes=5, pretrained=False)
>>> model = adapt(model, "dvpt")                  # exactly DVPT + head trainable
>>> parameter_table("vit_base_patch16_224")      # every method: count, % of backbone, bytes

Methods: ``linear``, ``full``, ``vpt_shallow``, ``vpt_deep``, ``lora`` (peft), ``adaptformer``,
``bitfit``, ``ssf``, ``dvpt``. Every method trains the new classification head too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import torch
from torch import nn

from nbsupport.vit.adapters.adaptformer import apply_adaptformer
from nbsupport.vit.adapters.dvpt import DVPTConfig, apply_dvpt
from nbsupport.vit.adapters.ssf import apply_ssf
from nbsupport.vit.adapters.vpt import apply_vpt
from nbsupport.vit.backbones import count_parameters, freeze
from nbsupport.vit.families import check_supported, features, probe, route_qkv_through_module
from nbsupport.core.checkpoints import load_into, save_tensors

__all__ = ["check_names", "MethodSpec", "METHODS", "adapt", "trainable_parameters", "trainable_state_dict",
           "checkpoint_bytes", "parameter_table", "save_trainable", "load_trainable"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered adaptation method.

    Attributes:
        name: registry key.
        label: name for tables and plots.
        description: one line.
        defaults: default hyper-parameters (overridable in :func:`adapt`).
        apply: ``(model, **config) -> model``; adds modules and marks trainable parameters.
        lr: default learning rate (AdamW) for this method.
    """

    name: str
    label: str
    description: str
    defaults: dict[str, Any]
    apply: Callable[..., nn.Module]
    lr: float


def _unfreeze_head(model: nn.Module) -> None:
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)


def _linear(model: nn.Module) -> nn.Module:
    return model


def _full(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _bitfit(model: nn.Module) -> nn.Module:
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.requires_grad_(True)
    return model


def _mark_new(model: nn.Module, before: set[int]) -> None:
    for p in model.parameters():
        if id(p) not in before:
            p.requires_grad_(True)


def _with_new_params(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def wrapped(model: nn.Module, **cfg: Any) -> nn.Module:
        before = {id(p) for p in model.parameters()}
        model = fn(model, **cfg)
        _mark_new(model, before)
        return model

    wrapped.__name__ = fn.__name__
    return wrapped


def _lora(model: nn.Module, r: int = 8, alpha: int = 8, targets: tuple[str, ...] = ("qkv",),
          dropout: float = 0.0) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    route_qkv_through_module(model)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if tuple(targets) == ("qkv",) and "qkv" not in names and {"q_proj", "k_proj", "v_proj"} <= names:
        targets = ("q_proj", "k_proj", "v_proj")      # separate projections (Eva with qkv_fused=False)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=dropout, bias="none")
    model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def _dvpt(model: nn.Module, **cfg: Any) -> nn.Module:
    return apply_dvpt(model, DVPTConfig(**cfg))


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in [
        MethodSpec("linear", "Linear probe", "frozen backbone, new head only", {}, _linear, 1e-3),
        MethodSpec("full", "Full fine-tuning", "every parameter trains", {}, _full, 5e-5),
        MethodSpec("vpt_shallow", "VPT-shallow", "P prompt tokens at the input (Jia et al. 2022)",
                   {"num_prompts": 10}, _with_new_params(lambda m, num_prompts: apply_vpt(m, num_prompts, False)),
                   1e-3),
        MethodSpec("vpt_deep", "VPT-deep", "P prompt tokens per layer (Jia et al. 2022)",
                   {"num_prompts": 10}, _with_new_params(lambda m, num_prompts: apply_vpt(m, num_prompts, True)),
                   1e-3),
        MethodSpec("lora", "LoRA", "rank-r updates of the attention qkv projection (peft)",
                   {"r": 8, "alpha": 8, "targets": ("qkv",)}, _lora, 5e-4),
        MethodSpec("adaptformer", "AdaptFormer", "bottleneck MLP parallel to each MLP (Chen et al. 2022)",
                   {"bottleneck": 64, "scale": 0.1, "dropout": 0.1, "input": "x"}, _with_new_params(apply_adaptformer), 5e-4),
        MethodSpec("bitfit", "BitFit", "every bias term (Ben Zaken et al. 2022)", {}, _bitfit, 1e-3),
        MethodSpec("ssf", "SSF", "scale and shift after every operation (Lian et al. 2022)", {},
                   _with_new_params(apply_ssf), 1e-3),
        MethodSpec("dvpt", "DVPT", "dynamic prompts cross-attending to bottlenecked frozen features",
                   DVPTConfig().to_dict(), _with_new_params(_dvpt), 5e-4),
    ]
}


def check_names(names: Any) -> list[str]:
    """Validate a list of method names before any training starts; returns it as a list.

    Raises:
        ValueError: naming the unknown methods and the valid ones.
    """
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: expected some of {', '.join(METHODS)}")
    return names


def adapt(model: nn.Module, method: str, check: bool = True, **config: Any) -> nn.Module:
    """Adapt a timm ViT in place for ``method``; exactly the method's parameters + head train.

    Args:
        model: a timm VisionTransformer or Eva with its task head (see :func:`nbsupport.vit.backbones.create_vit`).
        method: a key of :data:`METHODS`.
        check: prove the adaptation on one small forward/backward (:func:`nbsupport.vit.families.probe`):
            every trainable tensor gets a gradient, and the features are unchanged at initialisation
            where the method promises it. Skipped for models on the ``meta`` device (parameter counts).
        **config: overrides of the method's defaults (e.g. ``num_prompts=50``, ``group_size=1``).

    The method name and its full config are stored on ``model.nbsupport_method``.

    Raises:
        ValueError: an unknown method or option.
        nbsupport.vit.families.UnsupportedModelError: a model family (or model + method) that cannot
            be adapted, before anything changes; or an adaptation that the check proves broken.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    spec = METHODS[method]
    unknown = set(config) - set(spec.defaults)
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {sorted(unknown)}; options: {sorted(spec.defaults)}")
    cfg = {**spec.defaults, **config}
    check_supported(model, method, cfg)
    on_meta = any(p.is_meta for p in model.parameters())
    reference, x = None, None
    if check and not on_meta:
        from nbsupport.vit.families import _input

        x = _input(model)
        was = model.training
        with torch.no_grad():
            reference = features(model.eval(), x)
        model.train(was)
    freeze(model)
    model = spec.apply(model, **cfg)
    _unfreeze_head(model)
    if check and not on_meta:
        probe(model, method, reference, x)
    model.nbsupport_method = {"name": method, "config": {k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in cfg.items()}}
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Unique parameters with ``requires_grad``."""
    seen: set[int] = set()
    out = []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors by name (each shared tensor once), detached, contiguous, on CPU."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out[name] = p.detach().to("cpu").contiguous()
    return out


def checkpoint_bytes(model: nn.Module) -> int:
    """Size in bytes of the trainable-only safetensors checkpoint (header included)."""
    return len(safetensors.torch.save(trainable_state_dict(model)))


def save_trainable(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save only the trainable tensors (safetensors) plus a JSON of the method config.

    Writes ``path`` (``.safetensors``) and ``path`` with suffix ``.json``.
    """
    meta = {"method": getattr(model, "nbsupport_method", None),
            "weights": getattr(model, "nbsupport_weights", None), **(extra or {})}
    return save_tensors(trainable_state_dict(model), path, meta)


def load_trainable(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a trainable-only checkpoint into a model adapted the same way.

    Raises:
        ValueError: when the checkpoint's method differs, or tensors are missing / unexpected.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        mine = getattr(model, "nbsupport_method", None)
        if meta.get("method") and mine and meta["method"] != mine:
            raise ValueError(f"{path}: checkpoint is for {meta['method']}, the model is adapted with {mine}")
    load_into(dict(model.named_parameters()), set(trainable_state_dict(model)), path,
              "adapt the model with the same method and config before loading")
    return model


def parameter_table(
    backbone: str = "vit_base_patch16_224",
    methods: list[str] | None = None,
    num_classes: int = 5,
    configs: dict[str, dict[str, Any]] | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters per method, built without weights.

    Returns one dict per method: ``method``, ``label``, ``trainable``, ``added`` (new
    parameters), ``backbone`` (backbone size without head), ``trainable_pct`` and ``added_pct``
    (of the backbone), ``checkpoint_bytes`` (trainable-only safetensors), ``config``.
    """
    import timm

    factory = model_factory or (lambda: timm.create_model(backbone, pretrained=False, num_classes=num_classes))
    rows = []
    for method in methods or list(METHODS):
        model = factory()
        total_before = count_parameters(model)
        head = sum(p.numel() for p in model.get_classifier().parameters())
        backbone_n = total_before - head
        model = adapt(model, method, **(configs or {}).get(method, {}))
        trainable = count_parameters(model, trainable_only=True)
        added = count_parameters(model) - total_before
        rows.append({
            "method": method,
            "label": METHODS[method].label,
            "trainable": trainable,
            "added": added,
            "backbone": backbone_n,
            "trainable_pct": 100.0 * trainable / backbone_n,
            "added_pct": 100.0 * added / backbone_n,
            "checkpoint_bytes": checkpoint_bytes(model),
            "config": model.nbsupport_method["config"],
        })
        del model
    return rows

