"""Wrappers that add a branch to an existing module without copying it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ParallelBranch", "SharedRef"]


class SharedRef:
    """Holds a module *without* registering it as a child.

    A module shared by several layers is registered once (e.g. in ``model.dvpt``); each layer keeps
    a ``SharedRef`` to it, so ``state_dict()`` and ``parameters()`` list every shared tensor once.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class ParallelBranch(nn.Module):
    """``y = main(x) + branch(x)``: a branch in parallel to a frozen module (e.g. a ViT MLP).

    Shapes: ``x [B, N, D] -> y [B, N, D]``.

    Args:
        main: the frozen module (kept as ``self.main``; its parameter names gain ``.main``).
        branch: the trainable branch, registered as ``self.branch`` unless ``shared`` is True.
        shared: hold the branch by reference (it is registered elsewhere).
    """

    def __init__(self, main: nn.Module, branch: nn.Module, shared: bool = False) -> None:
        super().__init__()
        self.main = main
        if shared:
            self._shared = SharedRef(branch)
        else:
            self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self._shared if hasattr(self, "_shared") else self.branch
        return self.main(x) + branch(x)
