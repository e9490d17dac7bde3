"""Visual Prompt Tuning (Jia et al., ECCV 2022): learnable tokens in the input sequence.

*Shallow*: ``P`` prompt tokens are inserted once, after the embeddings, between the prefix
(class) token(s) and the patch tokens. *Deep*: every layer gets its own ``P`` prompts, which
replace the previous layer's prompt outputs. Parameters: shallow ``P*D``, deep ``L*P*D``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["PromptInsert", "DeepPromptBlock", "apply_vpt"]


def _init_prompts(num: int, dim: int, patch: int) -> nn.Parameter:
    # VPT's initialisation: uniform Xavier over the patch-embedding fan (3 * patch^2 + D).
    val = math.sqrt(6.0 / float(3 * patch * patch + dim))
    return nn.Parameter(torch.empty(1, num, dim).uniform_(-val, val))


class PromptInsert(nn.Module):
    """Insert prompt tokens at position ``at``: ``[B, N, D] -> [B, N + P, D]``."""

    def __init__(self, inner: nn.Module, num_prompts: int, dim: int, at: int, patch: int = 16) -> None:
        super().__init__()
        self.inner = inner
        self.at = at
        self.prompts = _init_prompts(num_prompts, dim, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inner(x)
        p = self.prompts.expand(x.shape[0], -1, -1).to(x.dtype)
        return torch.cat([x[:, : self.at], p, x[:, self.at:]], dim=1)


class DeepPromptBlock(nn.Module):
    """Replace the ``P`` tokens after position ``at`` with this layer's prompts, then run the block."""

    def __init__(self, block: nn.Module, num_prompts: int, dim: int, at: int, patch: int = 16) -> None:
        super().__init__()
        self.block = block
        self.at = at
        self.num_prompts = num_prompts
        self.prompts = _init_prompts(num_prompts, dim, patch)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        p = self.prompts.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([x[:, : self.at], p, x[:, self.at + self.num_prompts:]], dim=1)
        return self.block(x, *args, **kwargs)


def apply_vpt(model: nn.Module, num_prompts: int = 10, deep: bool = False) -> nn.Module:
    """Add VPT prompts to a timm VisionTransformer in place; returns it."""
    dim = model.embed_dim
    at = model.num_prefix_tokens
    patch = model.patch_embed.patch_size[0]
    model.norm_pre = PromptInsert(model.norm_pre, num_prompts, dim, at, patch)
    if deep:
        for i in range(1, len(model.blocks)):
            model.blocks[i] = DeepPromptBlock(model.blocks[i], num_prompts, dim, at, patch)
    # pooling (avg) and anything that skips prefix tokens must also skip the prompts; so must rotary
    # position embeddings (Eva), which are applied to the patch tokens after the prefix
    model.num_prefix_tokens = at + num_prompts
    for module in model.modules():
        if module is model or type(module).__name__ == "PatchDropout":   # patch dropout runs before the prompts
            continue
        if isinstance(getattr(module, "num_prefix_tokens", None), int):
            module.num_prefix_tokens = at + num_prompts
    return model
