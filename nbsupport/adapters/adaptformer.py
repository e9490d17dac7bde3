"""AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck MLP in parallel to each block's MLP.

``y = MLP(LN(x)) + s * up(ReLU(down(LN(x))))`` with ``up`` zero-initialised (so training starts at
the frozen model) and a fixed scale ``s = 0.1``. Parameters per layer: ``2*D*r + r + D``.
The adapter reads the same normalised input as the MLP (the "parallel adapter" form).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nbsupport.adapters.common import ParallelBranch

__all__ = ["AdaptMLP", "apply_adaptformer"]


class AdaptMLP(nn.Module):
    """``[B, N, D] -> [B, N, D]``: ``scale * up(relu(down(x)))``, zero at initialisation."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x)))) * self.scale


def apply_adaptformer(model: nn.Module, bottleneck: int = 64, scale: float = 0.1) -> nn.Module:
    """Put an :class:`AdaptMLP` in parallel to every block's MLP (in place)."""
    for blk in model.blocks:
        blk.mlp = ParallelBranch(blk.mlp, AdaptMLP(model.embed_dim, bottleneck, scale))
    return model
