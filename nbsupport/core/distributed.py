"""One process or several: the plumbing the two training loops share (mixed precision, gradient
accumulation and synchronisation, and who writes).

A loop asks :func:`engine` for its :class:`Engine`. Started plainly (a notebook, ``python -m``),
the engine is local: one device, autocast with a GradScaler for fp16 on CUDA, exactly the loop the
chapters teach. Started by a launcher (``accelerate launch`` or ``torchrun``, which put
``LOCAL_RANK`` or ``ACCELERATE_MIXED_PRECISION`` in the environment), the engine runs on Hugging
Face Accelerate: it sets up the process group (NCCL on GPUs, gloo on CPUs), wraps the trained
module in ``DistributedDataParallel``, and does mixed precision, gradient accumulation (no gradient
exchange on the micro-batches before the last, ``accelerator.accumulate``) and clipping.

Data: every process draws the *global* batch order and the noise from the same seeded generators
and keeps its own contiguous rows of each batch (:func:`rows`). Each local loss is weighted by its
share of the global batch (:func:`share`), so that DDP's gradient mean is the gradient of the whole
batch's mean loss. N processes with a global batch B therefore compute what one process with batch
B computes (up to the order of float sums; exactly so for losses that are means over images, while
a batch-level loss such as segmentation's soft Dice is computed over each process's rows), and a
checkpoint written by N processes resumes under M.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator

import torch
from torch import nn

__all__ = ["Engine", "engine", "launched", "is_main_process", "process_device", "rows", "share", "raw_optimizer",
           "main_process_first"]


def launched() -> bool:
    """True inside ``accelerate launch`` or ``torchrun`` (any number of processes)."""
    env = os.environ
    return "LOCAL_RANK" in env or "ACCELERATE_MIXED_PRECISION" in env or int(env.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True on the process that writes files (rank 0; always true without a launcher)."""
    return int(os.environ.get("RANK", "0")) == 0


def process_device(device: torch.device | str) -> torch.device:
    """This process's GPU under a launcher (``cuda:LOCAL_RANK``); ``device`` otherwise."""
    device = torch.device(device)
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def rows(n_global: int, rank: int, world: int) -> tuple[int, int]:
    """This process's rows ``[lo, hi)`` of a global batch of ``n_global`` (contiguous, sizes within
    one of each other). A process left without rows (``n_global < world``) gets row 0 to compute
    with weight 0 (see :func:`share`): every process must run the backward pass for DDP to sync."""
    base, extra = divmod(n_global, world)
    lo = rank * base + min(rank, extra)
    hi = lo + base + (1 if rank < extra else 0)
    return (lo, hi) if hi > lo else (0, 1)


def share(n_local: int, n_global: int, world: int, accum: int, empty: bool = False) -> float:
    """Weight of a local mean loss over ``n_local`` rows so that, after the backward pass divides by
    ``accum`` and DDP averages over ``world`` processes, the gradients are those of the mean loss
    over the whole ``n_global``-row batch."""
    return 0.0 if empty else world * accum * n_local / n_global


@dataclass
class Engine:
    """How one optimisation step is carried out; see the module docstring.

    Attributes:
        device: this process's device.
        dtype: autocast dtype (None: fp32).
        accum: micro-batches per optimizer step.
        rank, world: this process's index and the number of processes.
        accelerator: the ``accelerate.Accelerator`` (None for the local engine).
    """

    device: torch.device
    dtype: torch.dtype | None
    accum: int = 1
    rank: int = 0
    world: int = 1
    accelerator: Any = None

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.accelerator is None and self.dtype == torch.float16)
        self._prepared: list[nn.Module] = []

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, n_global: int) -> tuple[int, int, bool]:
        """``(lo, hi, empty)``: this process's rows of a global batch (see :func:`rows`)."""
        lo, hi = rows(n_global, self.rank, self.world)
        return lo, hi, n_global < self.world and self.rank >= n_global

    def wrap(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The module to call for the training forward pass (DDP-wrapped under Accelerate) and the
        optimizer to step (Accelerate's wrapper handles the fp16 loss scale and accumulation)."""
        if self.accelerator is None:
            return module, optimizer
        self._prepared.append(module)
        return self.accelerator.prepare(module, optimizer)

    def autocast(self) -> ContextManager:
        if self.accelerator is not None:
            return self.accelerator.autocast()
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def micro(self, module: nn.Module) -> ContextManager:
        """Context of one micro-batch: under Accelerate, no gradient exchange before the last one."""
        return self.accelerator.accumulate(module) if self.accelerator is not None else nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of ``loss / accum`` (scaled for fp16)."""
        if self.accelerator is not None:
            self.accelerator.backward(loss)            # divides by gradient_accumulation_steps itself
        else:
            self.scaler.scale(loss / self.accum).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], max_norm: float | None) -> None:
        """Clip (after unscaling) and step the optimizer."""
        if self.accelerator is not None:
            if max_norm is not None:
                self.accelerator.clip_grad_norm_(params, max_norm)
            optimizer.step()
            return
        if max_norm is not None:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.scaler.step(optimizer)
        self.scaler.update()

    def global_sum(self, value: torch.Tensor) -> float:
        """Sum of a scalar over the processes (a plain ``.item()`` for one process); once per step."""
        if self.accelerator is None:
            return float(value.item())
        return float(self.accelerator.reduce(value.detach().float().reshape(1), "sum").item())

    def release(self) -> None:
        """Drop Accelerate's references to the prepared module and optimizer (a chapter or a seed
        loop trains several models in one process; without this each stays in memory)."""
        if self.accelerator is not None:
            self.accelerator.free_memory()
            for module in self._prepared:       # prepare() wrapped forward in its autocast: undo it
                if hasattr(module, "_original_forward"):
                    module.forward = module._original_forward
                    del module._original_forward
            self._prepared.clear()

    def wait(self) -> None:
        """Barrier: the other processes wait until the main one has written its files."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def raw_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's wrapper (what checkpoints save and load)."""
    return getattr(optimizer, "optimizer", optimizer)


def engine(device: torch.device | str, dtype: torch.dtype | None, accum: int = 1,
           distributed: bool | None = None) -> Engine:
    """The local engine, or under a launcher (``distributed=None`` asks :func:`launched`) the
    Accelerate engine with this process's device; ``dtype`` picks Accelerate's mixed precision."""
    device = torch.device(device)
    if not (launched() if distributed is None else distributed):
        return Engine(device, dtype, accum)
    try:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs, DistributedType, GradientAccumulationPlugin
    except ImportError as exc:  # pragma: no cover - accelerate is in the [sd] extra
        raise ImportError("a launched (multi-process) run needs Hugging Face Accelerate: pip install accelerate") from exc
    precision = {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    state = AcceleratorState._shared_state
    earlier = state.get("_mixed_precision", precision) if state else precision
    if str(getattr(earlier, "value", earlier)) != precision:
        # an earlier run of this process used another precision; Accelerate's state is a singleton
        # (the process group, kept in PartialState, survives the reset)
        AcceleratorState._reset_state()
    # the plugin (not gradient_accumulation_steps=) so that a launcher's --gradient_accumulation_steps
    # cannot silently override the count the loss weights assume
    acc = Accelerator(mixed_precision=precision, cpu=device.type == "cpu",
                      gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accum),
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    if acc.gradient_accumulation_steps != accum:
        raise RuntimeError(f"Accelerate accumulates over {acc.gradient_accumulation_steps} micro-batches, the "
                           f"training config over {accum}: remove the launcher's gradient accumulation setting")
    allowed = (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
    if acc.distributed_type not in allowed:
        raise RuntimeError(f"the book's training loops run on DDP (one process per GPU); the launcher asked for "
                           f"{acc.distributed_type.value}: use a plain multi-GPU config (configs/accelerate-4gpu.yaml)")
    return Engine(acc.device, dtype, accum, acc.process_index, acc.num_processes, acc)


@contextmanager
def main_process_first(device: torch.device | str = "cpu") -> Iterator[None]:
    """Under a launcher, let the main process run the block first (downloads, procedural data
    written to the cache) while the others wait, then run it on the others; a no-op otherwise."""
    if not launched():
        yield
        return
    from accelerate import PartialState

    with PartialState(cpu=torch.device(device).type == "cpu").main_process_first():
        yield
