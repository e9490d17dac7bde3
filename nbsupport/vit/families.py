"""Which timm models the book's methods adapt, and the checks that prove an adaptation took.

A method that "adapts" a model it does not understand can fail silently: on timm's rotary ``Eva``
ViTs a LoRA injected into ``attn.qkv`` was never called (``Eva`` reads ``qkv.weight`` directly),
so a "LoRA" benchmark would really have been a linear probe. So every :func:`nbsupport.vit.methods.adapt`

1. checks the model family and the method's needs (:func:`check_supported`) *before* changing
   anything, refusing with a message that names the family and what is supported;
2. after adapting, runs one small forward/backward (:func:`probe`) and refuses a result in which
   a trainable tensor receives no gradient, or in which a method that promises to start from the
   frozen model (LoRA, AdaptFormer, BitFit, SSF, DVPT: zero-initialised branches, identity scales)
   changes the features at initialisation.

Supported (one test model per family in ``tests/test_methods.py``):

==========================  =====================================================================
family                      notes
==========================  =====================================================================
``VisionTransformer``       class token or global average pooling, register tokens, fused ``qkv``
``Eva`` (EVA-02, rotary)    fused ``qkv`` (with separate q/v biases) or separate ``q/k/v_proj``;
                            rotary embeddings skip prefix tokens, so VPT's prompts are added to them
==========================  =====================================================================

CNNs and other architectures are refused: the methods are defined on transformer blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["UnsupportedModelError", "SUPPORTED_FAMILIES", "family", "describe", "check_supported",
           "route_qkv_through_module", "probe", "IDENTITY_AT_INIT"]

SUPPORTED_FAMILIES = ("VisionTransformer", "Eva")
# methods whose adapted model equals the frozen one at initialisation (features, not the new head)
IDENTITY_AT_INIT = frozenset({"linear", "full", "lora", "adaptformer", "bitfit", "ssf", "dvpt"})


class UnsupportedModelError(ValueError):
    """A model (or a model + method pair) the book's methods cannot adapt correctly."""


def family(model: nn.Module) -> str:
    """The model's timm class name (``VisionTransformer``, ``Eva``, ``ResNet``, ...)."""
    return type(model).__name__


def describe(model: nn.Module) -> dict[str, Any]:
    """What matters for adapting a ViT: family, prefix tokens, class token, registers, rotary, qkv."""
    attn = model.blocks[0].attn if hasattr(model, "blocks") and len(model.blocks) else None
    return {
        "family": family(model),
        "num_prefix_tokens": int(getattr(model, "num_prefix_tokens", 0)),
        "class_token": getattr(model, "cls_token", None) is not None,
        "registers": int(getattr(model, "num_reg_tokens", 0) or 0),
        "rotary": getattr(model, "rope", None) is not None,
        "fused_qkv": attn is not None and getattr(attn, "qkv", None) is not None,
        "global_pool": getattr(model, "global_pool", None),
    }


def check_supported(model: nn.Module, method: str, config: dict[str, Any]) -> None:
    """Refuse, before anything changes, a model family or a method + model pair that cannot work.

    Raises:
        UnsupportedModelError: naming the family, the reason and what is supported.
    """
    fam = family(model)
    if fam not in SUPPORTED_FAMILIES:
        if method in ("linear", "full"):
            return                                    # a head, or everything: any architecture
        raise UnsupportedModelError(
            f"method {method!r} cannot adapt a {fam}: the book's methods are defined on transformer blocks and "
            f"support the timm families {', '.join(SUPPORTED_FAMILIES)} (class token or pooled, registers, rotary, "
            f"fused or separate qkv). For a CNN, 'linear' and 'full' work; otherwise choose a timm ViT "
            "(e.g. vit_base_patch16_224)")
    info = describe(model)
    if method == "dvpt" and config.get("inject") == "cls" and not info["class_token"]:
        raise UnsupportedModelError(
            f"dvpt with inject='cls' needs a class token, and this {fam} has none (global_pool="
            f"{info['global_pool']!r}): use inject='tokens' (the default)")
    if method == "adaptformer" and config.get("input", "x") == "x":
        post = [type(b).__name__ for b in model.blocks if "Post" in type(b).__name__]
        if post:
            raise UnsupportedModelError(
                f"adaptformer with input='x' assumes pre-norm blocks (x + mlp(norm(x))); this {fam} has "
                f"{post[0]} blocks (post-norm): use input='norm'")
    if getattr(model, "rope_mixed", False) and method in ("vpt_shallow", "vpt_deep"):
        raise UnsupportedModelError(f"{method}: {fam} with depth-dependent ('mixed') rotary embeddings is not "
                                    "supported by VPT here; use another method")


def route_qkv_through_module(model: nn.Module) -> None:
    """Make ``Eva`` attention call ``attn.qkv(x)`` (then add its q/v biases) instead of reading
    ``attn.qkv.weight`` in ``F.linear``: the same numbers, but wrappers (LoRA, SSF) around
    ``attn.qkv`` now take part. A no-op for other families."""
    for module in model.modules():
        if type(module).__name__ == "EvaAttention" and getattr(module, "qkv", None) is not None \
                and getattr(module, "q_bias", None) is not None:
            module.qkv_bias_separate = True


def _input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or (224, 224)
    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, *tuple(size), generator=g).to(device, dtype)


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pre-logit features ``[B, D]`` (what the new head reads)."""
    if hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    return model(x)


def probe(model: nn.Module, method: str, reference: torch.Tensor | None, x: torch.Tensor) -> None:
    """One forward/backward on ``x``: every trainable tensor must receive a gradient, and a method
    in :data:`IDENTITY_AT_INIT` must reproduce ``reference`` (the frozen model's features).

    Raises:
        UnsupportedModelError: naming the tensors without a gradient, or the change at initialisation.
    """
    was_training = model.training
    model.eval()                                      # no dropout: the identity check is exact
    try:
        out = features(model, x)
        if reference is not None and method in IDENTITY_AT_INIT:
            err = (out.float() - reference.float()).abs().max().item()
            tol = 1e-4 * max(1.0, reference.float().abs().max().item())
            if err > tol:
                raise UnsupportedModelError(
                    f"{method} on this {family(model)} changes the features at initialisation (max difference "
                    f"{err:.3g}); the method promises to start from the frozen model, so its wiring does not fit "
                    "this architecture")
        head = model.get_classifier() if hasattr(model, "get_classifier") else nn.Identity()
        logits = head(out) if not isinstance(head, nn.Identity) else out
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        for _, p in trainable:
            p.grad = None
        if logits.requires_grad:
            logits.float().square().mean().backward()
        missing = [n for n, p in trainable if p.grad is None]
        for _, p in trainable:
            p.grad = None
        if missing:
            raise UnsupportedModelError(
                f"{method} on this {family(model)}: {len(missing)} trainable tensor(s) receive no gradient, e.g. "
                f"{missing[:3]}; they would not train (the method's modules are bypassed by this architecture's "
                "forward). Supported: " + ", ".join(SUPPORTED_FAMILIES))
    finally:
        model.train(was_training)
