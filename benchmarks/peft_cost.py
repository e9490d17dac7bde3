"""Step time, throughput, peak memory and model-FLOP utilisation of every classification method.

ViT-B/16 at 224 px (built without weights: cost does not depend on their values), one AdamW
training step per iteration on a fixed random batch, bf16 autocast on CUDA (fp32 on CPU).

    python benchmarks/peft_cost.py --batch 64 --steps 20            # CUDA when available
    python benchmarks/peft_cost.py --device cpu --batch 2 --steps 2 --warmup 1

Model FLOPs per image: ViT-B/16 forward = 35.1 GFLOP at 224 px. A step costs 3x that when weights
get gradients (full fine-tuning), 2x for frozen-weight PEFT (the backward still runs through every
layer for the activations), 1x for the linear probe (nothing below the head needs gradients).
MFU = achieved model FLOP/s / the device's measured dense matmul peak (bf16 on CUDA, fp32 on CPU).
Each row also counts, in one eager forward and backward, the aten operators dispatched (what bounds
an eager step when the GPU waits on Python) and the FLOPs really computed (``torch.utils.flop_counter``;
a method whose backward asks for a frozen weight's gradient shows about 3x forward instead of 2x).
Writes ``benchmarks/results/peft_cost-<device>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbsupport.core.records import write_benchmark  # noqa: E402
from nbsupport.vit import methods  # noqa: E402
from nbsupport.vit.backbones import count_parameters  # noqa: E402

VIT_B16_FWD_GFLOP = 35.1
STEP_MULTIPLIER = {"full": 3.0, "linear": 1.0}   # others: 2.0


def measured_peak_tflops(device: torch.device) -> tuple[float, str]:
    """Dense matmul throughput: bf16 8192^3 on CUDA (mean of 10 timed runs), fp32 2048^3 on CPU
    (fastest of 10: CPU timings are noisy)."""
    if device.type == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 10
    else:
        n, dtype, reps = 2048, torch.float32, 10
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / reps
        how = "mean"
    else:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        dt = min(times)
        how = "fastest"
    return 2 * n**3 / dt / 1e12, f"{str(dtype).replace('torch.', '')} matmul {n}^3, {how} of {reps}"


def bench_method(method: str, batch: int, steps: int, warmup: int, device: torch.device,
                 backbone: str, img: int, compile_model: bool | str, config: dict | None = None) -> dict:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(backbone, pretrained=False, num_classes=5, img_size=img)
    model = methods.adapt(model, method, **(config or {})).to(device)
    params = methods.trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(batch, 3, img, img, device=device)
    y = torch.randint(0, 5, (batch,), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    if compile_model == "cudagraphs":
        step_model = torch.compile(model, mode="reduce-overhead")
    elif compile_model:
        step_model = torch.compile(model)
    else:
        step_model = model
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(step_model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    ops, counted = count_forward_backward(model, x, y, dtype)
    mult = STEP_MULTIPLIER.get(method, 2.0)
    flops_per_step = mult * VIT_B16_FWD_GFLOP * 1e9 * batch * (img / 224) ** 2
    row = {
        "method": method,
        "config": model.nbsupport_method["config"],
        "trainable": count_parameters(model, trainable_only=True),
        "step_time_s": dt,
        "images_per_s": batch / dt,
        "peak_memory_bytes": peak,
        "model_flops_per_step": flops_per_step,
        "achieved_tflops": flops_per_step / dt / 1e12,
        "step_flop_multiplier": mult,
        "eager_ops_forward_backward": ops,
        "counted_flops_forward_backward": counted,
        "counted_flops_per_image_over_forward": counted / (batch * VIT_B16_FWD_GFLOP * 1e9 * (img / 224) ** 2),
    }
    return row


class _OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.n += 1
        return func(*args, **(kwargs or {}))


def count_forward_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                           dtype: torch.dtype | None) -> tuple[int, float]:
    """Aten operators dispatched, and FLOPs counted by ``torch.utils.flop_counter``, in one eager
    forward and backward (no optimizer step) of ``model`` on ``x [B, 3, H, W]``.

    The operator count is what bounds an eager step when the GPU waits on Python (each operator
    costs microseconds of CPU dispatch, whatever its size); the counted FLOPs show what a method's
    backward really computes (a frozen weight's gradient matmul, if anything asks for it, shows up
    as a third forward's worth)."""
    with _OpCounter() as ops, FlopCounterMode(display=False) as flops:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return ops.n, float(flops.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--methods", nargs="*", default=list(methods.METHODS))
    ap.add_argument("--compile", nargs="?", const="default", default=None, choices=["default", "cudagraphs"],
                    help="torch.compile the model (cudagraphs: mode='reduce-overhead', CUDA graphs)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                    help="override a method option, e.g. --set dvpt.heads=1")
    ap.add_argument("--tag", default="", help="suffix for the result file name")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    peak_tflops, peak_how = measured_peak_tflops(device)
    print(f"device: {name}; measured peak {peak_tflops:.1f} TFLOP/s ({peak_how})")
    overrides: dict[str, dict] = {}
    for item in args.set:
        key, value = item.split("=", 1)
        meth, opt = key.split(".", 1)
        overrides.setdefault(meth, {})[opt] = json.loads(value) if value[:1] in "0123456789-[{tf\"" else value
    rows = []
    for m in args.methods:
        row = bench_method(m, args.batch, args.steps, args.warmup, device, args.backbone, args.img,
                           "cudagraphs" if args.compile == "cudagraphs" else bool(args.compile),
                           overrides.get(m))
        gc.collect()          # the method's model and optimizer are gone with bench_method's frame
        if device.type == "cuda":
            torch.cuda.empty_cache()
        row["mfu"] = row["achieved_tflops"] / peak_tflops
        rows.append(row)
        mem = f"{row['peak_memory_bytes'] / 2**30:6.2f} GiB" if row["peak_memory_bytes"] else "   n/a"
        print(f"{m:12s} {row['step_time_s'] * 1e3:9.1f} ms/step {row['images_per_s']:8.1f} img/s "
              f"peak {mem}  MFU {100 * row['mfu']:5.1f}%  trainable {row['trainable']:,}  "
              f"{row['eager_ops_forward_backward']} ops, "
              f"{row['counted_flops_per_image_over_forward']:.2f}x forward FLOPs")
    result = {
        "benchmark": "peft_cost",
        "device": name,
        "device_type": device.type,
        "backbone": args.backbone,
        "image_size": args.img,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "precision": "bf16 autocast, fp32 params" if device.type == "cuda" else "fp32",
        "compiled": args.compile or False,
        "optimizer": "AdamW (fused on CUDA)",
        "measured_peak_tflops": peak_tflops,
        "peak_measured_with": peak_how,
        "vit_b16_forward_gflop_per_image": VIT_B16_FWD_GFLOP,
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     **{k: __import__(k).__version__ for k in ("timm", "peft")}},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": rows,
    }
    mode = {"default": "-compiled", "cudagraphs": "-cudagraphs"}.get(args.compile or "", "")
    write_benchmark(args.out, "peft_cost", name, f"-b{args.batch}{mode}{args.tag}", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
