"""Stable Diffusion 1.5 fine-tuning throughput of the book's loop (``nbsupport.sd.train.train_sd``)
against diffusers' official example scripts, in one run on one device, with the same settings.

Measured, for full UNet fine-tuning (method ``unet``; diffusers' ``train_text_to_image.py``) and LoRA
(method ``lora``; ``train_text_to_image_lora.py`` with ``--rank`` = the book's LoRA rank, same target
modules): step time (median after ``--warmup`` steps), samples/s, peak GPU memory and model-FLOP
utilisation. The book's loop runs twice per method: with cached VAE latents and text embeddings
(the book's default) and without (encoding every step, as diffusers' scripts do). One model is built
per run (the SD 1.5 architecture with random weights, or tiny configs with ``--tiny``; cost does not
depend on the values) with a small local tokenizer, and saved as a diffusers pipeline folder that
both runners load; the data are random RGB PNGs at the resolution in an ``imagefolder`` with a
``metadata.jsonl``, read by both. diffusers' scripts run unchanged in a subprocess through
``benchmarks/_step_timer.py``, which timestamps each ``accelerate.Accelerator.backward`` call (after a
CUDA synchronise) and switches experiment trackers off.

diffusers' scripts are not part of this project: pass the folder holding them. Take them from the
tag of the installed diffusers release (their ``check_min_version`` call must accept it), and install
``datasets`` (they need it; this project does not). ``--compile none cudagraphs`` runs the book's loop
eagerly and with ``SDTrainConfig.compile="cudagraphs"`` (torch.compile + CUDA graphs), side by side:

    V=$(python -c "import diffusers; print(diffusers.__version__)")
    git clone --depth 1 --branch v$V https://github.com/huggingface/diffusers /tmp/diffusers
    python -m pip install datasets      # offline GPU machine: `pip download datasets -d wheels` elsewhere,
                                        # then `pip install --no-index --find-links wheels datasets`
    python benchmarks/sd_vs_diffusers.py --diffusers-examples /tmp/diffusers/examples/text_to_image \\
        --batch 8 --steps 10 --warmup 3 --precision bf16 --compile none cudagraphs

A CPU smoke run (tiny random models, a few steps; its timings say nothing about a GPU):

    python benchmarks/sd_vs_diffusers.py --tiny --device cpu --resolution 64 --batch 2 --steps 3 \\
        --warmup 1 --precision fp32 --diffusers-examples /tmp/diffusers/examples/text_to_image --out /tmp/sdvd

Model FLOPs are ``sd_cost.model_tflops`` (UNet; the VAE encoder when latents are not cached) plus,
when text embeddings are not cached, the CLIP text encoder's forward: 2 x 85M matmul parameters x 77
tokens + attention = 0.0133 TFLOP per sample (1.7% of the UNet forward at 512 px). With ``--tiny`` the
FLOP counts (SD 1.5's) do not apply and MFU is left out. Writes
``<out>/sd_vs_diffusers-<device>-r<resolution>-b<batch>-<precision>[-<modes>][-diffusers-<mode>].json``
(the book's modes when not only ``none``; diffusers' when compiled).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

# from benchmarks/ (this script's folder, first on sys.path); peft_cost puts the repository on sys.path too
import _compile_stats
from peft_cost import measured_peak_tflops
from sd_cost import RandomImages, model_tflops

from nbsupport.core.records import git_commit, write_benchmark
from nbsupport.sd.methods import LORA_TARGETS, LR, SD_METHODS
from nbsupport.sd.models import SDComponents, build_sd15, build_tiny, load_pretrained
from nbsupport.sd.tokenizer import load_tiny_tokenizer
from nbsupport.sd.train import SDTrainConfig, train_sd

SCRIPTS = {"unet": "train_text_to_image.py", "lora": "train_text_to_image_lora.py"}
NEEDED = ("datasets", "torchvision", "accelerate", "peft")     # what diffusers' scripts import
TEXT_TFLOP = 0.0133          # CLIP ViT-L/14 text encoder forward per sample (77 tokens), any resolution
SHIM = Path(__file__).resolve().parent / "_step_timer.py"
PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}       # ours -> accelerate's --mixed_precision
COMPILE = {"none": None, "default": "default", "cudagraphs": "cudagraphs"}   # --compile -> SDTrainConfig.compile
NOTES = [
    ("Compile modes: the speedup keys name the book's mode (none, or _default / _cudagraphs); every key divides "
     "by the diffusers run of this file, whose mode is settings.diffusers_compile (Accelerate's torch.compile "
     "of the UNet through ACCELERATE_DYNAMO_*; 'none' is the scripts as shipped). compile_stats of a compiled "
     "row count its graphs, graph breaks and CUDA-graph skips (skips > 0: that row ran without CUDA graphs)."),
    ("diffusers' scripts encode VAE latents and text embeddings every step (no caching): compare them with "
     "the cached_latents=false rows of the book's loop; the cached rows are the book's default."),
    ("Data: both read the same PNGs in the main process (diffusers: datasets imagefolder -> PIL -> torchvision "
     "transforms -> DataLoader with --dataloader_num_workers; the book's loop: PIL -> tensor inside its step "
     "when latents are not cached, and no image at all after its caching pass when they are). With "
     "--our-data memory the book's loop reads in-memory tensors instead of the PNGs."),
    "Optimizer: torch AdamW in both, fused on CUDA in the book's loop, torch's default (foreach) in diffusers'.",
    ("LoRA: diffusers' script creates its LoRA weights in the UNet's weight dtype and upcasts them to fp32 only "
     "under fp16 (under bf16 they stay bf16); the book's loop keeps them fp32. Its lora_alpha equals the rank "
     "(the book: alpha = 2 x rank): a scale, no cost. Its gradient clipping is a no-op (the `lora_layers` filter "
     "is consumed by the optimizer before clip_grad_norm_ sees it); the book's loop clips at 1.0."),
    ("Full UNet: both keep the UNet's weights fp32 under autocast and the frozen VAE / text encoder in the "
     "half dtype (the book's loop keeps norm layers fp32). No EMA, no validation, no SNR weighting, no noise "
     "offset; diffusers' experiment trackers switched off by the timing shim."),
    ("Timing: the book's loop synchronises around each step; diffusers' step time is the time between the ends "
     "of successive backward passes, with a CUDA synchronise added after each by the shim; diffusers' script "
     "runs one step more than the book's loop so that its timed intervals (optimizer step, then the next step's "
     "data, encoders, forward and backward) start after the warm-up as the book's do. Both loops also "
     "synchronise for the loss every step (.item()). Random noise: drawn on the CPU and copied in the book's "
     "loop, on the device in diffusers'."),
    ("Peak memory: the book's loop resets the counter before its training loop (after caching); diffusers' "
     "value is torch.cuda.max_memory_allocated() at the last backward pass, counted from the start of its process "
     "(its final fp32 cast / save comes after and is not counted)."),
]


# ---------------------------------------------------------------------------- environment and inputs
def missing_packages() -> list[str]:
    """Packages diffusers' scripts import that are not importable here."""
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def require_packages() -> None:
    """Stop with the fix when a package diffusers' scripts need is missing."""
    missing = missing_packages()
    if missing:
        names = " ".join(missing)
        raise SystemExit(
            f"sd_vs_diffusers: diffusers' example scripts need {', '.join(repr(m) for m in missing)}, not installed in "
            f"{sys.executable}'s environment ('datasets' is not a dependency of this project). Install it there: "
            f"`{sys.executable} -m pip install {names}` (offline: `pip download {names} -d wheels` on a machine "
            f"with internet, then `pip install --no-index --find-links wheels {names}`).")


def script_info(folder: Path, methods: list[str]) -> dict[str, dict[str, Any]]:
    """Path, sha256 and ``check_min_version`` string of each of diffusers' scripts the methods need."""
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        path = folder / SCRIPTS[method]
        if not path.is_file():
            raise SystemExit(f"sd_vs_diffusers: {path} not found. --diffusers-examples must name the folder holding "
                             f"{' and '.join(SCRIPTS.values())} (examples/text_to_image of a diffusers checkout at "
                             "the installed release's tag; see this script's docstring)")
        text = path.read_bytes()
        found = re.search(r'check_min_version\(\s*"([^"]+)"\s*\)', text.decode("utf-8", "replace"))
        out[method] = {"path": str(path), "sha256": hashlib.sha256(text).hexdigest(),
                       "check_min_version": found.group(1) if found else None}
    return out


def examples_commit(folder: Path) -> str | None:
    """The diffusers commit of the scripts' folder: for a copy of the scripts (an offline GPU
    machine) the hash in a ``COMMIT`` file beside them, else the folder's git checkout's HEAD."""
    if (folder / "COMMIT").is_file():
        return (folder / "COMMIT").read_text(encoding="utf-8").strip() or None
    return git_commit(folder)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "datasets", "torchvision"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------- model and data
def build_components(tiny: bool, device: torch.device, captions: list[str], tok_dir: Path) -> SDComponents:
    """The SD 1.5 architecture (or tiny configs), random weights, with a local tokenizer covering ``captions``."""
    if tiny:
        return build_tiny(captions, tok_dir)
    comp = build_sd15(device if device.type == "cuda" else "cpu")
    # the real 49,408-token vocabulary is not needed for cost: a small local one, same 77 tokens
    comp.tokenizer = load_tiny_tokenizer(captions, tok_dir)
    return comp


def save_pipeline(comp: SDComponents, folder: Path) -> None:
    """A diffusers pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/, model_index.json
    with no safety checker or feature extractor) that ``StableDiffusionPipeline.from_pretrained`` loads."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer,
                                   unet=comp.unet, scheduler=comp.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)


def write_images(data: RandomImages, folder: Path) -> None:
    """``data``'s images as RGB PNGs plus an imagefolder ``metadata.jsonl`` (``file_name``, ``text``)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(len(data)):
        item = data[i]
        px = ((item["pixel_values"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        name = f"{i:05d}.png"
        Image.fromarray(px, "RGB").save(folder / name)
        lines.append(json.dumps({"file_name": name, "text": item["caption"]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


class FolderImages(torch.utils.data.Dataset):
    """The imagefolder :func:`write_images` wrote, decoded from PNG at every access (as diffusers' scripts do)."""

    def __init__(self, folder: Path) -> None:
        meta = [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines() if line]
        self.files = [folder / m["file_name"] for m in meta]
        self.caps = [m["text"] for m in meta]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        import numpy as np
        from PIL import Image

        with Image.open(self.files[i]) as im:
            px = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())
        return {"pixel_values": px.permute(2, 0, 1).float() / 127.5 - 1, "caption": self.caps[i]}


# ---------------------------------------------------------------------------- measurements
def step_stats(times: list[float], batch: int) -> dict[str, Any]:
    """Median step time and samples/s of the timed steps."""
    if not times:
        return {"step_time_s": None, "samples_per_s": None, "step_times_s": []}
    t = statistics.median(times)
    return {"step_time_s": t, "samples_per_s": batch / t, "step_times_s": times}


def flops(method: str, batch: int, resolution: int, cached: dict[str, bool], tiny: bool) -> float | None:
    """Model TFLOPs of one step (None for tiny models: the counts are SD 1.5's)."""
    if tiny:
        return None
    text = 0.0 if cached["text"] else TEXT_TFLOP * batch
    return model_tflops(method, batch, resolution, cached["latents"]) + text


def with_mfu(row: dict[str, Any], peak: float) -> dict[str, Any]:
    t, f = row.get("step_time_s"), row.get("model_tflops_per_step")
    row["achieved_tflops"] = f / t if (t and f) else None
    row["mfu"] = f / t / peak if (t and f) else None
    return row


def diffusers_args(method: str, args: argparse.Namespace, model_dir: Path, data_dir: Path, work: Path) -> list[str]:
    """Command-line arguments of diffusers' script for ``method``: the settings of the book's run."""
    out = ["--pretrained_model_name_or_path", str(model_dir), "--train_data_dir", str(data_dir),
           "--image_column", "image", "--caption_column", "text", "--resolution", str(args.resolution),
           "--center_crop", "--train_batch_size", str(args.batch), "--gradient_accumulation_steps", "1",
           "--max_train_steps", str(diffusers_steps(args)), "--learning_rate", str(learning_rate(method)),
           "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--adam_weight_decay", "1e-2",
           "--max_grad_norm", "1.0", "--mixed_precision", PRECISION[args.precision],
           "--dataloader_num_workers", str(args.dataloader_num_workers), "--output_dir", str(work / "output"),
           "--cache_dir", str(work / "datasets-cache"), "--checkpointing_steps", str(10**9), "--seed", "0",
           "--report_to", "tensorboard"]          # parsed only: the timing shim passes log_with=None
    if not args.no_checkpointing:
        out.append("--gradient_checkpointing")
    if method == "lora":
        out += ["--rank", str(lora_options()["r"])]
    return out


def diffusers_steps(args: argparse.Namespace) -> int:
    """Steps of diffusers' run: one more than the book's, so that each timed interval (the end of one
    backward pass to the next) holds one whole step after the warm-up, optimizer step included."""
    return args.warmup + args.steps + 1


def learning_rate(method: str) -> float:
    """The book's learning rate for the method (constant), given to both runners."""
    return LR["peft"] if SD_METHODS[method].peft else LR[method]


def lora_options() -> dict[str, Any]:
    return dict(SD_METHODS["lora"].defaults)


def run_diffusers(method: str, script: Path, argv: list[str], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one of diffusers' scripts through the timing shim; a row, with the log's tail on failure."""
    work.mkdir(parents=True, exist_ok=True)
    times, log = work / "times.json", work / "log.txt"
    env = {**os.environ, "SDVD_TIMES": str(times), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_DYNAMO_BACKEND",
                "ACCELERATE_DYNAMO_MODE"):
        env.pop(key, None)          # one plain process, whatever launched this one
    mode = COMPILE[args.diffusers_compile]
    if mode:                        # Accelerate compiles the prepared UNet itself; the script is unchanged
        env["ACCELERATE_DYNAMO_BACKEND"] = "inductor"
        env["ACCELERATE_DYNAMO_MODE"] = "reduce-overhead" if mode == "cudagraphs" else "default"
    row: dict[str, Any] = {"runner": "diffusers", "method": method, "script": script.name,
                           "cached_latents": False, "cached_text": False, "compile": mode}
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        try:
            done = subprocess.run([sys.executable, str(SHIM), str(script), *argv], check=False, env=env, stdout=fh,
                                  stderr=subprocess.STDOUT, timeout=args.timeout)
            row["returncode"] = done.returncode
        except subprocess.TimeoutExpired:
            row["returncode"] = None
            row["error"] = f"timed out after {args.timeout} s"
    row["wall_s"] = time.perf_counter() - t0
    rec = json.loads(times.read_text(encoding="utf-8")) if times.is_file() else {}
    ends = rec.get("backward_end_s", [])
    deltas = [b - a for a, b in itertools.pairwise(ends)]
    # delta k runs from backward k's end to backward k+1's: step k's optimizer step, then step k+1's data,
    # encoders, forward and backward. Deltas warmup .. warmup+steps-1 leave the warm-up steps out entirely.
    row.update(step_stats(deltas[args.warmup:args.warmup + args.steps], args.batch))
    row["backward_calls"] = len(ends)
    row["trackers_requested"] = rec.get("log_with_requested")
    mems = rec.get("max_memory_allocated_at_backward", [])
    row["peak_memory_bytes"] = mems[-1] if mems else None
    row["max_memory_allocated_at_exit"] = rec.get("max_memory_allocated_at_exit")
    row["model_tflops_per_step"] = flops(method, args.batch, args.resolution, {"latents": False, "text": False},
                                         args.tiny)
    if row["returncode"] != 0 or len(ends) != diffusers_steps(args):
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.is_file() else ""
        row["error"] = (row.get("error", f"return code {row['returncode']}, {len(ends)} backward calls "
                                         f"(expected {diffusers_steps(args)})") + "\n" + tail)
    return row


def run_ours(method: str, cache: bool, model_dir: Path, data: torch.utils.data.Dataset,
             args: argparse.Namespace, compile_mode: str | None = None) -> dict[str, Any]:
    """``train_sd`` on the saved pipeline's weights; a row (the error recorded on failure)."""
    device = torch.device(args.device)
    comp = load_pretrained(local_dir=model_dir)
    cfg = SDTrainConfig(steps=args.warmup + args.steps, batch_size=args.batch, grad_accum=1, resolution=args.resolution,
                        mixed_precision=None if args.precision == "fp32" else args.precision,
                        gradient_checkpointing=not args.no_checkpointing, use_8bit_adam=False,
                        lr=learning_rate(method), cache=cache, checkpoint_every=10**9, max_grad_norm=1.0, seed=0,
                        compile=compile_mode)
    row: dict[str, Any] = {"runner": "nbsupport", "method": method, "cached_latents": cache, "cached_text": cache,
                           "compile": compile_mode}
    t0 = time.perf_counter()
    try:
        before = _compile_stats.snapshot()
        res = train_sd(comp, method, data, cfg, device, progress=True)
        if compile_mode:
            row["compile_stats"] = _compile_stats.since(before)
        row.update(step_stats(res.step_times[args.warmup:], args.batch))
        row.update({"cached_latents": res.cached["latents"], "cached_text": res.cached["text"],
                    "peak_memory_bytes": res.peak_memory_bytes, "trainable": res.trainable,
                    "notices": res.notices, "final_loss": res.losses[-1], "returncode": 0})
        row["model_tflops_per_step"] = flops(method, args.batch, args.resolution, res.cached, args.tiny)
    except torch.cuda.OutOfMemoryError as exc:
        row.update({"returncode": 1, "error": f"out of memory: {str(exc)[:300]}"})
    except RuntimeError as exc:        # record and go on: one run's failure is a result too
        row.update({"returncode": 1, "error": f"{exc.__class__.__name__}: {str(exc)[:500]}"})
    row["wall_s"] = time.perf_counter() - t0
    del comp
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def speedups(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Samples/s of the book's loop over diffusers', per method, with and without cached latents."""
    def rate(runner: str, method: str, cached: bool | None = None, mode: str | None = None) -> float | None:
        for r in rows:
            if (r["runner"] == runner and r["method"] == method and (cached is None or r["cached_latents"] == cached)
                    and (runner == "diffusers" or r.get("compile") == mode)):   # diffusers: one mode per run
                return r.get("samples_per_s")
        return None

    modes = list(dict.fromkeys(r.get("compile") for r in rows if r["runner"] == "nbsupport"))
    out: dict[str, dict[str, float | None]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        theirs = rate("diffusers", method)
        out[method] = {f"{'cached' if c else 'uncached'}{f'_{m}' if m else ''}_over_diffusers":
                       (ours / theirs if (ours := rate("nbsupport", method, c, m)) and theirs else None)
                       for m in modes for c in (False, True)}
    return out


def describe(row: dict[str, Any]) -> str:
    label = (f"{row['runner']:9s} {row['method']:5s} cached={row['cached_latents']!s:5s}"
             + (f" compile={row['compile']}" if row.get("compile") else ""))
    if row.get("step_time_s") is None:
        return f"{label} FAILED: {row.get('error', '')[:200]}"
    mem = f"{row['peak_memory_bytes'] / 2**30:6.2f} GiB" if row.get("peak_memory_bytes") else "   n/a"
    mfu = f"MFU {100 * row['mfu']:5.1f}%" if row.get("mfu") is not None else ""
    return f"{label} {row['step_time_s'] * 1e3:9.1f} ms/step {row['samples_per_s']:7.2f} samples/s peak {mem} {mfu}"


# ---------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--diffusers-examples", type=Path, required=True,
                    help="folder holding diffusers' train_text_to_image.py and train_text_to_image_lora.py")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"],
                    help="cuda: the current GPU (choose one with CUDA_VISIBLE_DEVICES)")
    ap.add_argument("--precision", default="bf16", choices=list(PRECISION))
    ap.add_argument("--no-checkpointing", action="store_true", help="no gradient checkpointing (both runners)")
    ap.add_argument("--methods", nargs="*", default=list(SCRIPTS), choices=list(SCRIPTS))
    ap.add_argument("--runners", nargs="*", default=["diffusers", "nbsupport"], choices=["diffusers", "nbsupport"])
    ap.add_argument("--images", type=int, default=None,
                    help="training images (default: batch x (warmup + steps + 1): one epoch, no epoch boundary)")
    ap.add_argument("--dataloader-num-workers", type=int, default=0, help="diffusers' --dataloader_num_workers")
    ap.add_argument("--our-data", choices=["png", "memory"], default="png",
                    help="the book's loop reads the PNGs (as diffusers' scripts do) or in-memory tensors")
    ap.add_argument("--compile", nargs="+", default=["none"], choices=list(COMPILE),
                    help="the book's loop in each of these modes (SDTrainConfig.compile), side by side")
    ap.add_argument("--diffusers-compile", default="none", choices=list(COMPILE),
                    help="diffusers' scripts under Accelerate's torch.compile (ACCELERATE_DYNAMO_BACKEND=inductor, "
                         "ACCELERATE_DYNAMO_MODE: default or reduce-overhead), the scripts unchanged")
    ap.add_argument("--tiny", action="store_true", help="tiny random models (smoke runs): no FLOP counts, no MFU")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per diffusers script run")
    ap.add_argument("--workdir", type=Path, default=None, help="for the pipeline, images and logs (default: a temp dir)")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (the first step of each runner is not representative)")
    if (set(args.compile) != {"none"} or args.diffusers_compile != "none") and args.warmup < 3:
        ap.error("compiled runs need --warmup 3 or more (compilation, then CUDA-graph warm-up and recording)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    return args


def prepare_inputs(args: argparse.Namespace, work: Path) -> tuple[Path, Path, RandomImages]:
    """Save the pipeline folder and the imagefolder; returns their paths and the in-memory images."""
    data = RandomImages(args.images or max(4, args.batch * diffusers_steps(args)), args.resolution)
    model_dir, data_dir = work / "model", work / "data"
    print(f"building {'tiny' if args.tiny else 'SD 1.5'} random pipeline -> {model_dir}", flush=True)
    comp = build_components(args.tiny, torch.device(args.device), data.caps, work / "tokenizer-src")
    save_pipeline(comp, model_dir)
    del comp
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()       # diffusers' runs, in other processes, need the memory
    print(f"writing {len(data)} PNGs at {args.resolution} px -> {data_dir}", flush=True)
    write_images(data, data_dir)
    return model_dir, data_dir, data


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if "diffusers" in args.runners:
        require_packages()
        scripts = script_info(args.diffusers_examples.resolve(), args.methods)
    else:
        scripts = {}
    device = torch.device(args.device)
    name = device_name(device)
    peak, how = measured_peak_tflops(device)
    print(f"device: {name}; measured peak {peak:.1f} TFLOP/s ({how})", flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sd_vs_diffusers-")).resolve()
    rows: list[dict[str, Any]] = []
    try:
        model_dir, data_dir, images = prepare_inputs(args, work)
        data = FolderImages(data_dir) if args.our_data == "png" else images
        for method in args.methods:
            if "diffusers" in args.runners:
                print(f"diffusers {SCRIPTS[method]} (log: {work / f'diffusers-{method}' / 'log.txt'})", flush=True)
                argv_d = diffusers_args(method, args, model_dir, data_dir, work / f"diffusers-{method}")
                rows.append(run_diffusers(method, Path(scripts[method]["path"]), argv_d, work / f"diffusers-{method}",
                                          args))
                shutil.rmtree(work / f"diffusers-{method}" / "output", ignore_errors=True)
                print(describe(with_mfu(rows[-1], peak)), flush=True)
            if "nbsupport" in args.runners:
                for mode in args.compile:
                    for cache in (False, True):
                        rows.append(with_mfu(run_ours(method, cache, model_dir, data, args, COMPILE[mode]), peak))
                        print(describe(rows[-1]), flush=True)
    finally:
        if not args.keep_workdir and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    lora = lora_options()
    result = {
        "benchmark": "sd_vs_diffusers", "device": name, "model": "tiny random" if args.tiny else "SD 1.5 architecture, random weights",
        "settings": {"resolution": args.resolution, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                     "precision": args.precision, "gradient_checkpointing": not args.no_checkpointing,
                     "grad_accum": 1, "diffusers_max_train_steps": diffusers_steps(args),
                     "optimizer": "torch AdamW (weight decay 1e-2; no 8-bit)", "max_grad_norm": 1.0,
                     "learning_rates": {m: learning_rate(m) for m in args.methods}, "allow_tf32": False,
                     "images": len(images), "dataloader_num_workers": args.dataloader_num_workers,
                     "our_data": args.our_data, "our_compile_modes": args.compile,
                     "diffusers_compile": args.diffusers_compile},
        "lora": {"nbsupport": {"r": lora["r"], "alpha": lora["alpha"], "targets": list(LORA_TARGETS),
                               "init": "gaussian", "trainable_dtype": "fp32"},
                 "diffusers": {"rank": lora["r"], "alpha": lora["r"], "targets": ["to_k", "to_q", "to_v", "to_out.0"],
                               "init": "gaussian",
                               "trainable_dtype": "fp32 under fp16, else the UNet's weight dtype (bf16 under bf16)"}},
        "diffusers_scripts": {"folder": str(args.diffusers_examples.resolve()),
                              "git_commit": examples_commit(args.diffusers_examples) if scripts else None,
                              "scripts": scripts, "timing_shim": SHIM.name},
        "measured_peak_tflops": peak, "peak_measured_with": how,
        "flops": {"unet_forward_tflop_per_sample_512": 0.80, "vae_encoder_tflop_per_sample_512": 1.1,
                  "text_encoder_tflop_per_sample": TEXT_TFLOP, "counted": "tiny: none" if args.tiny else
                  "UNet (3x forward when it trains, 2.15x for LoRA); VAE encoder and text encoder forward when not cached"},
        "versions": versions(), "notes": NOTES,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": rows, "speedup": speedups(rows),
    }
    modes = ("" if args.compile == ["none"] else "-" + "-".join(args.compile)) + (
        "" if args.diffusers_compile == "none" else f"-diffusers-{args.diffusers_compile}")   # one file per setting
    write_benchmark(args.out, "sd_vs_diffusers", name, f"-r{args.resolution}-b{args.batch}-{args.precision}{modes}",
                    result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
