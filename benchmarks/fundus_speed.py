"""Images per second of the procedural fundus generator (one CPU process), per resolution.

    python benchmarks/fundus_speed.py --sizes 64 128 256 512 --n 40

Writes ``benchmarks/results/fundus_speed-<cpu>.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbsupport.core.records import write_benchmark  # noqa: E402
from nbsupport.data.fundus import generate_fundus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--n", type=int, default=40, help="images per size (grades cycle 0-4)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    rows = []
    for size in args.sizes:
        generate_fundus(0, 4, size)  # warm-up
        t0 = time.perf_counter()
        for i in range(args.n):
            generate_fundus(10_000 + i, i % 5, size)
        dt = time.perf_counter() - t0
        rows.append({"size": size, "images": args.n, "seconds": dt, "images_per_s": args.n / dt})
        print(f"{size:5d} px: {args.n / dt:7.1f} images/s")
    cpu = platform.processor() or platform.machine()
    device = f"CPU {cpu} ({os.cpu_count()} cores), one process"
    out = {"benchmark": "fundus_speed", "device": device, "python": platform.python_version(),
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "results": rows}
    write_benchmark(args.out, "fundus_speed", device, "", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
