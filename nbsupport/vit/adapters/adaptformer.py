"""AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck MLP in parallel to each block's MLP.

As the official code computes it (``models/vit_image.py`` / ``adapter.py`` of ShoufaChen/AdaptFormer;
the authors confirmed that the code, not the paper's figure, is right), the adapter reads the
block's **un-normalised** input ``x`` (after the attention residual), not ``LN(x)``:

``x <- x + MLP(LN(x)) + s * up(dropout(ReLU(down(x))))``

with ``up`` zero-initialised (training starts at the frozen model), dropout 0.1 and a fixed scale
``s = 0.1``. Parameters per layer: ``2*D*r + r + D``. ``input="norm"`` is the paper-figure variant
(the adapter reads ``LN(x)``, like the MLP), kept as a documented option.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from nbsupport.vit.adapters.common import ParallelBranch

__all__ = ["AdaptMLP", "PreNormParallel", "apply_adaptformer"]


class AdaptMLP(nn.Module):
    """``[B, N, D] -> [B, N, D]``: ``scale * up(dropout(relu(down(x))))``, zero at initialisation."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1) -> None:
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


class PreNormParallel(nn.Module):
    """``y = mlp(norm(x)) + branch(x)``: the branch reads the un-normalised input.

    Takes the place of a block's ``norm2`` + ``mlp`` pair (``norm2`` becomes an identity), so a timm
    block's ``x + ls2(mlp(norm2(x)))`` computes ``x + ls2(mlp(norm(x)) + branch(x))``.
    Shapes: ``x [B, N, D] -> y [B, N, D]``.
    """

    def __init__(self, norm: nn.Module, mlp: nn.Module, branch: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.main = mlp
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(self.norm(x)) + self.branch(x)


def apply_adaptformer(model: nn.Module, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1,
                      input: Literal["x", "norm"] = "x") -> nn.Module:
    """Put an :class:`AdaptMLP` in parallel to every block's MLP (in place).

    Args:
        input: ``"x"`` (official code, default): the adapter reads the block's un-normalised input;
            ``"norm"`` (paper figure): it reads the same ``LN(x)`` as the MLP.
    """
    if input not in ("x", "norm"):
        raise ValueError(f"input={input!r}: expected 'x' (official code) or 'norm' (paper figure)")
    for blk in model.blocks:
        adapter = AdaptMLP(model.embed_dim, bottleneck, scale, dropout)
        if input == "norm":
            blk.mlp = ParallelBranch(blk.mlp, adapter)
        else:
            blk.mlp = PreNormParallel(blk.norm2, blk.mlp, adapter)
            blk.norm2 = nn.Identity()
    return model
