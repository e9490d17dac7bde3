"""Pretraining the book's pocket foundation ViT: dense parsing of the source domain's eyes.

The recipe (one objective, chosen by measured frozen-feature quality on the target; see the
shipped record and chapter 01):

- **architecture**: :func:`~nbsupport.vit.backbones.pocket_architecture`, a timm
  ``VisionTransformer`` (patch 8, width 192, depth 6 at 64 px), so every method of the registry
  applies unchanged;
- **corpus**: :mod:`nbsupport.data.corpus`, procedural eyes of the source cameras only;
- **objective**: for every patch token, which findings lie in that patch (multi-label, binary
  cross-entropy over :data:`~nbsupport.data.corpus.PARSE_KINDS`); for the class token, what an eye
  shows that is *not* diabetic retinopathy (:data:`GLOBAL_TARGETS`: which eye, drusen, pigment
  clumps). The supervision is dense (64 targets per image), which is what lets a ViT learn
  something on a CPU at all: self-supervised objectives measured 15 CPU-minutes in made features
  worse than random (SimCLR's blur and colour jitter erase one-pixel lesions; MAE spends its
  capacity on background). The grade is never a target: adaptation has to teach the model how
  to summarise lesions into a grade;
- **augmentation**: flips (targets flip with the image) and mild brightness/contrast jitter, which
  keep one-pixel lesions intact;
- **optimiser**: AdamW, linear warm-up then cosine decay, gradient clipping at 1.

Training is resumable (a checkpoint every ``checkpoint_every`` steps, written atomically) and can
stop after ``max_minutes`` to continue later; a linear probe on the target task every
``probe_every`` steps shows whether features improve. :func:`export_weights` writes the backbone
(fp16 safetensors) and its record, the files that ship as ``pocket-fundus-vit``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from ..core.checkpoints import StepCheckpoints, run_key, write_json
from ..data.corpus import PARSE_KINDS, CorpusSpec, load_corpus
from ..core.paths import cache_dir
from .backbones import POCKET_ARCH, POCKET_MEAN, POCKET_STD, pocket_architecture, sha256_of, weights_dir
from .probe import target_images, target_probe

__all__ = ["PretrainConfig", "ParseHead", "GLOBAL_TARGETS", "global_targets", "pretrain", "export_weights", "shipped_record"]


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a pretraining run (its checkpoints live under its key).

    Attributes:
        corpus: the source-domain corpus.
        steps: optimisation steps (the schedule's length: a run stopped early resumes on it).
        batch_size: images per step.
        lr: peak learning rate (AdamW); weight_decay: its decoupled weight decay.
        warmup_steps: linear warm-up.
        seed: initialisation and data order.
        checkpoint_every, probe_every, log_every: in steps.
        probe_train, probe_test: target images of the linear probe.
    """

    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 300
    seed: int = 0
    checkpoint_every: int = 100
    probe_every: int = 1000
    log_every: int = 25
    probe_train: int = 400
    probe_test: int = 200

    @classmethod
    def smoke(cls) -> "PretrainConfig":
        """Seconds on a CPU: proves the loop runs; teaches nothing."""
        return cls(corpus=CorpusSpec(n=64), steps=6, batch_size=16, warmup_steps=2, checkpoint_every=3,
                   probe_every=6, log_every=2, probe_train=40, probe_test=20)

    @property
    def key(self) -> str:
        d = asdict(self)
        for k in ("checkpoint_every", "probe_every", "log_every", "probe_train", "probe_test"):
            d.pop(k)
        return run_key("pocket-pretrain-v2", d)


GLOBAL_TARGETS: tuple[str, ...] = ("right_eye", "drusen", "pigment_clumps")


class ParseHead(nn.Module):
    """Heads of the parsing objective on the final (normed) tokens ``[B, 1 + N, D]``.

    - patches: per-patch multi-label logits ``[B, K, g, g]`` (K = ``len(PARSE_KINDS)``);
    - class token: image-level logits ``[B, len(GLOBAL_TARGETS)]`` for what is *not* diabetic
      retinopathy (which eye; drusen; pigment clumps), so the class token learns to summarise an
      eye without ever being shown the grade or the DR lesions.
    """

    def __init__(self, dim: int, kinds: int = len(PARSE_KINDS)) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, kinds)
        self.image = nn.Linear(dim, len(GLOBAL_TARGETS))

    def forward(self, tokens: torch.Tensor, prefix: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        patches = tokens[:, prefix:]
        b, n, _ = patches.shape
        g = int(round(n**0.5))
        return self.linear(patches).transpose(1, 2).reshape(b, -1, g, g), self.image(tokens[:, 0])


def global_targets(y: torch.Tensor) -> torch.Tensor:
    """Image-level targets ``[B, 3]`` from (augmented) parsing targets ``[B, K, g, g]``.

    Right eye: the optic disc lies in the right half (the disc is on the nasal side).
    """
    disc = y[:, PARSE_KINDS.index("optic_disc")]                     # [B, g, g]
    g = disc.shape[-1]
    cols = torch.arange(g, dtype=y.dtype, device=y.device)
    x = (disc.sum(1) * cols).sum(1) / disc.sum((1, 2)).clamp_min(1)
    right = (x > (g - 1) / 2).to(y.dtype)
    return torch.stack([right, y[:, PARSE_KINDS.index("drusen")].amax((1, 2)),
                        y[:, PARSE_KINDS.index("pigment_clumps")].amax((1, 2))], 1)


def _augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips (targets follow) and mild brightness/contrast jitter; ``x`` in [0, 1] ``[B, 3, H, W]``."""
    b = x.shape[0]
    h = torch.rand(b, generator=gen) < 0.5
    v = torch.rand(b, generator=gen) < 0.5
    x = torch.where(h.view(-1, 1, 1, 1), x.flip(-1), x)
    y = torch.where(h.view(-1, 1, 1, 1), y.flip(-1), y)
    x = torch.where(v.view(-1, 1, 1, 1), x.flip(-2), x)
    y = torch.where(v.view(-1, 1, 1, 1), y.flip(-2), y)
    gain = 1.0 + 0.1 * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    shift = 0.03 * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    return (x * gain + shift).clamp(0, 1), y


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + float(np.cos(np.pi * min(progress, 1.0))))


def shipped_record(name: str = "pocket-fundus-vit") -> dict[str, Any]:
    """The record that ships beside a pocket model's weights (recipe, device, time, curves, probes)."""
    path = weights_dir() / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no record of {name!r} in this installation; reinstall nbsupport from "
                                "a complete checkout, or reproduce it with `python -m nbsupport pretrain --export`")
    return json.loads(path.read_text(encoding="utf-8"))


def pretrain(cfg: PretrainConfig, out_dir: str | Path | None = None, device: str | torch.device | None = None,
             max_minutes: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Pretrain (or resume) the pocket ViT; returns the run state (loss curve, probes, timing).

    Checkpoints go to ``out_dir/<cfg.key>/`` (default ``<cache>/pocket-pretrain``); a run with the
    same config resumes from the last one. Stops after ``cfg.steps`` or once ``max_minutes`` have
    passed in this call (then call again).
    """
    from tqdm.auto import tqdm

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run_dir = Path(out_dir if out_dir is not None else cache_dir() / "pocket-pretrain") / cfg.key
    run_dir.mkdir(parents=True, exist_ok=True)
    images, targets = load_corpus(cfg.corpus, progress=progress)
    n = len(images)
    if n < cfg.batch_size:
        raise ValueError(f"corpus of {n} images is smaller than batch_size={cfg.batch_size}")
    steps_per_epoch = n // cfg.batch_size

    torch.manual_seed(cfg.seed)
    model = pocket_architecture(num_classes=0).to(device)
    head = ParseHead(POCKET_ARCH["embed_dim"]).to(device)
    params = list(model.parameters()) + list(head.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    probe_data = (*target_images("train", cfg.probe_train, cfg.corpus.image_size),
                  *target_images("test", cfg.probe_test, cfg.corpus.image_size))
    state: dict[str, Any] = {"step": 0, "elapsed_s": 0.0, "loss_curve": [], "probes": [],
                             "config": asdict(cfg), "key": cfg.key}
    checkpoints = StepCheckpoints(run_dir)
    if checkpoints.exists("last"):
        tensors, state = checkpoints.load("last", device, opt)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    elif not state["probes"]:
        state["probes"].append({"step": 0, **target_probe(model, POCKET_MEAN, POCKET_STD, data=probe_data)})

    def save() -> None:
        """Weights, optimizer and counters of one step, published together (StepCheckpoints)."""
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
        checkpoints.save("last", tensors, opt, state, state["step"])

    mean = torch.tensor(POCKET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(POCKET_STD, device=device).view(1, 3, 1, 1)
    t_call = time.perf_counter()
    t_last = t_call
    running: list[float] = []
    bar = tqdm(total=cfg.steps, initial=state["step"], desc="pretraining", unit="step", disable=not progress)
    model.train()
    while state["step"] < cfg.steps:
        step = state["step"]
        epoch, b = divmod(step, steps_per_epoch)
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        idx = np.sort(perm[b * cfg.batch_size:(b + 1) * cfg.batch_size])
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255.0
        y = torch.from_numpy(targets[idx]).float()
        x, y = _augment(x, y, gen)
        x, y = ((x.to(device) - mean) / std), y.to(device)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, cfg)
        patch_logits, image_logits = head(model.forward_features(x), model.num_prefix_tokens)
        bce = nn.functional.binary_cross_entropy_with_logits
        loss = bce(patch_logits, y) + bce(image_logits, global_targets(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running.append(loss.item())
        state["step"] = step + 1
        now = time.perf_counter()
        state["elapsed_s"] += now - t_last
        t_last = now
        bar.update()
        if state["step"] % cfg.log_every == 0:
            state["loss_curve"].append([state["step"], float(np.mean(running))])
            bar.set_postfix(loss=f"{np.mean(running):.4f}")
            running = []
        if state["step"] % cfg.probe_every == 0 or state["step"] == cfg.steps:
            probe = target_probe(model, POCKET_MEAN, POCKET_STD, data=probe_data)
            state["probes"].append({"step": state["step"], **probe})
            bar.write(f"step {state['step']}: target linear probe QWK {probe}", file=sys.stderr)
            t_last = time.perf_counter()
        if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.steps:
            save()
        if max_minutes is not None and time.perf_counter() - t_call > 60 * max_minutes:
            save()
            break
    bar.close()
    state["device"] = str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)
    state["done"] = state["step"] >= cfg.steps
    return state


def export_weights(run_dir: str | Path, out: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a finished run's backbone as fp16 safetensors at ``out`` and its record at ``out.json``.

    The record holds the sha256 of the weights file, the recipe, the loss curve, the probes and
    whatever ``extra`` adds (device, wall time, random-init baselines). Returns the record.
    """
    run_dir, out = Path(run_dir), Path(out)
    tensors, state = StepCheckpoints(run_dir).load("last")
    backbone = {k[6:]: v.half().contiguous() for k, v in tensors.items() if k.startswith("model.")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    safetensors.torch.save_file(backbone, str(tmp), metadata={"format": "pt", "arch": json.dumps(POCKET_ARCH)})
    tmp.replace(out)
    record = {"name": out.stem, "sha256": sha256_of(out), "bytes": out.stat().st_size, "dtype": "float16",
              "architecture": POCKET_ARCH, "normalisation": {"mean": POCKET_MEAN, "std": POCKET_STD},
              "objective": "per-patch parsing of findings + image-level non-DR attributes (multi-label BCE)",
              "parse_kinds": list(PARSE_KINDS), "global_targets": list(GLOBAL_TARGETS),
              **state, **(extra or {})}
    write_json(out.with_suffix(".json"), record, indent=1)
    return record
