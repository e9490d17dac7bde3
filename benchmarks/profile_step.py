"""Where does a training step's time go? The top GPU (or CPU) kernels of one method's step.

    python benchmarks/profile_step.py dvpt --batch 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbsupport.vit import methods  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("method")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--rows", type=int, default=15)
    args = ap.parse_args(argv)
    import timm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = methods.adapt(timm.create_model(args.backbone, pretrained=False, num_classes=5), args.method).to(device)
    params = methods.trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    y = torch.randint(0, 5, (args.batch,), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
