"""Expected training time of the ``full`` profile per configuration, from measured step times.

Reads the H100 measurements of ``sd_cost.py`` (512 px, batch 8, bf16) and ``peft_cost.py``
(ViT-B/16, 224 px, batch 64, bf16) and multiplies them out to the ``full`` profile's schedule:
Stable Diffusion ``sd_steps x sd_grad_accum`` micro-batches of ``sd_batch_size``; classification
``epochs x ceil(n_train / 64)`` steps at batch 64 (the measured batch; the profile's batch of 50
takes about the same time per image). Several GPUs: the ideal division by the number of GPUs
(DDP keeps each GPU's batch; the gradient exchange and a per-GPU batch of 2 at 4 GPUs make the real
figure somewhat higher). Evaluation, sampling and data loading are not counted.

    python benchmarks/full_profile_time.py [--n-train 2930]

writes ``results/full_profile_time-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from nbsupport.core.profiles import get_profile

HERE = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sd", default="sd_cost-nvidia-h100-80gb-hbm3-r512-b8-bf16.json")
    ap.add_argument("--vit", default="peft_cost-nvidia-h100-80gb-hbm3-b64.json")
    ap.add_argument("--n-train", type=int, default=2930,
                    help="classification training images (default: APTOS 2019's 3,662 images less 20%% test)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    p = get_profile("full")
    sd, vit = (json.loads((HERE / f).read_text()) for f in (args.sd, args.vit))
    if sd["batch"] != p.sd_batch_size:
        raise SystemExit(f"{args.sd} measured batch {sd['batch']}, the full profile uses {p.sd_batch_size}")
    micro = p.sd_steps * p.sd_grad_accum
    steps_per_epoch = math.ceil(args.n_train / vit["batch"])
    rows = []
    for r in sd["results"]:
        hours = micro * r["step_time_s"] / 3600
        rows.append({"family": "sd", "method": r["method"], "measured_step_s": r["step_time_s"],
                     "schedule": f"{p.sd_steps} steps x {p.sd_grad_accum} micro-batches of {p.sd_batch_size}",
                     **{f"hours_{g}_gpu": hours / g for g in args.gpus},
                     "peak_gib_per_gpu": r["peak_memory_bytes"] / 2**30})
    for r in vit["results"]:
        hours = p.epochs * steps_per_epoch * r["step_time_s"] / 3600
        rows.append({"family": "vit", "method": r["method"], "measured_step_s": r["step_time_s"],
                     "schedule": f"{p.epochs} epochs x {steps_per_epoch} steps of {vit['batch']} ({args.n_train} images)",
                     **{f"hours_{g}_gpu": hours / g for g in args.gpus},
                     "peak_gib_per_gpu": r["peak_memory_bytes"] / 2**30})
    out = {"benchmark": "full_profile_time", "device": sd["device"], "from": [args.sd, args.vit],
           "scaling": "ideal (time / GPUs); excludes evaluation, sampling and data loading", "rows": rows}
    name = re.sub(r"[^a-z0-9]+", "-", sd["device"].lower()).strip("-")
    path = HERE / f"full_profile_time-{name}.json"
    path.write_text(json.dumps(out, indent=1))
    for r in rows:
        print(f"{r['family']:4s} {r['method']:18s} " + "  ".join(f"{g} GPU {r[f'hours_{g}_gpu']:6.2f} h" for g in args.gpus))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
