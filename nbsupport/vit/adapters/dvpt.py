"""DVPT: Dynamic Visual Prompt Tuning (He et al., Neural Networks 2025; arXiv:2307.09787).

The paper's method, as this book builds it:

1. a lightweight **bottleneck** transforms the frozen features into a small, domain-specific
   space: ``H = act(down(X))``, ``X [B, N, D] -> H [B, N, r]``;
2. ``P`` learnable **prompts are queries** of a cross-attention over ``H``: each sample gets its
   own prompt features ``F = softmax(Q K(H)^T / sqrt(d)) V(H)``, ``F [B, P, r]``;
3. the result is **projected back** to ``D`` and **injected through a zero-initialised gate**, so
   the adapted model equals the frozen one at initialisation;
4. one module can be **shared** by a group of consecutive layers.

Step 3 needs a choice the paper leaves open: how ``P`` prompt features reach ``N`` tokens.
``inject="tokens"`` (default) lets every token read the dynamic prompts with a second, cheap
cross-attention (tokens as queries, prompt features as keys/values: the inducing-point pattern
of the Set Transformer), so each token gets a sample-specific update ``[B, N, D]``.
``inject="cls"`` adds the mean prompt feature to the class token only.
``cross_attention=False`` is the ablation without prompts: a gated bottleneck adapter
``gate * up(act(down(X)))``: the adapter part of what the public CLIP code trains (that code also
trains 50 input prompts with their position embeddings, which this ablation leaves out).

Where it sits: ``position="mlp"`` runs the module in parallel to each block's MLP on the same
normalised input ``LN(x)`` (the official code's adapter, like AdaptFormer's official code, reads the
un-normalised ``x`` instead); ``position="block"`` adds it after the block.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nbsupport.vit.adapters.common import ParallelBranch, SharedRef

__all__ = ["DVPTConfig", "DVPTModule", "PostBlockBranch", "apply_dvpt", "dvpt_parameter_count"]


@dataclass(frozen=True)
class DVPTConfig:
    """DVPT's knobs.

    Attributes:
        bottleneck: width ``r`` of the bottleneck space.
        num_prompts: number of learnable prompts ``P`` (queries).
        heads: attention heads in the bottleneck space (``r`` must divide by it).
        group_size: consecutive layers served by one shared module (1 = one per layer,
            depth = one for the whole network).
        cross_attention: False gives the no-cross-attention ablation (gated bottleneck only).
        inject: ``"tokens"`` (every token reads the dynamic prompts) or ``"cls"``.
        position: ``"mlp"`` (parallel to the block's MLP) or ``"block"`` (after the block).
    """

    bottleneck: int = 56
    num_prompts: int = 10
    heads: int = 7
    group_size: int = 3
    cross_attention: bool = True
    inject: str = "tokens"
    position: str = "mlp"

    def __post_init__(self) -> None:
        if self.bottleneck % self.heads:
            raise ValueError(f"bottleneck={self.bottleneck} must be divisible by heads={self.heads}")
        if self.inject not in ("tokens", "cls"):
            raise ValueError(f"inject={self.inject!r}: expected 'tokens' or 'cls'")
        if self.position not in ("mlp", "block"):
            raise ValueError(f"position={self.position!r}: expected 'mlp' or 'block'")
        if self.group_size < 1 or self.num_prompts < 1 or self.bottleneck < 1:
            raise ValueError("group_size, num_prompts and bottleneck must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DVPTModule(nn.Module):
    """One DVPT module: ``X [B, N, D] -> gate * up(...) [B, N, D]`` (zero at initialisation).

    Args:
        dim: token width ``D`` of the backbone.
        cfg: :class:`DVPTConfig`.
    """

    def __init__(self, dim: int, cfg: DVPTConfig = DVPTConfig()) -> None:
        super().__init__()
        r, p = cfg.bottleneck, cfg.num_prompts
        self.cfg = cfg
        self.heads = cfg.heads
        self.down = nn.Linear(dim, r)                      # bottleneck: D -> r
        self.act = nn.GELU()
        if cfg.cross_attention:
            self.prompts = nn.Parameter(torch.randn(p, r) * r**-0.5)   # [P, r] learnable queries
            self.q_prompt = nn.Linear(r, r)                # prompts -> queries
            # transformed features -> keys and values for the prompts, plus (inject="tokens")
            # the tokens' own queries for reading the prompts back: one fused projection
            self.proj_feat = nn.Linear(r, (3 if cfg.inject == "tokens" else 2) * r)
            if cfg.inject == "tokens":
                self.kv_prompt = nn.Linear(r, 2 * r)       # dynamic prompts -> keys, values
        self.up = nn.Linear(r, dim)                        # back to D
        self.gate = nn.Parameter(torch.zeros(()))          # zero-initialised: starts frozen
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape                                   # [B, n, r] -> [B, h, n, r/h]
        return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def _merge(self, t: torch.Tensor) -> torch.Tensor:
        b, h, n, c = t.shape                                # [B, h, n, r/h] -> [B, n, r]
        return t.transpose(1, 2).reshape(b, n, h * c)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Bottleneck ``h [B, N, r]`` and its projections: keys, values (and token queries)."""
        h = self.act(self.down(x))                                          # [B, N, r]
        return h, *self.proj_feat(h).chunk(3 if self.cfg.inject == "tokens" else 2, dim=-1)

    def _prompt_queries(self, batch: int) -> torch.Tensor:
        q = self.q_prompt(self.prompts)                                     # [P, r], once per call
        return self._split(q.unsqueeze(0).expand(batch, -1, -1))           # [B, h, P, r/h]

    def prompt_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention of each prompt over the tokens, averaged over heads: ``[B, P, N]``."""
        _, k, *_ = self._features(x)
        q = self._prompt_queries(x.shape[0])
        logits = q @ self._split(k).transpose(-2, -1) / math.sqrt(q.shape[-1])
        return logits.softmax(-1).mean(1)

    def dynamic_prompts(self, x: torch.Tensor) -> torch.Tensor:
        """Sample-specific prompt features ``[B, P, r]`` of input tokens ``x [B, N, D]``."""
        _, k, v, *_ = self._features(x)
        out = F.scaled_dot_product_attention(self._prompt_queries(x.shape[0]), self._split(k), self._split(v))
        return self._merge(out)

    def _gated_up(self, t: torch.Tensor) -> torch.Tensor:
        # gate folded into the (tiny) up-projection weights: no extra pass over [B, N, D]
        return F.linear(t, self.up.weight * self.gate, self.up.bias * self.gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.cross_attention:
            return self._gated_up(self.act(self.down(x)))                   # ablation: adapter only
        h, k, v, *q_tok = self._features(x)                                 # [B, N, r] each
        prompts = self._merge(F.scaled_dot_product_attention(
            self._prompt_queries(x.shape[0]), self._split(k), self._split(v)))   # [B, P, r]
        if self.cfg.inject == "tokens":
            pk, pv = self.kv_prompt(prompts).chunk(2, dim=-1)               # [B, P, r] each
            out = self._merge(F.scaled_dot_product_attention(
                self._split(q_tok[0]), self._split(pk), self._split(pv)))  # [B, N, r]
            return self._gated_up(out)                                      # [B, N, D]
        cls = self._gated_up(prompts.mean(1, keepdim=True))                 # [B, 1, D]
        return torch.cat([cls, torch.zeros_like(x[:, 1:])], dim=1)          # [B, N, D]


class PostBlockBranch(nn.Module):
    """``y = block(x); y + branch(y)``: a DVPT module after a whole block."""

    def __init__(self, block: nn.Module, branch: nn.Module) -> None:
        super().__init__()
        self.block = block
        self._shared = SharedRef(branch)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.block(x, *args, **kwargs)
        return y + self._shared(y)


def apply_dvpt(model: nn.Module, cfg: DVPTConfig = DVPTConfig()) -> nn.Module:
    """Add DVPT to a timm VisionTransformer in place.

    ``ceil(depth / group_size)`` modules are registered once in ``model.dvpt``; layer ``i`` uses
    module ``i // group_size``.
    """
    depth = len(model.blocks)
    n_modules = math.ceil(depth / cfg.group_size)
    model.dvpt = nn.ModuleList(DVPTModule(model.embed_dim, cfg) for _ in range(n_modules))
    for i in range(depth):
        module = model.dvpt[i // cfg.group_size]
        if cfg.position == "mlp":
            model.blocks[i].mlp = ParallelBranch(model.blocks[i].mlp, module, shared=True)
        else:
            model.blocks[i] = PostBlockBranch(model.blocks[i], module)
    return model


def dvpt_parameter_count(dim: int, depth: int, cfg: DVPTConfig = DVPTConfig()) -> int:
    """Closed-form parameter count of DVPT on a ``depth``-layer, ``dim``-wide ViT."""
    r, p = cfg.bottleneck, cfg.num_prompts
    per = (dim * r + r) + (r * dim + dim) + 1            # down, up, gate
    if cfg.cross_attention:
        per += p * r + (r * r + r) + (r * 2 * r + 2 * r)  # prompts, q_prompt, keys/values of features
        if cfg.inject == "tokens":
            per += (r * r + r) + (r * 2 * r + 2 * r)      # token queries, kv_prompt
    return per * math.ceil(depth / cfg.group_size)
