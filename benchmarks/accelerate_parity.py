"""Does a launched run train what the notebook path trains? One Stable Diffusion method, twice:
in this process (the chapters' path, no launcher) and under ``accelerate launch`` with N processes
(``--processes``; on a CPU use ``--torchrun``, as ``accelerate launch --cpu`` starts one process),
each in its own cache, then the loss curves and final weights compared.

    python benchmarks/accelerate_parity.py --profile cpu --method lora --steps 200 [--processes 1]

writes ``results/accelerate_parity-<device>-<method>-<n>proc.json`` with both loss curves, their
largest difference, the largest weight difference and both wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent / "results"


def _train_args(args: argparse.Namespace) -> list[str]:
    return ["train", "sd", "--method", args.method, "--profile", args.profile, "--steps", str(args.steps),
            *(["--batch-size", str(args.batch_size)] if args.batch_size else [])]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--torchrun", action="store_true", help="launch with torchrun (CPU multi-process)")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from nbsupport.core.env import describe_device, pick_device

    root = Path(tempfile.mkdtemp(prefix="parity-"))
    runs = {}
    for mode in ("notebook", "launched"):
        env = {**os.environ, "NBSUPPORT_CACHE": str(root / mode / "cache"), "NBSUPPORT_RECORDS": str(root / mode / "rec")}
        if mode == "notebook":
            cmd = [sys.executable, "-m", "nbsupport", *_train_args(args)]
        elif args.torchrun:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes),
                   "--master_port", str(_port()), "-m", "nbsupport", *_train_args(args)]
        else:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(args.processes),
                   "--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", "no",
                   "--main_process_port", str(_port()),
                   *(["--multi_gpu"] if args.processes > 1 else []), "-m", "nbsupport", *_train_args(args)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        (rec,) = [json.loads(p.read_text()) for p in (root / mode / "rec").glob("*.json")]
        (ckpt,) = list((root / mode / "cache" / "checkpoints" / "text-to-image").glob("*/final.safetensors"))
        runs[mode] = {"wall_s": time.perf_counter() - t0, "losses": rec["metrics"]["losses"],
                      "weights": load_file(str(ckpt)), "key": ckpt.parent.name,
                      "processes": rec["params"].get("processes", 1)}
    a, b = runs["notebook"], runs["launched"]
    out = {
        "benchmark": "accelerate_parity", "device": describe_device(pick_device())["name"],
        "profile": args.profile, "method": args.method, "steps": args.steps,
        "launcher": "torchrun" if args.torchrun else "accelerate launch", "processes": args.processes,
        "same_run_key": a["key"] == b["key"],
        "max_loss_diff": max(abs(x - y) for x, y in zip(a["losses"], b["losses"])),
        "max_weight_diff": max((a["weights"][k].float() - b["weights"][k].float()).abs().max().item()
                               for k in a["weights"]),
        "wall_s": {"notebook": a["wall_s"], "launched": b["wall_s"]},
        "losses": {"notebook": a["losses"], "launched": b["losses"]},
        "versions": {"torch": torch.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    name = re.sub(r"[^a-z0-9]+", "-", out["device"].lower()).strip("-")
    path = HERE / f"accelerate_parity-{name}-{args.method}-{args.processes}proc.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"same key {out['same_run_key']}; max loss difference {out['max_loss_diff']:.2e}; "
          f"max weight difference {out['max_weight_diff']:.2e}; wrote {path}")


if __name__ == "__main__":
    main()
