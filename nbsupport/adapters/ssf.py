"""SSF, Scaling & Shifting your Features (Lian et al., NeurIPS 2022).

After each operation (patch embedding, qkv, attention projection, both MLP linears, both layer
norms, the final norm) a per-channel affine ``y = x * gamma + beta`` is learned. Initialised at
identity (gamma = 1, beta = 0; the paper draws them near identity) so the model starts frozen.
At inference the affines can be merged into the preceding linear layer. Parameters: ``22*D`` per
block + ``4*D``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SSF", "apply_ssf"]


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
    """Wrap every operation of a timm ViT with :class:`SSF` (in place)."""
    d = model.embed_dim
    model.patch_embed = SSF(model.patch_embed, d)
    for blk in model.blocks:
        blk.norm1 = SSF(blk.norm1, d)
        blk.attn.qkv = SSF(blk.attn.qkv, blk.attn.qkv.out_features)
        blk.attn.proj = SSF(blk.attn.proj, d)
        blk.norm2 = SSF(blk.norm2, d)
        blk.mlp.fc1 = SSF(blk.mlp.fc1, blk.mlp.fc1.out_features)
        blk.mlp.fc2 = SSF(blk.mlp.fc2, d)
    model.norm = SSF(model.norm, d)
    return model
