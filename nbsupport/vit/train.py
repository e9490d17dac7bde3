"""Training and evaluation of an adapted classifier, resumable after an interruption.

The loop: AdamW on the trainable parameters only, linear warm-up then cosine decay (per step),
mixed precision on CUDA (bf16 where supported, else fp16 with a GradScaler), gradient clipping,
validation after every epoch with the best-Kappa checkpoint kept, and a held-out test of the best
model at the end. Checkpoints hold trainable tensors only (safetensors) plus JSON; the optimizer
state is flattened into safetensors too, so nothing is ever unpickled. Each epoch's weights, the
best weights so far, the optimizer and the counters are published together through one manifest
(:class:`~nbsupport.core.checkpoints.StepCheckpoints`): a kill at any moment leaves the previous
epoch's checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from nbsupport.core.checkpoints import CheckpointError, StepCheckpoints
from nbsupport.core.compiling import check_train_compile, compile_step
from nbsupport.core.distributed import Engine, engine, raw_optimizer, share
from nbsupport.vit.methods import (
    save_trainable,
    trainable_parameters,
    trainable_state_dict,
)
from nbsupport.vit.segmentation import segmentation_loss
from nbsupport.vit.metrics import (
    classification_metrics,
    multilabel_metrics,
    selection_metric,
)

__all__ = ["TrainConfig", "TrainResult", "train_classifier", "evaluate", "predict", "amp_dtype", "task_of",
           "evaluate_segmentation", "segmentation_image_counts"]


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_classifier` (defaults: the DVPT paper's recipe, shorter).

    Attributes:
        epochs: passes over the training set.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up length, then cosine decay to zero.
        batch_size: images per step.
        grad_clip: max gradient norm (None: no clipping).
        amp: use autocast on CUDA (ignored on CPU).
        seed: seeds the data order (per epoch) and dropout.
        num_workers: DataLoader workers.
        eval_batch_size: batch size for validation / test.
        compile: None, ``"default"`` (torch.compile) or ``"cudagraphs"`` (torch.compile with
            mode="reduce-overhead": CUDA graphs remove the kernel-launch overhead that dominates
            small PEFT modules at small batches; needs ``grad_accum=1``). A graph has one batch shape: under
            ``"cudagraphs"`` the first micro-batch's shape is compiled and any other (the epoch's
            last, partial batch) runs eagerly, so every mode trains on the same batches.
        grad_accum: split each batch into this many micro-batches, one backward pass each, one
            optimizer step per batch: the same optimisation in less memory (under Accelerate, no
            gradient exchange before the last micro-batch). Exact for losses that are means over
            images (cross-entropy, BCE); segmentation's soft Dice is computed per micro-batch.
    """

    epochs: int = 10
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    batch_size: int = 32
    grad_clip: float | None = 1.0
    amp: bool = True
    seed: int = 0
    num_workers: int = 0
    eval_batch_size: int = 64
    compile: str | None = None
    grad_accum: int = 1

    def key(self) -> dict[str, Any]:
        """The settings as they enter a run key: ``grad_accum`` (added later, and not changing the
        optimisation) only when set, so the checkpoints of earlier runs stay valid."""
        d = asdict(self)
        if d["grad_accum"] == 1:
            del d["grad_accum"]
        return d


@dataclass
class TrainResult:
    """What :func:`train_classifier` returns (and its run record holds)."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_val: dict[str, float]
    test: dict[str, float]
    step_time_s: float
    images_per_s: float
    peak_memory_bytes: int | None
    steps: int
    checkpoint: str | None
    resumed_from_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 otherwise (e.g. a T4), None on CPU."""
    if device.type != "cuda":
        return None
    from nbsupport.core.env import bf16_available

    return torch.bfloat16 if bf16_available() else torch.float16


def is_multi_label(dataset: Dataset) -> bool:
    """True when the dataset's targets are multi-hot vectors (findings) rather than class indices."""
    targets = getattr(dataset, "targets", None)
    if targets is None and hasattr(dataset, "datasets"):        # ConcatDataset
        return is_multi_label(dataset.datasets[0])
    if targets is None and hasattr(dataset, "dataset"):         # Subset
        return is_multi_label(dataset.dataset)
    if targets:
        return isinstance(targets[0], (list, tuple, np.ndarray))
    _, y = dataset[0]
    return isinstance(y, torch.Tensor) and y.ndim == 1 and y.dtype.is_floating_point


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 64,
            amp: bool = True, num_workers: int = 0, multi_label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[N, K]`` (softmax; sigmoid when ``multi_label``) and labels over a dataset."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    dtype = amp_dtype(device) if amp else None
    probs, labels = [], []
    for x, y in loader:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x.to(device, non_blocking=True))
        probs.append((logits.float().sigmoid() if multi_label else logits.float().softmax(-1)).cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def task_of(dataset: Dataset) -> str:
    """``"segmentation"`` when the dataset's targets are masks ``[K, H, W]``, else ``"classification"``."""
    inner = dataset
    while not hasattr(inner, "task") and (hasattr(inner, "dataset") or hasattr(inner, "datasets")):
        inner = inner.dataset if hasattr(inner, "dataset") else inner.datasets[0]
    if getattr(inner, "task", None) == "segmentation":
        return "segmentation"
    if getattr(inner, "task", None) is not None or getattr(dataset, "targets", None):
        return "classification"
    _, y = dataset[0]
    return "segmentation" if isinstance(y, torch.Tensor) and y.ndim == 3 else "classification"


@torch.no_grad()
def segmentation_image_counts(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 64,
                              amp: bool = True) -> np.ndarray:
    """Each image's true positives, false positives and false negatives per class at the 0.5
    threshold: ``int64 [N, K, 3]``, in the dataset's order (:func:`nbsupport.vit.segmentation.image_counts`)."""
    from nbsupport.vit.segmentation import image_counts

    model.eval()
    dtype = amp_dtype(device) if amp else None
    out = []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x.to(device, non_blocking=True))
        out.append(image_counts(logits.float() > 0, y.to(device) > 0.5))
    return np.concatenate(out)


def evaluate_segmentation(model: nn.Module, dataset: Dataset, device: torch.device, num_classes: int,
                          batch_size: int = 64, amp: bool = True, names: list[str] | None = None) -> dict[str, Any]:
    """Dice and IoU per class (pixels pooled over the dataset) and their means; 0.5 threshold."""
    from nbsupport.vit.segmentation import SegmentationCounts

    pooled = segmentation_image_counts(model, dataset, device, batch_size, amp).sum(0)     # [K, 3]
    if len(pooled) != num_classes:
        raise ValueError(f"the model predicts {len(pooled)} mask kinds, num_classes says {num_classes}")
    return SegmentationCounts.from_counts(pooled).metrics(names or getattr(dataset, "mask_kinds", None))


def evaluate(model: nn.Module, dataset: Dataset, device: torch.device, num_classes: int,
             batch_size: int = 64, amp: bool = True, multi_label: bool | None = None) -> dict[str, Any]:
    """Accuracy, Kappa, AUC and F1 of a model on a dataset (multi-label: AUC per finding, F1,
    accuracy; masks: Dice and IoU, see :func:`evaluate_segmentation`)."""
    if task_of(dataset) == "segmentation":
        return evaluate_segmentation(model, dataset, device, num_classes, batch_size, amp)
    multi = is_multi_label(dataset) if multi_label is None else multi_label
    probs, labels = predict(model, dataset, device, batch_size, amp, multi_label=multi)
    return multilabel_metrics(labels, probs) if multi else classification_metrics(labels, probs, num_classes)


def _batches(train_set: Dataset, cfg: TrainConfig, gen: torch.Generator, eng: Engine):
    """Yield ``(x, y, n_global, empty)``: this process's rows of each batch of one epoch.

    One process: the shuffled DataLoader the chapters teach. Several: the same global batches (a
    DataLoader over the indices with the same sampler and generator), each process loading its own
    rows (``empty``: a process without rows computes on row 0 with weight 0).
    """
    if eng.world == 1:
        for x, y in DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                               num_workers=cfg.num_workers):
            yield x, torch.as_tensor(y), x.shape[0], False
        return
    order = DataLoader(range(len(train_set)), batch_size=cfg.batch_size, shuffle=True, generator=gen)
    batches = [b.tolist() for b in order]
    mine = [eng.rows(len(b)) for b in batches]
    local = [b[lo:hi] for b, (lo, hi, _) in zip(batches, mine)]
    loader = DataLoader(train_set, batch_sampler=local, num_workers=cfg.num_workers)
    for (x, y), b, (_, _, empty) in zip(loader, batches, mine):
        yield x, torch.as_tensor(y), len(b), empty


def _micro_batches(x: torch.Tensor, y: torch.Tensor, n_global: int, empty: bool,
                   eng: Engine) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Split this process's rows into ``eng.accum`` micro-batches with their loss weights."""
    out = []
    for xm, ym in zip(torch.tensor_split(x, eng.accum), torch.tensor_split(y, eng.accum)):
        if len(xm) == 0:             # fewer rows than micro-batches: compute on one row, weight 0
            out.append((x[:1], y[:1], 0.0))
        else:
            out.append((xm, ym, share(len(xm), n_global, eng.world, eng.accum, empty)))
    return out


def steps_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    """Optimizer steps per epoch on ``n_train`` images: every batch is a step, the last one partial
    (in every compile mode)."""
    return math.ceil(n_train / cfg.batch_size)


def _lr_lambda(total_steps: int, warmup_steps: int):
    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return fn


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    test_set: Dataset | None,
    num_classes: int,
    cfg: TrainConfig = TrainConfig(),
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters; keep the best-on-validation weights (Kappa for
    single-label grading; macro AUC for multi-label findings, trained with a sigmoid/BCE loss;
    mean Dice for segmentation masks, trained with ``0.5 BCE + 0.5 Dice``). One loop for every task.

    Args:
        model: an adapted model (see :func:`nbsupport.vit.methods.adapt`; for masks a
            :class:`nbsupport.vit.segmentation.SegmentationModel`).
        train_set, val_set, test_set: datasets yielding ``(x [3,S,S], y)``: ``y`` a class index,
            a multi-hot vector ``[K]``, or masks ``[K, S, S]``.
        num_classes: number of classes.
        cfg: :class:`TrainConfig`.
        device: where to train.
        checkpoint_dir: folder for ``best.*`` and ``last*`` checkpoints; with ``resume`` an
            interrupted run continues from its last completed epoch.
        stop_after_epochs: stop (as an interruption would) after this many epochs of this call.

    Returns:
        :class:`TrainResult`; ``test`` holds the best model's test metrics (empty without a test set).
    """
    dtype = amp_dtype(torch.device(device)) if cfg.amp else None
    eng = engine(device, dtype, cfg.grad_accum)       # local, or Accelerate under a launcher
    device = eng.device
    progress = progress and eng.is_main
    model.to(device)
    segmentation = task_of(train_set) == "segmentation"
    multi = False if segmentation else is_multi_label(train_set)
    select = "dice" if segmentation else selection_metric(multi)
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameters: adapt it with nbsupport.vit.methods.adapt first")
    check_train_compile(cfg.compile, cfg.grad_accum)
    per_epoch = steps_per_epoch(len(train_set), cfg)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(per_epoch * cfg.epochs, max(1, int(round(cfg.warmup_epochs * per_epoch)))))
    if cfg.batch_size < eng.world:
        raise ValueError(f"batch_size={cfg.batch_size} is smaller than the {eng.world} processes: "
                         "the batch is the global one, split across processes; raise it")
    wrapped, step_opt = eng.wrap(model, opt)          # DDP + Accelerate's optimizer under a launcher
    step_model = compile_step(wrapped, cfg.compile) if cfg.compile else wrapped
    graph_shape: torch.Size | None = None      # "cudagraphs": the one input shape the graph serves

    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    checkpoints = StepCheckpoints(ckpt) if ckpt is not None else None
    start_epoch, best_score, best_epoch, history = 0, -math.inf, -1, []
    train_seconds, steps_done, images_done = 0.0, 0, 0
    best_val: dict[str, float] = {}
    best_state: dict[str, torch.Tensor] | None = None
    if checkpoints is not None and resume and checkpoints.exists("last"):
        tensors, state = checkpoints.load("last", "cpu")
        mine = trainable_state_dict(model)
        last = {k[5:]: v for k, v in tensors.items() if k.startswith("last.")}
        wrong = sorted(k for k in set(last) & set(mine) if last[k].shape != mine[k].shape)
        if set(last) != set(mine) or wrong:
            raise CheckpointError(f"{ckpt}: the checkpoint's tensors do not match this model's trainable ones "
                                  f"(missing {sorted(set(mine) - set(last))[:3]}, other shapes {wrong[:3]}); "
                                  f"delete {ckpt} to start afresh")
        named = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in last.items():
                named[k].copy_(v.to(named[k].device, named[k].dtype))
        best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
        checkpoints.load_optimizer("last", opt)
        sched.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        start_epoch, best_score = state["epoch"], state["best_score"]
        best_epoch, history, best_val = state["best_epoch"], state["history"], state["best_val"]
        train_seconds = state.get("train_seconds", 0.0)
        steps_done, images_done = state.get("steps", 0), state.get("images", 0)
        if start_epoch >= cfg.epochs and progress:
            print(f"reusing the finished run {ckpt.name} ({start_epoch} epochs, best val {select} "
                  f"{best_score:.3f} at epoch {best_epoch}); only the test set is evaluated again", file=sys.stderr)
        elif progress:
            print(f"resuming {ckpt.name} after epoch {start_epoch} (best val {select} {best_score:.3f})", file=sys.stderr)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    epochs_run = 0
    bar = tqdm(range(start_epoch, cfg.epochs), desc="epochs", disable=not progress, initial=start_epoch,
               total=cfg.epochs)
    for epoch in bar:
        model.train()
        # dropout: one stream per process (the same masks on every process would correlate the rows)
        torch.manual_seed(cfg.seed * 100_003 + epoch + 7_919 * eng.rank)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        losses = []
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        batches = _batches(train_set, cfg, gen, eng)
        for x, y, n_global, empty in tqdm(batches, desc=f"epoch {epoch + 1}", leave=False, disable=not progress,
                                          total=per_epoch):
            step_opt.zero_grad(set_to_none=True)
            batch_loss = torch.zeros((), device=device)
            for xm, ym, weight in _micro_batches(x, y, n_global, empty, eng):
                xm, ym = xm.to(device, non_blocking=True), ym.to(device)
                if cfg.compile == "cudagraphs":
                    graph_shape = graph_shape or xm.shape
                    torch.compiler.cudagraph_mark_step_begin()
                run = step_model if cfg.compile != "cudagraphs" or xm.shape == graph_shape else wrapped
                with eng.micro(wrapped):
                    with eng.autocast():
                        logits = run(xm).float()
                        if segmentation:
                            loss = segmentation_loss(logits, ym)
                        elif multi:
                            loss = F.binary_cross_entropy_with_logits(logits, ym.float())
                        else:
                            loss = F.cross_entropy(logits, ym)
                    eng.backward(loss * weight if weight != 1.0 else loss)
                # the global batch's mean loss: each micro-batch's mean, weighted by its share of the batch
                batch_loss += loss.detach() * (weight / (eng.world * eng.accum))
            eng.step(step_opt, params, cfg.grad_clip)
            sched.step()
            losses.append(eng.global_sum(batch_loss))
            steps_done += 1
            images_done += n_global
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - t0
        val = evaluate(model, val_set, device, num_classes, cfg.eval_batch_size, cfg.amp, multi)
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
               **{f"val_{k}": v for k, v in val.items() if not isinstance(v, dict)}}
        history.append(row)
        score = val[select] if val[select] == val[select] else -math.inf    # NaN (one class only) never wins
        if score > best_score:
            best_score, best_epoch, best_val = score, epoch + 1, val
            best_state = {k: v.clone() for k, v in trainable_state_dict(model).items()}
        if checkpoints is not None and eng.is_main:   # this epoch's weights, best weights, optimizer, counters: one commit
            tensors = {f"last.{k}": v for k, v in trainable_state_dict(model).items()}
            tensors.update({f"best.{k}": v for k, v in (best_state or {}).items()})
            sched_sd = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
            checkpoints.save("last", tensors, raw_optimizer(opt), {
                "epoch": epoch + 1, "best_score": best_score, "best_epoch": best_epoch, "history": history,
                "best_val": best_val, "train_seconds": train_seconds, "steps": steps_done, "images": images_done,
                "scheduler": sched_sd}, epoch + 1)
        eng.wait()
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", **{f"val_{select}": f"{val[select]:.3f}"})
        epochs_run += 1
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs and epoch + 1 < cfg.epochs:
            break

    finished = bool(history) and history[-1]["epoch"] == cfg.epochs
    test: dict[str, float] = {}
    if finished and best_state is not None:
        named = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in best_state.items():
                named[k].copy_(v.to(named[k].device))
        if ckpt is not None and eng.is_main and not (ckpt / "best.safetensors").exists():
            save_trainable(model, ckpt / "best.safetensors", {"epoch": best_epoch, "val": best_val})
    eng.wait()                                      # every process, whatever its branch
    if finished and test_set is not None:
        test = evaluate(model, test_set, device, num_classes, cfg.eval_batch_size, cfg.amp, multi)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    eng.release()
    return TrainResult(
        history=history, best_epoch=best_epoch, best_val=best_val, test=test,
        step_time_s=train_seconds / max(steps_done, 1), images_per_s=images_done / max(train_seconds, 1e-9),
        peak_memory_bytes=peak, steps=steps_done,
        checkpoint=str(ckpt / "best.safetensors") if ckpt is not None else None,
        resumed_from_epoch=start_epoch,
    )
