"""Fine-tune Stable Diffusion with any registered method, at any resolution, resumably.

DDPM MSE on VAE latents, with the target the model's scheduler names (noise for SD 1.x, velocity
for v-prediction models such as SD 2.x at 768 px: :func:`training_target`); when the VAE trains, a pixel reconstruction loss is
added (as in the study). Memory savers, chosen by the config: mixed precision (fp16 autocast with a
GradScaler on a T4, bf16 where supported) with trainable parameters kept in fp32 and frozen models
cast to half; gradient checkpointing; 8-bit AdamW when bitsandbytes works (else AdamW, with a
notice); SDPA attention (diffusers' default); VAE latents and text embeddings computed once and
cached when those models are frozen; gradient accumulation. Checkpoints hold trainable tensors only
(safetensors) plus the optimizer state (also safetensors), published together with the counters
through one manifest (:class:`~nbsupport.core.checkpoints.StepCheckpoints`), so a kill at any moment
leaves one consistent checkpoint; an interrupted run resumes from it with the same data order and
noise.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from nbsupport.core.checkpoints import CheckpointError, StepCheckpoints
from nbsupport.core.compiling import check_train_compile, compile_step
from nbsupport.core.distributed import engine, raw_optimizer, share
from nbsupport.sd.methods import SD_METHODS, prepare, save_trainable, trainable_state
from nbsupport.sd.models import SDComponents

__all__ = ["SDTrainConfig", "SDTrainResult", "train_sd", "encode_prompts", "prompt_ids", "make_optimizer", "denoising_loss",
           "run_sd_method", "training_target"]


@dataclass
class SDTrainConfig:
    """Settings of :func:`train_sd`.

    Attributes:
        steps: optimizer steps.
        batch_size: images per micro-batch.
        grad_accum: micro-batches per optimizer step.
        resolution: training resolution in pixels (the dataset is expected at this size).
        mixed_precision: ``"fp16"`` (T4: autocast + GradScaler), ``"bf16"`` or None (fp32).
        gradient_checkpointing: recompute activations in the backward pass.
        use_8bit_adam: bitsandbytes' AdamW8bit when importable on CUDA (falls back with a notice).
        weight_decay: AdamW weight decay (the study: 1e-2).
        lr: override every group's learning rate (None: the study's per-component rates).
        lr_scale: factor on the per-component rates (a profile's ``sd_lr_scale``; ignored with ``lr``).
        cache: cache VAE latents / text embeddings when the VAE / text encoder is frozen.
        checkpoint_every: steps between checkpoints (and always at the end).
        max_grad_norm: gradient clipping (None: off).
        seed: data order and noise.
        compile: None (eager), ``"default"`` (``torch.compile`` of the denoising step: the forward and
            backward of every trained model become fused kernels) or ``"cudagraphs"`` (the same with
            ``mode="reduce-overhead"``: CUDA graphs replay each step's kernels with one launch, for
            small batches where Python and kernel launches bound the step; needs ``grad_accum=1``,
            since a graph's gradient buffers are reused by its next replay). The loss is the eager
            one up to float rounding; the first steps pay the compilation; the first micro-batch's
            shape is compiled and other shapes (an epoch's last, partial micro-batch) run eagerly.
            Each compiled run starts from a reset of Dynamo's caches (``torch._dynamo.reset()``), so
            that runs of many methods in one process never hit its recompilation limit and fall
            back to eager unseen. Not part of a run's key (it changes speed, not the result).
    """

    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 4
    resolution: int = 512
    mixed_precision: str | None = "fp16"
    gradient_checkpointing: bool = True
    use_8bit_adam: bool = True
    weight_decay: float = 1e-2
    lr: float | None = None
    lr_scale: float = 1.0
    cache: bool = True
    checkpoint_every: int = 250
    max_grad_norm: float | None = 1.0
    seed: int = 0
    compile: str | None = None

    def __post_init__(self) -> None:
        check_train_compile(self.compile, self.grad_accum)

    def run_settings(self) -> dict[str, Any]:
        """The settings that define a run's result (checkpoint keys): all but ``compile``."""
        return {k: v for k, v in asdict(self).items() if k != "compile"}


@dataclass
class SDTrainResult:
    """What :func:`train_sd` returns."""

    losses: list[float]
    steps: int
    step_time_s: float
    samples_per_s: float
    peak_memory_bytes: int | None
    trainable: int
    checkpoint: str | None
    resumed_from_step: int
    notices: list[str] = field(default_factory=list)
    cached: dict[str, bool] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_ids(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Token ids ``[B, 77]`` of ``prompts``, padded and truncated to the tokenizer's length (as SD)."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_prompts(components: SDComponents, prompts: list[str], device: torch.device) -> torch.Tensor:
    """Text-encoder hidden states ``[B, 77, C]`` for a list of prompts."""
    return components.text_encoder(prompt_ids(components.tokenizer, prompts).to(device))[0]


def make_optimizer(groups: list[dict[str, Any]], cfg: SDTrainConfig, device: torch.device) -> tuple[torch.optim.Optimizer, list[str]]:
    """AdamW8bit (bitsandbytes) when asked and usable, else torch AdamW; notices say which."""
    notices: list[str] = []
    clean = [{"params": g["params"], "lr": cfg.lr or g["lr"] * cfg.lr_scale, "name": g["name"]} for g in groups]
    if cfg.use_8bit_adam and device.type == "cuda":
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]

            return bnb.optim.AdamW8bit(clean, weight_decay=cfg.weight_decay), ["optimizer: AdamW8bit (bitsandbytes)"]
        except Exception as exc:  # ImportError, or a CUDA setup error inside bitsandbytes
            notices.append(f"8-bit AdamW unavailable ({exc.__class__.__name__}); using torch AdamW "
                           "(optimizer state takes 2x fp32 of the trainable parameters)")
    elif cfg.use_8bit_adam:
        notices.append("8-bit AdamW needs CUDA; using torch AdamW")
    return torch.optim.AdamW(clean, weight_decay=cfg.weight_decay, fused=device.type == "cuda"), notices


def training_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict, by the scheduler's ``prediction_type``: the noise
    (``epsilon``, SD 1.x), the velocity ``sqrt(abar) eps - sqrt(1 - abar) z0`` (``v_prediction``,
    SD 2.x at 768 px), or the clean latent (``sample``)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    if kind == "sample":
        return latents
    raise ValueError(f"prediction_type={kind!r}: expected 'epsilon', 'v_prediction' or 'sample'")


def _autocast_dtype(cfg: SDTrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.mixed_precision is None:
        return None
    from nbsupport.core.env import bf16_available

    if cfg.mixed_precision == "bf16" and bf16_available():
        return torch.bfloat16
    return torch.float16


class DenoisingStep(nn.Module):
    """One micro-batch's training loss as a module's forward pass, so that DistributedDataParallel
    sees one forward over every trained model (UNet, text encoder, VAE) per micro-batch.

    The batch dict holds either cached latent distributions (``mean``, ``std``: ``[B, C, h, w]``)
    or ``px`` ``[B, 3, H, W]`` in [-1, 1]; either cached text embeddings ``emb`` ``[B, 77, D]`` or
    token ``ids`` ``[B, 77]``; and the micro-batch's random draws: ``z_eps`` (latent sampling),
    ``noise`` ``[B, C, h, w]`` and timesteps ``t`` ``[B]``.
    """

    def __init__(self, components: SDComponents, trains_vae: bool, half: torch.dtype, autocast: bool) -> None:
        super().__init__()
        self.unet, self.vae, self.text_encoder = components.unet, components.vae, components.text_encoder
        self.scheduler, self.vae_scale = components.scheduler, components.vae_scale
        self.trains_vae, self.half, self.cast = trains_vae, half, autocast

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = next(self.unet.parameters()).device
        if "mean" in batch:                                          # cached latent distributions
            latents = (batch["mean"] + batch["std"] * batch["z_eps"]).to(device) * self.vae_scale
            recon_loss = None
        else:
            px = batch["px"].to(device)
            dist = self.vae.encode(px.to(torch.float32 if self.trains_vae else self.half)).latent_dist
            z = dist.mean + dist.std * batch["z_eps"].to(device, dist.mean.dtype)
            latents = z * self.vae_scale
            recon_loss = F.mse_loss(self.vae.decode(z).sample.float(), px.float()) if self.trains_vae else None
        if "emb" in batch:
            emb = batch["emb"].to(device, self.half)
        else:
            emb = self.text_encoder(batch["ids"].to(device))[0]
        noise = batch["noise"].to(device, latents.dtype)
        t = batch["t"].to(device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        pred = self.unet(noisy.to(self.half) if self.cast else noisy, t, emb).sample
        loss = F.mse_loss(pred.float(), training_target(self.scheduler, latents, noise, t).float())
        return loss + recon_loss if recon_loss is not None else loss


def _latent_shape(components: SDComponents, pixels: torch.Tensor) -> tuple[int, int, int]:
    """``(C, h, w)``: the VAE's latent shape for an image ``[3, H, W]``."""
    cfg = components.vae.config
    f = 2 ** (len(cfg.block_out_channels) - 1)
    return cfg.latent_channels, pixels.shape[-2] // f, pixels.shape[-1] // f


def _order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def train_sd(
    components: SDComponents,
    method: str,
    dataset: Dataset,
    cfg: SDTrainConfig = SDTrainConfig(),
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after_steps: int | None = None,
    method_options: dict[str, Any] | None = None,
) -> SDTrainResult:
    """Fine-tune ``components`` in place with ``method`` on a text-to-image dataset.

    Args:
        components: from :mod:`nbsupport.sd.models` (not yet prepared).
        method: a key of :data:`nbsupport.sd.methods.SD_METHODS`.
        dataset: items ``{"pixel_values": [3, H, W] in [-1, 1], "caption": str}``.
        cfg: :class:`SDTrainConfig`.
        checkpoint_dir: where the step checkpoints (``last.json`` + files) and ``final.safetensors`` go.
        stop_after_steps: stop after this many optimizer steps of this call (as a disconnect would).
    """
    spec = SD_METHODS[method]
    dtype = _autocast_dtype(cfg, torch.device(device))
    eng = engine(device, dtype, cfg.grad_accum)         # local, or Accelerate under a launcher
    device = eng.device
    progress = progress and eng.is_main
    if cfg.batch_size < eng.world:
        raise ValueError(f"batch_size={cfg.batch_size} is smaller than the {eng.world} processes: "
                         "each micro-batch is the global one, split across processes; raise it")
    groups = prepare(components, method, **(method_options or {}))
    trainable = [p for g in groups for p in g["params"]]
    n_trainable = sum(p.numel() for p in trainable)
    half = dtype or torch.float32
    unet, vae, text = components.unet, components.vae, components.text_encoder
    # frozen models in half precision, trainable ones in fp32 (PEFT params live inside the frozen
    # UNet: cast the UNet's frozen weights only)
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    for model in components.models().values():
        model.to(device)
        for module in model.modules():
            keep_fp32 = isinstance(module, norms)   # tiny, and mixed-dtype norm backward is fragile
            for p in module.parameters(recurse=False):
                p.data = p.data.float() if (p.requires_grad or keep_fp32) else p.data.to(half)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if spec.trains_text_encoder:
            enable = getattr(text, "activation_checkpointing_enable", None) or text.gradient_checkpointing_enable
            enable()
        if spec.trains_vae and hasattr(vae, "enable_gradient_checkpointing"):
            vae.enable_gradient_checkpointing()
    unet.train()
    text.train(spec.trains_text_encoder)
    vae.train(spec.trains_vae)

    opt, notices = make_optimizer(groups, cfg, device)
    sched = components.scheduler
    n = len(dataset)

    # ---- caches (frozen VAE -> latent distributions; frozen text encoder -> embeddings)
    cache_latents = cfg.cache and not spec.trains_vae
    cache_text = cfg.cache and not spec.trains_text_encoder
    latent_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    text_cache: dict[str, torch.Tensor] = {}
    captions: dict[int, str] = {}          # with cached latents the loop never reads (decodes) an item again
    if cache_latents or cache_text:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            for i in tqdm(range(n), desc="caching latents / text", disable=not progress, leave=False):
                item = dataset[i]
                captions[i] = item["caption"]
                if cache_latents:
                    px = item["pixel_values"][None].to(device, half)
                    dist = vae.encode(px).latent_dist
                    latent_cache[i] = (dist.mean[0].float().cpu(), dist.std[0].float().cpu())
                if cache_text and item["caption"] not in text_cache:
                    text_cache[item["caption"]] = encode_prompts(components, [item["caption"]], device)[0].float().cpu()

    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    checkpoints = StepCheckpoints(ckpt) if ckpt is not None else None
    start_step, losses, seconds, samples = 0, [], 0.0, 0
    if checkpoints is not None and resume and checkpoints.exists("last"):
        tensors, state = checkpoints.load("last", "cpu")
        if state.get("method") != method:
            raise ValueError(f"{ckpt} holds a {state.get('method')!r} run, not {method!r}: use another folder")
        checkpoints.load_optimizer("last", opt)
        named = {f"{c}.{n}": p for c, m in components.models().items() for n, p in m.named_parameters()}
        expected = set(trainable_state(components))
        current = trainable_state(components)
        if set(tensors) != expected or any(tensors[k].shape != current[k].shape for k in expected & set(tensors)):
            raise CheckpointError(f"{ckpt}: the checkpoint's tensors do not match the {method!r} setup "
                                  f"(missing {sorted(expected - set(tensors))[:3]}, or other shapes); delete {ckpt} to start afresh")
        with torch.no_grad():
            for k, v in tensors.items():
                named[k].copy_(v.to(named[k].device, named[k].dtype))
        start_step, losses = state["step"], state["losses"]
        seconds, samples = state.get("seconds", 0.0), state.get("samples", 0)
        if progress:
            print(f"resuming {method} from checkpoint {ckpt.name} at step {start_step}", file=sys.stderr)

    def save_last(step: int) -> None:
        """Weights, optimizer and counters of one step, published together (see StepCheckpoints)."""
        checkpoints.save("last", trainable_state(components), raw_optimizer(opt),
                         {"method": method, "step": step, "losses": losses, "seconds": seconds, "samples": samples,
                          "config": asdict(cfg)}, step)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    denoise = DenoisingStep(components, spec.trains_vae, half, dtype is not None)
    wrapped, step_opt = eng.wrap(denoise, opt)          # DDP + Accelerate's optimizer under a launcher
    forward = wrapped
    if cfg.compile:
        sched.alphas_cumprod = sched.alphas_cumprod.to(device)   # a device tensor, not a CPU one, in the graph
        forward = compile_step(wrapped, cfg.compile)
    graph_shape: torch.Size | None = None               # the one micro-batch shape the compiled step serves
    micro_per_epoch = math.ceil(n / cfg.batch_size)
    steps_run = 0
    step_times: list[float] = []
    bar = tqdm(range(start_step, cfg.steps), desc=f"{method}", disable=not progress, initial=start_step,
               total=cfg.steps)
    for step in bar:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step_opt.zero_grad(set_to_none=True)
        step_loss_t = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            k = step * cfg.grad_accum + micro                      # global micro-batch index
            epoch, pos = divmod(k, micro_per_epoch)
            order = _order(n, cfg.seed, epoch)
            idx = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
            lo, hi, empty = eng.rows(len(idx))                     # this process's rows of the micro-batch
            mine = idx[lo:hi]
            items = [] if cache_latents else [dataset[i] for i in mine]      # pixels only when not cached
            caps = [captions[i] for i in mine] if captions else [it["caption"] for it in items]
            # the random draws of the whole micro-batch, in a fixed order; this process keeps its rows
            gen = torch.Generator().manual_seed(cfg.seed * 7_919 + k)
            lat = latent_cache[mine[0]][0].shape if cache_latents else _latent_shape(components, items[0]["pixel_values"])
            batch = {"z_eps": torch.randn((len(idx), *lat), generator=gen)[lo:hi],
                     "noise": torch.randn((len(idx), *lat), generator=gen)[lo:hi],
                     "t": torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)[lo:hi]}
            if cache_latents:
                batch["mean"] = torch.stack([latent_cache[i][0] for i in mine])
                batch["std"] = torch.stack([latent_cache[i][1] for i in mine])
            else:
                batch["px"] = torch.stack([it["pixel_values"] for it in items])
            if cache_text:
                batch["emb"] = torch.stack([text_cache[c] for c in caps])
            else:
                batch["ids"] = prompt_ids(components.tokenizer, caps)
            weight = share(len(mine), len(idx), eng.world, 1, empty)
            run = wrapped
            if cfg.compile:
                # every input on the device (a CPU tensor in the graph rules out CUDA graphs); the
                # first shape seen is compiled, any other runs eagerly
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                graph_shape = graph_shape or batch["noise"].shape
                run = forward if batch["noise"].shape == graph_shape else wrapped
                if cfg.compile == "cudagraphs":
                    torch.compiler.cudagraph_mark_step_begin()     # the last replay's outputs are consumed
            with eng.micro(wrapped):
                with eng.autocast():
                    loss = run(batch)
                eng.backward(loss * weight if weight != 1.0 else loss)
            step_loss_t += loss.detach() * (weight / eng.world / cfg.grad_accum)
            samples += len(idx)
        eng.step(step_opt, trainable, cfg.max_grad_norm)
        step_loss = eng.global_sum(step_loss_t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        step_times.append(time.perf_counter() - t0)
        losses.append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        steps_run += 1
        done = step + 1
        stop = stop_after_steps is not None and steps_run >= stop_after_steps and done < cfg.steps
        if ckpt is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps or stop):
            if eng.is_main:
                save_last(done)
            eng.wait()
        if stop:
            break
    final = None
    if ckpt is not None and len(losses) == cfg.steps:
        if eng.is_main:
            save_trainable(components, ckpt / "final.safetensors", {"step": len(losses)})
        eng.wait()
        final = str(ckpt / "final.safetensors")
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    eng.release()
    for model in components.models().values():
        model.eval()
    return SDTrainResult(
        losses=losses, steps=len(losses), step_time_s=seconds / max(len(losses), 1),
        samples_per_s=samples / max(seconds, 1e-9), peak_memory_bytes=peak, trainable=n_trainable,
        checkpoint=final, resumed_from_step=start_step, notices=notices,
        cached={"latents": cache_latents, "text": cache_text}, step_times=step_times)


@torch.no_grad()
def denoising_loss(components: SDComponents, dataset: Dataset, device: torch.device | str = "cpu",
                   seed: int = 1234, batch_size: int = 4, max_items: int | None = None) -> float:
    """Mean epsilon-prediction MSE over a dataset with *fixed* noise and timesteps (seeded), so
    that two models, or one model before and after training, are compared on the same problem."""
    device = torch.device(device)
    unet, vae = components.unet, components.vae
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    total, count = 0.0, 0
    dtype = next(unet.parameters()).dtype
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        gen = torch.Generator().manual_seed(seed + start)
        px = torch.stack([it["pixel_values"] for it in items]).to(device, next(vae.parameters()).dtype)
        latents = vae.encode(px).latent_dist.mean.float() * components.vae_scale
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, components.scheduler.config.num_train_timesteps, (len(items),), generator=gen).to(device)
        noisy = components.scheduler.add_noise(latents, noise, t)
        emb = encode_prompts(components, [it["caption"] for it in items], device)
        pred = unet(noisy.to(dtype), t, emb.to(dtype)).sample.float()
        target = training_target(components.scheduler, latents, noise, t).float()
        total += F.mse_loss(pred, target, reduction="sum").item() / noise[0].numel()
        count += len(items)
    return total / max(count, 1)


def run_sd_method(components: SDComponents, method: str, train_set: Dataset, test_set: Dataset, cfg: SDTrainConfig,
                  device: torch.device | str, chapter: str, profile: str, dataset: str,
                  progress: bool = True) -> dict[str, Any]:
    """Train one method (resumable; checkpoints under ``$NBSUPPORT_CACHE/checkpoints/text-to-image``,
    keyed by the config, method, weights and the training set's content fingerprint),
    measure the fixed-noise test loss before and after, and write the run record.

    Returns ``result`` (:class:`SDTrainResult`), ``test_loss_before``, ``test_loss_after``, ``record``
    and ``key`` (the run's checkpoint key: it names the trained model, e.g. for generated images).
    """
    from nbsupport.core import records
    from nbsupport.core.checkpoints import run_key
    from nbsupport.core.paths import cache_dir

    timer = records.RunTimer(device)
    from nbsupport.data.fingerprint import fingerprint
    from nbsupport.data.manifests import dataset_name

    dataset = dataset_name(dataset)                 # a manifest given by path: its name
    key = run_key("sd-v2", cfg.run_settings(), method, fingerprint(train_set), components.weights, components.name)
    manifest = getattr(train_set, "manifest", None)
    before = denoising_loss(components.to(device), test_set, device, max_items=16)
    res = train_sd(components, method, train_set, cfg, device, progress=progress,
                   checkpoint_dir=cache_dir() / "checkpoints" / "text-to-image" / f"{method}-{key}")
    after = denoising_loss(components, test_set, device, max_items=16)
    path = records.write_record(
        chapter=chapter, profile=profile, dataset=dataset, weights=components.weights, method=method,
        metrics={"losses": res.losses, "test_loss_before": before, "test_loss_after": after,
                 "trainable": res.trainable, "step_time_s": res.step_time_s, "samples_per_s": res.samples_per_s,
                 "peak_memory_bytes": res.peak_memory_bytes,
                 "checkpoint_bytes": Path(res.checkpoint).stat().st_size if res.checkpoint else None},
        params={"config": asdict(cfg), "notices": res.notices, "cached": res.cached, "checkpoint_key": key,
                "data": {"split_rule": manifest.split_rule() if manifest is not None else None,
                         "fingerprints": {"train": fingerprint(train_set), "test": fingerprint(test_set)}}},
        timer=timer, device=device, name=f"{chapter}-{method}-{dataset}" + (f"-s{cfg.seed}" if cfg.seed else ""))
    return {"result": res, "test_loss_before": before, "test_loss_after": after, "record": str(path), "key": key}
