"""``torch.compile`` for the training loops: the modes a config may name, their check, and the
compiled step.

``None`` trains eagerly; ``"default"`` compiles the step's forward and backward into fused kernels;
``"cudagraphs"`` (``mode="reduce-overhead"``) also replays each step's kernels as one CUDA graph,
for small batches where Python and kernel launches bound the step. A CUDA graph reuses its output
buffers, gradients included, at its next replay, so it cannot serve gradient accumulation.
"""

from __future__ import annotations

from torch import nn

__all__ = ["TRAIN_MODES", "check_train_compile", "compile_step"]

TRAIN_MODES = (None, "default", "cudagraphs")


def check_train_compile(mode: str | None, grad_accum: int) -> None:
    """Raise ``ValueError`` for an unknown ``mode``, or for ``"cudagraphs"`` with ``grad_accum > 1``."""
    if mode not in TRAIN_MODES:
        raise ValueError(f"compile={mode!r}: expected None, 'default' or 'cudagraphs'")
    if mode == "cudagraphs" and grad_accum > 1:
        raise ValueError(f"compile='cudagraphs' with grad_accum={grad_accum}: a CUDA graph's gradient buffers are "
                         "overwritten by its next replay, before the micro-batches' gradients are summed; use "
                         "grad_accum=1 (a larger batch_size where memory allows) or compile='default'")


def compile_step(module: nn.Module, mode: str) -> nn.Module:
    """``torch.compile(module)`` in ``mode`` ("default" or "cudagraphs"), after a reset of Dynamo's
    caches: runs of many methods in one process each get a fresh recompilation budget, instead of
    falling back to eager unseen once the limit is reached."""
    import torch

    torch._dynamo.reset()
    return torch.compile(module, mode="reduce-overhead" if mode == "cudagraphs" else None)
