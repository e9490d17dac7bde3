"""Step time, samples/s, peak memory and model-FLOP utilisation of every Stable Diffusion
fine-tuning method at 512 px, through the book's own training loop (nbsupport.sd.train).

The SD 1.5 architecture is built from its configs with random weights (cost does not depend on
their values); the memory savers are the loop's: bf16 autocast on GPUs that support it (fp16 +
GradScaler otherwise), trainable parameters in fp32, frozen models in half precision, gradient
checkpointing, 8-bit AdamW when bitsandbytes is installed (else AdamW, noted in the result), and
VAE latents / text embeddings cached when the VAE / text encoder is frozen.

    python benchmarks/sd_cost.py --batch 1 --steps 6
    python benchmarks/sd_cost.py --device cpu --resolution 64 --steps 2 --methods lora   # a smoke run

Model FLOPs per sample (at 512 px): UNet forward 0.80 TFLOP; a step that trains UNet weights costs
3x that, one that only back-propagates through the frozen UNet (PEFT, text encoder, VAE) 2.15x;
the VAE encoder adds 1.1 TFLOP forward when latents are not cached (3x when the VAE trains; the
decoder of the VAE's reconstruction loss is not counted). Writes
``benchmarks/results/sd_cost-<device>-b<batch>.json``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nbsupport.core.records import write_benchmark  # noqa: E402
from nbsupport.sd.methods import SD_METHODS  # noqa: E402
from nbsupport.sd.models import build_sd15  # noqa: E402
from nbsupport.sd.tokenizer import load_tiny_tokenizer  # noqa: E402
from nbsupport.sd.train import SDTrainConfig, train_sd  # noqa: E402
import _compile_stats  # noqa: E402
from peft_cost import measured_peak_tflops  # noqa: E402

UNET_TFLOP, VAE_ENC_TFLOP = 0.80, 1.1


class RandomImages(torch.utils.data.Dataset):
    """``n`` random images in [-1, 1] with distinct captions."""

    def __init__(self, n: int, resolution: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1
        self.caps = [f"chest x-ray number {i} showing edema and effusion" for i in range(n)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.x[i], "caption": self.caps[i]}


def model_tflops(method: str, batch: int, resolution: int, cached_latents: bool) -> float:
    spec = SD_METHODS[method]
    scale = (resolution / 512) ** 2
    unet = UNET_TFLOP * (3.0 if "unet" in spec.full else 2.15)
    vae = 0.0 if cached_latents else VAE_ENC_TFLOP * (3.0 if spec.trains_vae else 1.0)
    return (unet + vae) * batch * scale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--compile", default=None, choices=["default", "cudagraphs"],
                    help="SDTrainConfig.compile: torch.compile of the step (cudagraphs: with CUDA graphs)")
    ap.add_argument("--methods", nargs="*", default=list(SD_METHODS))
    ap.add_argument("--tag", default="", help="suffix for the result file name (e.g. what the run changed)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    if args.compile and args.warmup < 3:
        ap.error("--compile needs --warmup 3 or more (compilation, then CUDA-graph warm-up and recording, "
                 "fall in the first steps)")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"
    peak, how = measured_peak_tflops(device)
    print(f"device: {name}; measured peak {peak:.1f} TFLOP/s ({how})")
    data = RandomImages(max(4, args.batch), args.resolution)
    rows = []
    for method in args.methods:
        comp = build_sd15(device if device.type == "cuda" else "cpu")
        # the real 49,408-token vocabulary is not needed for cost: a small local one, same 77 tokens
        comp.tokenizer = load_tiny_tokenizer(data.caps, Path(tempfile.gettempdir()) / "sd_cost_tok")
        cfg = SDTrainConfig(steps=args.warmup + args.steps, batch_size=args.batch, grad_accum=1,
                            resolution=args.resolution,
                            mixed_precision=None if args.precision == "fp32" else args.precision,
                            gradient_checkpointing=not args.no_checkpointing, checkpoint_every=10**9,
                            compile=args.compile)
        try:
            before = _compile_stats.snapshot()
            res = train_sd(comp, method, data, cfg, device, progress=False)
            t = statistics.median(res.step_times[args.warmup:])
            flops = model_tflops(method, args.batch, args.resolution, res.cached["latents"])
            row = {"method": method, "trainable": res.trainable, "step_time_s": t, "samples_per_s": args.batch / t,
                   "peak_memory_bytes": res.peak_memory_bytes, "model_tflops_per_step": flops,
                   "achieved_tflops": flops / t, "mfu": flops / t / peak, "cached": res.cached, "notices": res.notices,
                   "final_loss": res.losses[-1], **({"compile_stats": _compile_stats.since(before)} if args.compile else {})}
        except torch.cuda.OutOfMemoryError as exc:
            row = {"method": method, "error": f"out of memory: {str(exc)[:200]}"}
        except RuntimeError as exc:   # record and go on: one method's failure is a result too
            row = {"method": method, "error": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
        rows.append(row)
        if "error" in row:
            print(f"{method:18s} {row['error'][:80]}")
        else:
            mem = f"{row['peak_memory_bytes'] / 2**30:6.2f} GiB" if row["peak_memory_bytes"] else "   n/a"
            print(f"{method:18s} {t * 1e3:8.1f} ms/step {row['samples_per_s']:6.2f} samples/s peak {mem} "
                  f"MFU {100 * row['mfu']:5.1f}%  trainable {row['trainable']:,}")
        del comp
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    import diffusers

    result = {"benchmark": "sd_cost", "device": name, "resolution": args.resolution, "batch": args.batch,
              "steps": args.steps, "warmup": args.warmup, "precision": args.precision,
              "gradient_checkpointing": not args.no_checkpointing, "compile": args.compile, "measured_peak_tflops": peak,
              "peak_measured_with": how, "unet_forward_tflop_per_sample_512": UNET_TFLOP,
              "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                           "python": platform.python_version()},
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "results": rows}
    suffix = (f"-r{args.resolution}-b{args.batch}-{args.precision}" + ("-no-checkpointing" if args.no_checkpointing else "")
              + (f"-{args.compile}" if args.compile else "")
              + (f"_{args.tag}" if args.tag else ""))
    write_benchmark(args.out, "sd_cost", name, suffix, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
