"""Images/s of the evaluation generation (50 DDIM steps, classifier-free guidance 7.5, batch 16 at
512 px): the book's path against diffusers' own ``StableDiffusionPipeline``, on the same device,
model and prompts, in one run, in each ``--compile`` mode.

- book: ``nbsupport.sd.sampling.sample`` on one ``make_pipeline`` pipeline (what
  ``generate_to_disk`` calls per batch) over fp32 components, as loaded or fine-tuned, sampled
  under the half-precision autocast of ``sampling.sampling_dtype``; compiled through
  ``make_pipeline(compile=...)``.
- diffusers: the pipeline with every model cast to that half dtype (what a ``torch_dtype=`` load
  gives); compiled as diffusers' docs show, ``pipe.unet = torch.compile(pipe.unet, mode=...)``.

Both write every image as a PNG and use the DDIM scheduler (the book's default; the SD 1.5
snapshot's own default is PNDM). The SD 1.5 architecture is built with random weights (cost does
not depend on the values) and a small local tokenizer.

    python benchmarks/sd_sampling.py --batch 16 --batches 3 --warmup 2 --compile none cudagraphs
    python benchmarks/sd_sampling.py --tiny --device cpu --resolution 64 --steps 2 --batch 2   # smoke

Per runner and mode: the first ``--warmup`` batches are untimed (compilation and CUDA-graph
recording happen there); then the median seconds per batch of ``--batches`` timed ones, images/s,
peak memory, what torch.compile did (graphs, breaks, CUDA-graph skips), and the UNet's model-FLOP
utilisation (``steps x 2 x 0.80 TFLOP`` per 512-px image over the measured dense bf16 peak; the VAE
decoder and text encoder are not counted). Writes
``<out>/sd_sampling-<device>-r<resolution>-b<batch>.json``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _compile_stats  # noqa: E402
from nbsupport.core.records import write_benchmark  # noqa: E402
from nbsupport.sd import sampling  # noqa: E402
from peft_cost import measured_peak_tflops  # noqa: E402
from sd_cost import UNET_TFLOP  # noqa: E402
from sd_vs_diffusers import build_components, device_name, versions  # noqa: E402

MODES = {"none": None, "default": "default", "cudagraphs": "cudagraphs", "max-autotune": "max-autotune"}
RUNNERS = ("diffusers", "book")


def prompts_for(n: int) -> list[str]:
    return [f"colour fundus photograph, grade {i % 5} diabetic retinopathy, case {i}" for i in range(n)]


def timed(run_batch: Callable[[int], None], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Run ``--warmup`` + ``--batches`` batches; per-batch seconds after a device synchronise."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = _compile_stats.snapshot()
    times, warm = [], []
    for b in range(args.warmup + args.batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        run_batch(b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        (warm if b < args.warmup else times).append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"batch_s": t, "images_per_s": args.batch / t, "batch_times_s": times, "warmup_times_s": warm,
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
            "compile_stats": _compile_stats.since(before)}


def diffusers_batches(args: argparse.Namespace, device: torch.device, work: Path,
                      mode: str | None) -> tuple[Callable[[int], None], str]:
    """diffusers' pipeline in the half dtype (fp32 on the CPU); PIL images saved as PNGs."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    comp = build_components(args.tiny, device, prompts_for(args.batch), work / "tok")
    dtype = sampling.sampling_dtype(device) or torch.float32
    pipe = StableDiffusionPipeline(vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer,
                                   unet=comp.unet, scheduler=DDIMScheduler.from_config(comp.scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(device, dtype)
    if mode:
        torch._dynamo.reset()
        pipe.unet = torch.compile(pipe.unet, mode=sampling.COMPILE_MODES[mode])
    pipe.set_progress_bar_config(disable=True)
    out = work / f"diffusers-{mode}"
    out.mkdir(parents=True, exist_ok=True)
    prompts = prompts_for(args.batch)

    def batch(b: int) -> None:
        gens = [torch.Generator("cpu").manual_seed(b * args.batch + i) for i in range(args.batch)]
        images = pipe(prompts, height=args.resolution, width=args.resolution, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, generator=gens).images
        for i, im in enumerate(images):
            im.save(out / f"{b}-{i}.png")

    return batch, str(dtype).replace("torch.", "")


def book_batches(args: argparse.Namespace, device: torch.device, work: Path,
                 mode: str | None) -> tuple[Callable[[int], None], str]:
    """``sampling.sample`` over fp32 components, one pipeline for every batch; PNGs saved."""
    from PIL import Image

    comp = build_components(args.tiny, device, prompts_for(args.batch), work / "tok").to(device)
    pipe = sampling.make_pipeline(comp, "ddim", device, compile=mode)
    out = work / f"book-{mode}"
    out.mkdir(parents=True, exist_ok=True)
    prompts = prompts_for(args.batch)
    kw = dict(resolution=args.resolution, steps=args.steps, guidance_scale=args.guidance, device=device)

    def batch(b: int) -> None:
        seeds = [b * args.batch + i for i in range(args.batch)]
        for i, im in enumerate(sampling.sample(comp, prompts, seeds, pipe=pipe, **kw)):
            Image.fromarray(im).save(out / f"{b}-{i}.png")

    half = sampling.sampling_dtype(device, comp.unet)
    return batch, f"float32 weights, autocast {str(half).replace('torch.', '')}" if half else "float32"


def run(runner: str, mode: str | None, args: argparse.Namespace, device: torch.device, work: Path) -> dict[str, Any]:
    """One row: the runner's batches timed in one compile mode; an out-of-memory error is a result too."""
    row: dict[str, Any] = {"runner": runner, "compile": mode}
    try:
        batch, row["dtype"] = (diffusers_batches if runner == "diffusers" else book_batches)(args, device, work, mode)
        row.update(timed(batch, args, device))
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"out of memory: {str(exc)[:200]}"
    gc.collect()
    return row


def ratios(rows: list[dict[str, Any]], modes: list[str]) -> dict[str, dict[str, float | None]]:
    """Images/s ratios: the book over diffusers per mode, and each runner compiled over eager."""
    def rate(runner: str, mode: str | None) -> float | None:
        return next((r.get("images_per_s") for r in rows if r["runner"] == runner and r["compile"] == mode), None)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    return {"book_over_diffusers": {m: ratio(rate("book", MODES[m]), rate("diffusers", MODES[m])) for m in modes},
            "compiled_over_eager": {f"{runner}_{m}": ratio(rate(runner, MODES[m]), rate(runner, None))
                                    for runner in RUNNERS for m in modes if m != "none"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=3, help="timed batches (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--compile", nargs="+", default=["none"], choices=list(MODES),
                    help="both runners in each of these modes (the UNet through torch.compile), side by side")
    ap.add_argument("--tiny", action="store_true", help="tiny random models (smoke runs): no FLOP counts")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (first-call costs land there)")
    if set(args.compile) != {"none"} and args.warmup < 2:
        ap.error("compiled modes need --warmup 2 or more (compilation, then CUDA-graph recording)")
    device = torch.device(args.device)
    name = device_name(device)
    peak, how = measured_peak_tflops(device)
    print(f"device: {name}; measured peak {peak:.1f} TFLOP/s ({how})", flush=True)
    flop_per_image = None if args.tiny else args.steps * 2 * UNET_TFLOP * (args.resolution / 512) ** 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="sd_sampling-") as tmp:
        for m in args.compile:
            for runner in RUNNERS:
                row = run(runner, MODES[m], args, device, Path(tmp))
                if flop_per_image and "images_per_s" in row:
                    row["unet_mfu"] = row["images_per_s"] * flop_per_image / peak
                rows.append(row)
                if "error" in row:
                    print(f"{runner:9s} compile={m:12s} {row['error'][:100]}", flush=True)
                else:
                    mfu = f" UNet MFU {100 * row['unet_mfu']:.1f}%" if "unet_mfu" in row else ""
                    print(f"{runner:9s} compile={m:12s} {row['batch_s']:8.2f} s/batch {row['images_per_s']:7.2f} "
                          f"images/s{mfu} ({row['dtype']})", flush=True)
    result = {"benchmark": "sd_sampling", "device": name,
              "model": "tiny random" if args.tiny else "SD 1.5 architecture, random weights",
              "settings": {"resolution": args.resolution, "batch": args.batch, "batches": args.batches,
                           "warmup": args.warmup, "steps": args.steps, "guidance_scale": args.guidance,
                           "scheduler": "DDIM", "images_saved_as": "PNG", "compile_modes": args.compile},
              "measured_peak_tflops": peak, "peak_measured_with": how,
              "unet_tflop_per_image": flop_per_image, "versions": versions(),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "results": rows,
              **ratios(rows, args.compile)}
    write_benchmark(args.out, "sd_sampling", name, f"-r{args.resolution}-b{args.batch}", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
