"""SSF, Scaling & Shifting your Features (Lian et al., NeurIPS 2022).

After each operation (patch embedding, qkv, attention projection, both MLP linears, both layer
norms, the final norm) a per-channel affine ``y = x * gamma + beta`` is learned. Initialised at
identity (gamma = 1, beta = 0; the paper draws them near identity) so the model starts frozen.
At inference the affines can be merged into the preceding linear layer. Parameters: ``22*D`` per
block + ``4*D``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SSF", "SSFLinear", "SSFLayerNorm", "apply_ssf"]


class SSF(nn.Module):
    """``y = inner(x) * scale + shift`` over the last dimension (``[..., C]``)."""

    def __init__(self, inner: nn.Module, channels: int) -> None:
        super().__init__()
        self.inner = inner
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.inner(x, *args, **kwargs) * self.scale + self.shift

    def __getattr__(self, name: str):
        # expose the wrapped module's attributes (e.g. patch_embed.grid_size) to timm
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def apply_ssf(model: nn.Module) -> nn.Module:
    """Wrap every operation of a timm ViT with :class:`SSF` (in place): the patch embedding, every
    linear layer and layer norm inside the blocks (qkv or q/k/v, projection, MLP, norms) and the
    final norm."""
    from nbsupport.vit.families import route_qkv_through_module

    d = model.embed_dim
    route_qkv_through_module(model)             # Eva: attn.qkv is called, so its wrapper is seen

    def wrap(m: nn.Module) -> nn.Module:
        if isinstance(m, nn.Linear):
            return SSFLinear(m)
        if isinstance(m, nn.LayerNorm):
            return SSFLayerNorm(m)
        return SSF(m, d)

    model.patch_embed = SSF(model.patch_embed, d)
    for blk in model.blocks:
        for name, child in list(blk.named_modules()):
            if isinstance(child, (nn.Linear, nn.LayerNorm)) and name:
                parent_name, _, attr = name.rpartition(".")
                setattr(blk.get_submodule(parent_name) if parent_name else blk, attr, wrap(child))
    model.norm = wrap(model.norm)
    return model


class _ScaleShiftFrozenLinear(torch.autograd.Function):
    """``y = (x W^T + b) * s + t`` for a frozen ``W, b``, with a backward that needs no weight-gradient
    matmul.

    Autograd through the folded form ``x (s * W)^T + (s * b + t)`` would compute the full
    ``dy^T x`` (a weight gradient ``[out, in]``, as costly as full fine-tuning's) only to reduce it
    to ``ds``. Here ``ds = sum_tokens(dy * z)`` with ``z = x W^T + b`` saved from the forward, and
    ``dx = dy (s * W)``: one matmul in the backward, as for any frozen linear.
    Shapes: ``x [..., in]``, ``W [out, in]``, ``b [out]`` or None, ``s, t [out]`` -> ``y [..., out]``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        z = F.linear(x, weight, bias)                   # autocast, when on, picks z's dtype
        ctx.save_for_backward(z, weight, scale)
        return torch.addcmul(shift.to(z.dtype), z, scale.to(z.dtype))

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        z, weight, scale = ctx.saved_tensors
        dx = ds = dt = None
        if ctx.needs_input_grad[0]:
            dx = dy @ (weight * scale[:, None]).to(dy.dtype)         # [..., out] @ [out, in]
        rows = dy.reshape(-1, dy.shape[-1])                          # [tokens, out]
        acc = torch.promote_types(dy.dtype, torch.float32)           # bf16 sums accumulate in fp32
        if ctx.needs_input_grad[3]:
            ds = (rows * z.reshape(rows.shape).to(dy.dtype)).sum(0, dtype=acc).to(scale.dtype)
        if ctx.needs_input_grad[4]:
            dt = rows.sum(0, dtype=acc).to(scale.dtype)
        return dx, None, None, ds, dt


class SSFLinear(nn.Module):
    """A frozen ``nn.Linear`` followed by SSF: ``(x W^T + b) * s + t``.

    In training, the backward takes one matmul (the input's gradient), like the frozen linear
    alone: ``s`` and ``t`` get their gradients from reductions over the tokens
    (:class:`_ScaleShiftFrozenLinear`); should the wrapped linear be unfrozen, plain autograd runs
    instead. Without gradients (evaluation) the affine is folded into the weights: one linear.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.inner = linear
        self.scale = nn.Parameter(torch.ones(linear.out_features))
        self.shift = nn.Parameter(torch.zeros(linear.out_features))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b, s, t = self.inner.weight, self.inner.bias, self.scale, self.shift
        if not torch.is_grad_enabled():                 # inference: one linear, affine folded in
            return F.linear(x, w * s[:, None], t if b is None else b * s + t)
        if not w.requires_grad and (b is None or not b.requires_grad):
            return _ScaleShiftFrozenLinear.apply(x, w, b, s, t)
        z = F.linear(x, w, b)
        return torch.addcmul(t.to(z.dtype), z, s.to(z.dtype))


class SSFLayerNorm(nn.Module):
    """A frozen ``nn.LayerNorm`` followed by SSF, folded into the norm's affine parameters."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.inner = norm
        (d,) = norm.normalized_shape
        self.scale = nn.Parameter(torch.ones(d))
        self.shift = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.inner
        w = self.scale if n.weight is None else n.weight * self.scale
        b = self.shift if n.bias is None else n.bias * self.scale + self.shift
        return F.layer_norm(x, n.normalized_shape, w, b, n.eps)
