"""Pretraining the pocket Stable Diffusion on the source domain: VAE first, then UNet + text encoder.

Stable Diffusion was trained in two stages (an autoencoder, then a text-conditioned diffusion model
in its latent space), on billions of captioned web images. The pocket recipe does the same on the
pocket ViT's corpus (:mod:`nbsupport.data.corpus`: procedural eyes from the *source* cameras):

1. **VAE** (``AutoencoderKL``): L1 reconstruction + a small KL term, weighted as in SD (1e-6,
   with the L1 summed over an image's pixels and the KL over its latent; no perceptual or
   adversarial loss at this scale). The first recipe took the L1's *mean* but the KL's sum, a
   KL 12,288 times stronger than SD's: its posterior noise (std 0.31 against a latent spread of
   0.96) left room for under 2 bits per latent value, and reconstructions lost most vessels and
   lesions (``benchmarks/pocket_vae_round_trip.py`` measures both VAEs). Afterwards the latents'
   scale is measured and stored as the VAE's ``scaling_factor`` (SD's 0.18215 was found the same
   way), and :func:`evaluate_vae` measures what survives the round trip (PSNR, and whether the
   pocket ViT's probes still read eye side and grade).
2. **UNet + text encoder** jointly, denoising the frozen VAE's latents with the pocket scheduler
   (:data:`nbsupport.sd.pocket.POCKET_SD`: SD's betas rescaled to zero terminal SNR, v-prediction,
   as Lin et al. 2024 recommend; the first recipe, SD 1.5's epsilon schedule, made a model that
   read the optic disc's side from the noise the schedule leaves at its last step and ignored the
   caption's "left"/"right"); captions are dropped 10% of the time (classifier-free guidance needs
   the unconditional model); an exponential moving average of the weights is what ships.

Captions (:func:`source_caption`) name the eye and the grade, *never a lesion*: "A colour fundus
photograph of a left eye with moderate non-proliferative diabetic retinopathy." The chapters'
target captions list the lesions (words the pretraining never trained) and come from another
camera, so fine-tuning faces a shift in both image and text.

Everything is resumable (a checkpoint every ``checkpoint_every`` steps, written atomically; data
order and noise depend only on the seed and step) and can stop after ``max_minutes``. At fixed
steps a small evaluation samples images with fixed prompts and seeds and measures them with the
pocket ViT (Fréchet distance to held-out real images, eye-side and grade agreement).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from nbsupport.core.checkpoints import StepCheckpoints, run_key, write_json
from nbsupport.core.paths import cache_dir
from nbsupport.data.corpus import CorpusSpec, corpus_labels, load_corpus
from nbsupport.data.fundus import GRADE_NAMES
from nbsupport.sd.models import SDComponents
from nbsupport.sd.train import prompt_ids, training_target
from nbsupport.sd.pocket import POCKET_SD, build_pocket

__all__ = ["SDPretrainConfig", "source_caption", "pretrain_sd", "export_pocket", "evaluate_pocket",
           "evaluate_vae", "evaluation_prompts", "probe_reference", "guidance_sweep"]


def source_caption(grade: int, eye: str) -> str:
    """The pretraining caption of a source-domain eye: its side and grade, no lesion words."""
    return f"A colour fundus photograph of a {eye} eye with {GRADE_NAMES[int(grade)]}."


@dataclass(frozen=True)
class SDPretrainConfig:
    """Everything that defines a pocket diffusion pretraining run (its checkpoints live under its key).

    Attributes:
        corpus: the source-domain corpus (shared with the pocket ViT).
        holdout: last images of the corpus kept out of training (evaluation's real reference).
        vae_steps, vae_batch, vae_lr: stage 1.
        kl_weight: the KL term's weight against the L1 *summed* over an image's pixels (SD's
            scale; the loss divides it by the pixel count, as the L1 is a mean).
        steps, batch_size, lr, warmup_steps: stage 2 (UNet and text encoder share the rate).
        cond_drop: probability of training on the empty caption (for classifier-free guidance).
        ema_decay: decay of the weights' moving average (what ships).
        eval_at: stage-2 steps at which the samples are evaluated (the last step always is).
        eval_samples, eval_steps, guidance: sample count, DDIM steps and guidance scale of evaluation.
        checkpoint_every, log_every: in steps.
        seed: initialisation, data order and noise.
    """

    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    holdout: int = 2000
    vae_steps: int = 2000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    steps: int = 12000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 500
    weight_decay: float = 1e-2
    cond_drop: float = 0.1
    ema_decay: float = 0.999
    eval_at: tuple[int, ...] = (2000, 6000)
    eval_samples: int = 200
    eval_steps: int = 25
    guidance: float = 2.0
    checkpoint_every: int = 250
    log_every: int = 50
    seed: int = 0

    @classmethod
    def smoke(cls) -> "SDPretrainConfig":
        """Seconds on a CPU: proves both stages, resume and evaluation run; teaches nothing."""
        return cls(corpus=CorpusSpec(n=96), holdout=32, vae_steps=3, vae_batch=8, steps=4, batch_size=8,
                   warmup_steps=2, eval_at=(2,), eval_samples=8, eval_steps=2, checkpoint_every=2, log_every=1)

    @property
    def key(self) -> str:
        # v3: the KL weighted per pixel as in SD (v1/v2 weighted it per image mean: 12,288x stronger)
        return run_key("pocket-sd-v3", asdict(self), POCKET_SD)


def _lr(step: int, cfg: SDPretrainConfig, peak: float, steps: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    warm = min(cfg.warmup_steps, steps // 4) if steps > 4 else 0
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(steps - warm, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t)))


def evaluation_prompts(n: int) -> tuple[list[str], list[int], list[str]]:
    """``n`` prompts cycling over the five grades and both eyes, with their grades and eyes."""
    grades = [i % 5 for i in range(n)]
    eyes = ["left" if (i // 5) % 2 == 0 else "right" for i in range(n)]
    return [source_caption(g, e) for g, e in zip(grades, eyes)], grades, eyes


class _StageLog:
    """A stage's step counter, training wall time and logged loss curve (all kept in its ``state``)."""

    def __init__(self, state: dict[str, Any], total: int, every: int, bar: Any, label: str) -> None:
        self.state, self.total, self.every, self.bar, self.label = state, total, every, bar, label
        self.running: list[float] = []
        self.t_last = time.perf_counter()

    def step(self, loss: float) -> None:
        """Count one optimisation step; every ``every`` steps append the mean loss to the curve."""
        self.running.append(loss)
        self.state["step"] += 1
        now = time.perf_counter()
        self.state["elapsed_s"] += now - self.t_last
        self.t_last = now
        self.bar.update()
        if self.state["step"] % self.every == 0 or self.state["step"] == self.total:
            mean = float(np.mean(self.running))
            self.state["loss_curve"].append([self.state["step"], mean])
            self.bar.set_postfix({self.label: f"{mean:.4f}"})
            self.running = []

    def pause_ended(self) -> None:
        """Do not count the time since the last step (an evaluation) as training time."""
        self.t_last = time.perf_counter()


def _prefixed(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in model.state_dict().items()}


def _unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _train_vae(comp: SDComponents, images: np.ndarray, cfg: SDPretrainConfig, run: StepCheckpoints, device: torch.device,
               deadline: float, progress: bool) -> tuple[dict[str, Any], bool]:
    """Stage 1 (resumable); returns the VAE's run state and whether any step ran in this call."""
    from tqdm.auto import tqdm

    vae = comp.vae.to(device).train()
    opt = _adamw(list(vae.parameters()), cfg.vae_lr, 0.0, device)
    state: dict[str, Any] = {"step": 0, "elapsed_s": 0.0, "loss_curve": [], "device": _device_name(device)}
    if run.exists("vae"):
        tensors, state = run.load("vae", device, opt)
        vae.load_state_dict(_unprefixed(tensors, "vae"))
    n = len(images)
    bar = tqdm(total=cfg.vae_steps, initial=state["step"], desc="pocket SD: VAE", unit="step", disable=not progress)
    log = _StageLog(state, cfg.vae_steps, cfg.log_every, bar, "l1")
    ran = state["step"] < cfg.vae_steps
    while state["step"] < cfg.vae_steps:
        step = state["step"]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, n, (cfg.vae_batch,), generator=gen).numpy()
        x = _pixels(images[np.sort(idx)], device)
        flip = torch.rand(len(x), generator=gen) < 0.5                  # no captions here: flips are free
        x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg, cfg.vae_lr, cfg.vae_steps)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen).to(device)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + cfg.kl_weight * dist.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        log.step(loss.item())
        out_of_time = time.perf_counter() >= deadline
        if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.vae_steps or out_of_time:
            run.save("vae", _prefixed(vae, "vae"), opt, state, state["step"])
        if out_of_time:
            break
    bar.close()
    vae.eval()
    return state, ran


@torch.no_grad()
def _latent_stats(vae: nn.Module, images: np.ndarray, device: torch.device, batch: int = 256,
                  progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std ``[n, 4, h, w]`` (fp16, CPU) of every image."""
    from tqdm.auto import tqdm

    means, stds = [], []
    for i in tqdm(range(0, len(images), batch), desc="encoding the corpus", disable=not progress, leave=False):
        dist = vae.encode(_pixels(images[i:i + batch], device)).latent_dist
        means.append(dist.mean.half().cpu().contiguous())
        stds.append(dist.std.half().cpu().contiguous())
    return torch.cat(means), torch.cat(stds)


def _device_name(device: torch.device) -> str:
    from nbsupport.core.env import describe_device

    return str(describe_device(device).get("name", device))


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, one fused call over all parameters."""
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def _adamw(params: list[nn.Parameter], lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step on CUDA (same update rule)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")


def pretrain_sd(cfg: SDPretrainConfig, out_dir: str | Path | None = None, device: str | torch.device | None = None,
                max_minutes: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Pretrain (or resume) the pocket Stable Diffusion; returns the run state.

    Checkpoints go to ``out_dir/<cfg.key>/`` (default ``<cache>/pocket-sd-pretrain``). Stops after
    both stages finish or once ``max_minutes`` have passed in this call (call again to go on).
    Returns ``{"vae": state, "diffusion": state, "run_dir": str, "finished": bool}``.
    """
    from tqdm.auto import tqdm

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    deadline = time.perf_counter() + 60 * max_minutes if max_minutes is not None else float("inf")
    run = StepCheckpoints(Path(out_dir if out_dir is not None else cache_dir() / "pocket-sd-pretrain") / cfg.key)
    if device.type == "cuda":                     # TF32 matmuls: the pocket models are launch-bound anyway
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    images, _ = load_corpus(cfg.corpus, workers=min(16, os.cpu_count() or 1), progress=progress)
    grades, eyes, _ = corpus_labels(cfg.corpus)
    if len(images) <= cfg.holdout + cfg.batch_size:
        raise ValueError(f"corpus of {len(images)} images is too small for holdout={cfg.holdout} and "
                         f"batch_size={cfg.batch_size}")
    train_images = images[:-cfg.holdout]
    captions = [source_caption(g, e) for g, e in zip(grades[:-cfg.holdout], eyes[:-cfg.holdout])]

    comp = build_pocket(seed=cfg.seed)
    vae_state, vae_ran = _train_vae(comp, train_images, cfg, run, device, deadline, progress)
    out: dict[str, Any] = {"vae": vae_state, "diffusion": None, "run_dir": str(run.root), "finished": False}
    if vae_state["step"] < cfg.vae_steps or (vae_ran and time.perf_counter() >= deadline):
        return out
    if "evaluation" not in vae_state:            # once, on held-out eyes; kept in the stage's state
        vae_state["evaluation"] = evaluate_vae(comp.vae, images[-cfg.holdout:], grades[-cfg.holdout:],
                                               eyes[-cfg.holdout:], device)
        run.update_state("vae", vae_state)
        if progress:
            print(f"VAE round trip on held-out eyes: {vae_state['evaluation']}", file=sys.stderr)   # a progress log

    # ---- latents of the training images under the finished VAE (cached in the run directory)
    vae = comp.vae.requires_grad_(False)
    cache = run.root / "latents.safetensors"
    if cache.is_file():
        lat = safetensors.torch.load_file(str(cache))
        means, stds = lat["mean"], lat["std"]
    else:
        means, stds = _latent_stats(vae, train_images, device, progress=progress)
        tmp = run.root / "latents.tmp"
        safetensors.torch.save_file({"mean": means.contiguous(), "std": stds.contiguous()}, str(tmp))
        tmp.replace(cache)
    scale = float(1.0 / means.float().std())
    vae.register_to_config(scaling_factor=scale)

    # ---- stage 2: UNet + text encoder
    unet, text, tok = comp.unet.to(device), comp.text_encoder.to(device), comp.tokenizer
    unique = sorted(set(captions)) + [""]
    ids = prompt_ids(tok, unique).to(device)
    caption_index = torch.tensor([unique.index(c) for c in captions])
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
    params = list(unet.parameters()) + list(text.parameters())
    opt = _adamw(params, cfg.lr, cfg.weight_decay, device)
    state: dict[str, Any] = {"step": 0, "elapsed_s": 0.0, "loss_curve": [], "evaluations": [], "vae_scaling_factor": scale,
                             "device": _device_name(device)}
    if run.exists("diffusion"):
        tensors, state = run.load("diffusion", device, opt)
        for model, prefix in ((unet, "unet"), (text, "text_encoder"), (ema_unet, "ema.unet"), (ema_text, "ema.text_encoder")):
            model.load_state_dict(_unprefixed(tensors, prefix))

    def save() -> None:
        tensors = {**_prefixed(unet, "unet"), **_prefixed(text, "text_encoder"),
                   **_prefixed(ema_unet, "ema.unet"), **_prefixed(ema_text, "ema.text_encoder")}
        run.save("diffusion", tensors, opt, state, state["step"])

    start = state["step"]
    sched = comp.scheduler
    n = len(means)
    bar = tqdm(total=cfg.steps, initial=state["step"], desc="pocket SD: UNet + text", unit="step", disable=not progress)
    log = _StageLog(state, cfg.steps, cfg.log_every, bar, "loss")
    unet.train()
    text.train()
    while state["step"] < cfg.steps and not (state["step"] > start and time.perf_counter() >= deadline):
        step = state["step"]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7_919 * step + 1)
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        z0 = (means[idx].float() + stds[idx].float() * torch.randn(means[idx].shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.cond_drop
        which = torch.where(drop, len(unique) - 1, caption_index[idx])
        z0, noise, t = z0.to(device), noise.to(device), t.to(device)
        noisy = sched.add_noise(z0, noise, t)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg, cfg.lr, cfg.steps)
        emb = text(ids[which.to(device)])[0]
        loss = F.mse_loss(unet(noisy, t, emb).sample, training_target(sched, z0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text, decay)
        log.step(loss.item())
        if state["step"] in cfg.eval_at or state["step"] == cfg.steps:
            shipped = replace(comp, unet=ema_unet, text_encoder=ema_text)
            ev = evaluate_pocket(shipped, images[-cfg.holdout:], grades[-cfg.holdout:], eyes[-cfg.holdout:],
                                 cfg, device)
            state["evaluations"].append({"step": state["step"], **ev})
            bar.write(f"step {state['step']}: {ev}", file=sys.stderr)
            log.pause_ended()
            unet.train()
            text.train()
        if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.steps or time.perf_counter() >= deadline:
            save()
    bar.close()
    state["device"] = _device_name(device)
    vae_state["device"] = _device_name(device)
    out.update(diffusion=state, finished=state["step"] >= cfg.steps)
    return out


def _probe_features(images: np.ndarray, device: torch.device) -> np.ndarray:
    """Class-token features ``[N, D]`` of the frozen pocket ViT for uint8 images ``[N, S, S, 3]``."""
    from nbsupport.vit.backbones import POCKET_MEAN, POCKET_STD, create_vit
    from nbsupport.vit.probe import token_features

    vit = create_vit("pocket-fundus-vit", pretrained=True, num_classes=0, img_size=images.shape[1]).to(device)
    return token_features(vit, images, POCKET_MEAN, POCKET_STD)["cls"]


def _half_probes(features: np.ndarray, eyes: list[str], grades: np.ndarray) -> tuple[Any, Any, np.ndarray, np.ndarray, int]:
    """Eye-side and grade probes (logistic regressions) fitted on the first half of real images'
    features ``[N, D]``; returns them, the labels (``right`` as bool, grades) and the half ``h``."""
    from sklearn.linear_model import LogisticRegression

    right, grades = np.array([e == "right" for e in eyes]), np.asarray(grades)
    h = len(features) // 2
    eye = LogisticRegression(max_iter=2000).fit(features[:h], right[:h])
    grade = LogisticRegression(max_iter=2000).fit(features[:h], grades[:h])
    return eye, grade, right, grades, h


@torch.no_grad()
def evaluate_vae(vae: nn.Module, real: np.ndarray, grades: np.ndarray, eyes: list[str],
                 device: torch.device | str = "cpu", batch: int = 250) -> dict[str, float]:
    """What survives the VAE's round trip (encode to the posterior mean, decode) of ``real`` uint8
    images ``[N, S, S, 3]``: PSNR (dB, mean over images), and how well the pocket ViT's probes,
    fitted on the first half's *real* images, read eye side and grade from the second half's
    reconstructions and from the same real images. A VAE that blurs lesions away costs every
    sample its fine detail, however good the UNet (guided samples can still read back a grade better
    than reconstructions of real eyes do: they show what is typical of the prompted grade)."""
    from sklearn.metrics import cohen_kappa_score

    device = torch.device(device)
    was = vae.training
    vae.eval()
    recon = []
    for i in range(0, len(real), batch):
        x = _pixels(real[i:i + batch], device)
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
        recon.append(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    vae.train(was)
    recon = np.concatenate(recon)
    mse = ((recon.astype(np.float64) - real.astype(np.float64)) ** 2).reshape(len(real), -1).mean(1)
    fr, fc = _probe_features(real, device), _probe_features(recon, device)
    eye, grade, right, grades, h = _half_probes(fr, eyes, grades)
    return {"psnr_db": float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10)))),
            "eye_accuracy_recon": float((eye.predict(fc[h:]) == right[h:]).mean()),
            "eye_accuracy_real": float((eye.predict(fr[h:]) == right[h:]).mean()),
            "grade_qwk_recon": float(cohen_kappa_score(grades[h:], grade.predict(fc[h:]), weights="quadratic")),
            "grade_qwk_real": float(cohen_kappa_score(grades[h:], grade.predict(fr[h:]), weights="quadratic")),
            "n_real": int(len(real))}


def probe_reference(real: np.ndarray, grades: np.ndarray, eyes: list[str],
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """How well the evaluation's probes read side and grade from *real* images they were not fitted
    on (fitted on the first half of ``real``, scored on the second): the reference for samples."""
    from sklearn.metrics import cohen_kappa_score

    fr = _probe_features(real, torch.device(device))
    eye, grade, right, grades, h = _half_probes(fr, eyes, grades)
    return {"eye_accuracy_real": float((eye.predict(fr[h:]) == right[h:]).mean()),
            "grade_qwk_real": float(cohen_kappa_score(grades[h:], grade.predict(fr[h:]), weights="quadratic")),
            "n_real": int(len(fr))}


@torch.no_grad()
def evaluate_pocket(comp: SDComponents, real: np.ndarray, grades: np.ndarray, eyes: list[str],
                    cfg: SDPretrainConfig, device: torch.device) -> dict[str, float]:
    """Sample ``cfg.eval_samples`` images (fixed prompts and seeds) and compare them with ``real``
    held-out images through the pocket ViT: Fréchet distance of class-token features (and the
    same between two halves of ``real``, the noise floor), and how often a probe trained on the
    real images' features reads the prompted eye side and grade from the samples (what the same
    probes read from real images they were not fitted on: :func:`probe_reference`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import cohen_kappa_score

    from nbsupport.evaluation.fidelity import fid_from_features
    from nbsupport.sd.sampling import sample

    prompts, p_grades, p_eyes = evaluation_prompts(cfg.eval_samples)
    was = [m.training for m in comp.models().values()]
    for m in comp.models().values():
        m.eval()
    fake = np.stack(sample(comp, prompts, list(range(cfg.eval_samples)), resolution=real.shape[1],
                           steps=cfg.eval_steps, guidance_scale=cfg.guidance, device=device))
    for m, w in zip(comp.models().values(), was):
        m.train(w)
    fr, ff = _probe_features(real, device), _probe_features(fake, device)
    half = len(fr) // 2
    right = np.array([e == "right" for e in eyes])
    eye_probe = LogisticRegression(max_iter=2000).fit(fr, right)
    grade_probe = LogisticRegression(max_iter=2000).fit(fr, grades)
    return {
        "fid_pocket_vit": fid_from_features(fr, ff),
        "fid_real_vs_real": fid_from_features(fr[:half], fr[half:]),
        "eye_agreement": float((eye_probe.predict(ff) == np.array([e == "right" for e in p_eyes])).mean()),
        "grade_qwk": float(cohen_kappa_score(p_grades, grade_probe.predict(ff), weights="quadratic")),
        "n_samples": int(len(fake)),
    }


def guidance_sweep(comp: SDComponents, real: np.ndarray, grades: np.ndarray, eyes: list[str],
                   cfg: SDPretrainConfig, scales: tuple[float, ...] = (1.0, 2.0, 4.0, 7.5),
                   device: torch.device | str = "cpu") -> dict[str, Any]:
    """:func:`evaluate_pocket` at each classifier-free guidance scale, and the scale the profiles use.

    More guidance makes samples follow their prompts more closely and, past a point, look less like
    real eyes. The rule, fixed before any fine-tuning and applied on the *source* domain's held-out
    eyes: among the scales whose Fréchet distance is within 25% of the best, the one whose samples
    are read back best (eye agreement + grade Kappa; ties: the smaller scale).
    """
    rows = [{"guidance": g, **evaluate_pocket(comp, real, grades, eyes, replace(cfg, guidance=g), torch.device(device))}
            for g in scales]
    best_fid = min(r["fid_pocket_vit"] for r in rows)
    fine = [r for r in rows if r["fid_pocket_vit"] <= 1.25 * best_fid]
    chosen = max(sorted(fine, key=lambda r: r["guidance"]), key=lambda r: r["eye_agreement"] + r["grade_qwk"])
    return {"rows": rows, "chosen": chosen["guidance"],
            "rule": "best eye agreement + grade Kappa among scales with FID within 25% of the best; ties: smaller"}


def export_pocket(run_dir: str | Path, out: str | Path, extra: dict[str, Any] | None = None,
                  device: str | None = None, cfg: SDPretrainConfig | None = None,
                  eval_device: str | torch.device | None = None) -> dict[str, Any]:
    """Write a finished run's VAE and EMA UNet/text encoder as one fp16 safetensors at ``out`` and
    its record at ``out.json`` (sha256, recipe, loss curves, evaluations, ``extra``). ``device``
    names the machine that trained it where the run's own state does not (runs before it was recorded).

    With the run's ``cfg``, the exported file itself is evaluated on the recipe's held-out source
    eyes and the record gains ``probe_reference`` (what the probes read from real eyes) and
    ``guidance_sweep`` (the guidance scale the ``cpu`` profile samples with, chosen by its rule).
    """
    from nbsupport.vit.backbones import sha256_of

    run, out = StepCheckpoints(run_dir), Path(out)
    vae_t, vae_state = run.load("vae")
    diff_t, diff_state = run.load("diffusion")
    for state in (vae_state, diff_state):
        if device is not None:
            state.setdefault("device", device)
    tensors = {**vae_t, **{k[4:]: v for k, v in diff_t.items() if k.startswith("ema.")}}
    tensors = {k: v.half().contiguous() for k, v in tensors.items()}
    summary = {"vae_steps": vae_state["step"], "steps": diff_state["step"],
               "evaluations": diff_state.get("evaluations", [])[-1:]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    safetensors.torch.save_file(tensors, str(tmp), metadata={
        "format": "pt", "architecture": json.dumps(POCKET_SD),
        "vae_scaling_factor": str(diff_state["vae_scaling_factor"]), "record": json.dumps(summary)})
    tmp.replace(out)
    record = {"name": out.stem, "sha256": sha256_of(out), "bytes": out.stat().st_size, "dtype": "float16",
              "architecture": POCKET_SD, "vae": vae_state, "diffusion": diff_state, **(extra or {})}
    if cfg is not None:
        from nbsupport.sd.pocket import load_pocket

        images, _ = load_corpus(cfg.corpus, workers=min(16, os.cpu_count() or 1), progress=False)
        grades, eyes, _ = corpus_labels(cfg.corpus)
        real, g, e = images[-cfg.holdout:], np.asarray(grades[-cfg.holdout:]), list(eyes[-cfg.holdout:])
        eval_device = eval_device or ("cuda" if torch.cuda.is_available() else "cpu")
        record["probe_reference"] = probe_reference(real, g, e, eval_device)
        record["guidance_sweep"] = guidance_sweep(load_pocket(out), real, g, e, cfg, device=eval_device)
    write_json(out.with_suffix(".json"), record, indent=1)
    return record
