"""Sampling from (fine-tuned) Stable Diffusion components: grids of prompts x seeds, and batched
generation to disk with a manifest of what was generated.

On CUDA, sampling runs under half-precision autocast (the UNet's own half dtype when its frozen
weights are already half, as after fine-tuning; else bf16 where supported, fp16 otherwise, as
``torch_dtype=torch.float16`` pipelines do): loaded or fine-tuned components may hold fp32 weights,
and an fp32 UNet samples several times slower. On the CPU it stays fp32. ``compile="default"`` or
``"cudagraphs"`` (``mode="reduce-overhead"``) hands the pipeline a ``torch.compile``'d UNet: the
first batch pays the compilation, a new batch shape compiles again (``benchmarks/sd_sampling.py``
measures both against diffusers' own pipeline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from nbsupport.sd.models import SDComponents

__all__ = ["SCHEDULERS", "COMPILE_MODES", "make_pipeline", "sample", "sample_grid", "generate_to_disk",
           "sampling_dtype", "data_stamp", "generated_sets"]

SCHEDULERS = ("ddim", "dpm", "euler", "pndm", "ddpm")
COMPILE_MODES = {None: None, "default": None, "cudagraphs": "reduce-overhead", "max-autotune": "max-autotune"}


def sampling_dtype(device: torch.device | str, unet: torch.nn.Module | None = None) -> torch.dtype | None:
    """The autocast dtype of sampling on ``device``: None (fp32) off CUDA; on CUDA the half dtype
    the UNet's weights already hold, if any, else bf16 where supported, else fp16."""
    if torch.device(device).type != "cuda":
        return None
    if unet is not None:
        for p in unet.parameters():
            if p.dtype in (torch.float16, torch.bfloat16):
                return p.dtype
    from nbsupport.core.env import bf16_available

    return torch.bfloat16 if bf16_available() else torch.float16


def _scheduler(name: str, config: Any) -> Any:
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    classes = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
               "pndm": PNDMScheduler, "ddpm": DDPMScheduler}
    if name not in classes:
        raise ValueError(f"scheduler={name!r}: expected one of {', '.join(SCHEDULERS)}")
    return classes[name].from_config(config)


def make_pipeline(components: SDComponents, scheduler: str = "ddim", device: torch.device | str = "cpu",
                  compile: str | None = None) -> Any:
    """A ``StableDiffusionPipeline`` over the components (no safety checker: research images).

    ``compile``: None, ``"default"``, ``"cudagraphs"`` or ``"max-autotune"``: ``torch.compile`` the
    pipeline's UNet (the components keep the plain one), after a reset of Dynamo's caches, so that
    compiling the UNets of many models in one process never hits its recompilation limit."""
    from diffusers import StableDiffusionPipeline

    if compile not in COMPILE_MODES:
        raise ValueError(f"compile={compile!r}: expected one of {tuple(COMPILE_MODES)}")
    unet = components.unet
    if compile is not None:
        torch._dynamo.reset()
        unet = torch.compile(unet, mode=COMPILE_MODES[compile])
    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=unet, scheduler=_scheduler(scheduler, components.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def sample(components: SDComponents, prompts: Sequence[str], seeds: Sequence[int], resolution: int = 512,
           steps: int = 30, guidance_scale: float = 7.5, scheduler: str = "ddim",
           device: torch.device | str = "cpu", pipe: Any = None) -> list[np.ndarray]:
    """One image per (prompt, seed) pair, each ``[H, W, 3]`` uint8; the same seed gives the same image
    (on one device and precision: see the module's note on autocast)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: pass one seed per prompt")
    pipe = pipe or make_pipeline(components, scheduler, device)
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    dev = torch.device(device)
    half = sampling_dtype(dev, components.unet)
    with torch.autocast(dev.type, dtype=half, enabled=half is not None):
        out = pipe(list(prompts), height=resolution, width=resolution, num_inference_steps=steps,
                   guidance_scale=guidance_scale, generator=gens, output_type="np").images
    return [(np.clip(im, 0, 1) * 255 + 0.5).astype(np.uint8) for im in out]


def sample_grid(components: SDComponents, prompts: Sequence[str], seeds: Sequence[int], **kw: Any) -> list[list[np.ndarray]]:
    """``grid[i][j]``: prompt ``i`` with seed ``j`` (fixed prompts x seeds, for side-by-side comparisons)."""
    pipe = kw.pop("pipe", None) or make_pipeline(components, kw.get("scheduler", "ddim"), kw.get("device", "cpu"))
    return [sample(components, [p] * len(seeds), list(seeds), pipe=pipe, **kw) for p in prompts]


def generate_to_disk(components: SDComponents, items: Sequence[dict[str, Any]], out_dir: str | Path,
                     method: str, batch_size: int = 16, progress: bool = True, model_id: str | None = None,
                     compile: str | None = None, data: dict[str, str] | None = None, **kw: Any) -> Path:
    """Generate one image per item (``{"prompt": str, "seed": int, "labels": ...}``) into ``out_dir``.

    Writes ``<index>.png`` files and ``manifest.json`` (prompt, labels, seed, method, file, settings);
    returns the manifest path. ``model_id`` names the exact model (e.g. the fine-tuning run's
    checkpoint key; default: the components' weights label). ``compile``: see :func:`make_pipeline`
    (a speed setting: not part of the manifest's settings). ``data`` names the data the set was made
    from (:func:`data_stamp`: fingerprints of the fine-tuning and caption splits), so that readers
    skip sets made from another version of a dataset (:func:`generated_sets`). Resumable without
    duplicates: an image already listed in the manifest with the same prompt, labels, seed, model and
    settings is kept (whatever ``data`` says: such an image is the same image); anything else is
    (re)generated. The manifest is rewritten atomically after every batch, and lists only images
    whose file was written.
    """
    from PIL import Image

    from nbsupport.core.checkpoints import write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    settings = {k: v for k, v in kw.items() if k != "device"}
    half = sampling_dtype(kw.get("device", "cpu"), components.unet)
    if half is not None:               # images sampled in half precision are not mixed with fp32 ones
        settings["autocast"] = str(half).replace("torch.", "")
    header = {"method": method, "weights": components.weights, "model": model_id or components.weights,
              "settings": settings}
    done: dict[str, Any] = {}
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if all(old.get(k) == v for k, v in header.items()):
            done = {e["file"]: e for e in old["images"] if (out_dir / e["file"]).is_file()}
    wanted = {f"{i:06d}.png": (it["prompt"], int(it["seed"]), it.get("labels")) for i, it in enumerate(items)}
    done = {f: e for f, e in done.items() if wanted.get(f) == (e["prompt"], e["seed"], e.get("labels"))}
    todo = [(i, it) for i, it in enumerate(items) if f"{i:06d}.png" not in done]
    pipe = make_pipeline(components, kw.get("scheduler", "ddim"), kw.get("device", "cpu"), compile) if todo else None
    for start in tqdm(range(0, len(todo), batch_size), desc=f"generating ({method})", disable=not progress):
        chunk = todo[start:start + batch_size]
        imgs = sample(components, [it["prompt"] for _, it in chunk], [it["seed"] for _, it in chunk], pipe=pipe, **kw)
        for (i, it), img in zip(chunk, imgs):
            Image.fromarray(img).save(out_dir / f"{i:06d}.png")
            done[f"{i:06d}.png"] = {"file": f"{i:06d}.png", "prompt": it["prompt"], "seed": int(it["seed"]),
                                     "labels": it.get("labels"), "method": method}
        write_json(manifest_path, {**header, "data": data, "images": [done[k] for k in sorted(done)]})
    if not todo:
        write_json(manifest_path, {**header, "data": data, "images": [done[k] for k in sorted(done) if k in wanted]})
    return manifest_path


def data_stamp(train: Any, test: Any) -> dict[str, str]:
    """What a generated set is made from: the content fingerprints
    (:func:`nbsupport.data.fingerprint.fingerprint`) of the split the generator was fine-tuned on and
    of the split whose captions are the prompts' source."""
    from nbsupport.data.fingerprint import fingerprint

    return {"train": fingerprint(train), "test": fingerprint(test)}


def generated_sets(root: str | Path, stamp: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The methods with a generated set under ``root`` (``<root>/<method>/manifest.json``) made from
    the data ``stamp`` names (:func:`data_stamp`), and the others with the reason each is left out."""
    fresh: list[str] = []
    left_out: dict[str, str] = {}
    for path in sorted(Path(root).glob("*/manifest.json")):
        made_from = json.loads(path.read_text()).get("data")
        if made_from == stamp:
            fresh.append(path.parent.name)
        else:
            left_out[path.parent.name] = ("generated from another version of the data" if made_from
                                          else "generated before sets recorded their data")
    return fresh, left_out
