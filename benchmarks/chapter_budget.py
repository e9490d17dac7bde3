"""What the chapters cost at a profile: wall time per chapter, executed one after another.

    python benchmarks/chapter_budget.py --profile cpu --chapters 01 02 03 04 --tag 01-04
    python benchmarks/chapter_budget.py --profile cpu --collect _build/cpu --tag 01-04
    python benchmarks/chapter_budget.py --profile cpu --chapters 00 01 02 03 04 05 06 07 08 09 10 --collect _build --tag all

Executes each chapter with papermill (as ``nbsupport run`` does) in the given order, with a fresh
checkpoint cache unless ``--keep-cache`` (a chapter may reuse runs of an earlier one in the same
call: that is what a reader running the book in order gets). ``--collect`` skips execution and reads
the executed notebooks (papermill's duration) and chapter records of an earlier
``nbsupport run ... --output DIR`` instead. The budgets the issues
set (e.g. chapters 01-04 at ``cpu`` within 30 minutes on a 2-core CPU) are checked against these
files, never against timed tests.

Writes ``benchmarks/results/chapter_budget-<device>-<profile>-<tag>.json``: per chapter the wall
time (papermill, kernel start included, when executed here), the chapter's own wall time from its
record (``start`` to ``finish``), and the record's weights and headline metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbsupport.core.env import describe_device  # noqa: E402
from nbsupport.core.records import git_commit, write_benchmark  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = ("probe_kappa_by_weights", "full_finetuning_kappa", "ablation", "findings", "linear_random_init",
            "labelled_data_saved", "full_reference_kappa")


def _chapter_record(records: Path, stem: str) -> dict[str, Any] | None:
    """The chapter-level record (no ``method``) of ``stem``, newest first."""
    found = []
    for p in records.glob(f"{stem}*.json"):
        rec = json.loads(p.read_text(encoding="utf-8"))
        if rec.get("chapter") == stem and not rec.get("method"):
            found.append((p.stat().st_mtime, rec))
    return max(found, key=lambda t: t[0])[1] if found else None


def _loss_falls(records: Path, stem: str) -> dict[str, list[float]]:
    """Per method record of ``stem`` that holds a training-loss curve: the mean of its first and of
    its last tenth of steps (a falling loss: the second is smaller)."""
    out = {}
    for p in sorted(records.glob(f"{stem}*.json")):
        rec = json.loads(p.read_text(encoding="utf-8"))
        losses = rec.get("metrics", {}).get("losses")
        if rec.get("chapter") == stem and rec.get("method") and losses and len(losses) >= 10:
            k = max(1, len(losses) // 10)
            out[rec["method"]] = [sum(losses[:k]) / k, sum(losses[-k:]) / k]
    return out


def _sd_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The Stable Diffusion chapters' headline numbers: test loss before/after fine-tuning (06),
    FID/KID per generator and the real-vs-real floor (07), the synthetic-data summary (08)."""
    out: dict[str, Any] = {}
    methods = metrics.get("methods", {})
    if methods and all(isinstance(v, dict) and "test_loss_after" in v for v in methods.values()):
        out["test_loss_before_after_by_method"] = {m: [v["test_loss_before"], v["test_loss_after"]] for m, v in methods.items()}
    if "scores" in metrics and "noise_floor" in metrics:
        out["fid_kid_by_generator"] = {m: {k: v.get(k) for k in ("fid", "kid", "kid_std", "n", "align_kappa", "vendi_features")}
                                       for m, v in metrics["scores"].items()}
        out["noise_floor"] = metrics["noise_floor"]
        out["judge"] = {k: v for k, v in (metrics.get("judge") or {}).items() if k != "record"}   # no machine path
    if "summary" in metrics and "results" in metrics:
        out["synthetic_summary"] = metrics["summary"]
    return out


def _summary(rec: dict[str, Any] | None, records: Path | None = None) -> dict[str, Any]:
    if rec is None:
        return {"record": None}
    metrics = rec.get("metrics", {})
    sd = _sd_summary(metrics)
    if records is not None:
        falls = _loss_falls(records, rec["chapter"])
        if falls:
            sd["training_loss_first_last_tenth_by_method"] = falls
    by_method = {f"{k}_by_method": {m: [v.get(f"test_{k}"), v.get(f"test_{k}_std")]
                                    for m, v in metrics.get("methods", {}).items() if isinstance(v, dict) and f"test_{k}" in v}
                 for k in ("kappa", "dice")}
    return {"record_wall_s": rec.get("wall_time_s"), "commit": rec.get("git_commit"),   # the chapter's own commit
            "weights": rec.get("weights"), "dataset": rec.get("dataset"),
            "seeds": rec.get("params", {}).get("seeds"),
            "headline": {k: metrics[k] for k in HEADLINE if k in metrics},
            **{k: v for k, v in by_method.items() if v}, **sd}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--chapters", nargs="+", default=["01", "02", "03", "04"])
    ap.add_argument("--collect", type=Path, default=None, help="read records of an earlier run from DIR/records")
    ap.add_argument("--keep-cache", action="store_true", help="reuse the checkpoint cache (default: a fresh one)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--note", default=None, help="what the timings should be read with (e.g. other load on the machine)")
    args = ap.parse_args()

    notebooks = {c: next((ROOT / "notebooks").glob(f"{c}_*.ipynb")) for c in args.chapters}
    rows: dict[str, Any] = {}
    if args.collect is not None:
        for c, nb in notebooks.items():
            # `nbsupport run --output DIR` writes DIR/<name>; `nbsupport book` writes _build/executed/notebooks/<name>
            executed = next((p for p in (args.collect / nb.name, args.collect / "executed" / "notebooks" / nb.name)
                             if p.is_file()), args.collect / nb.name)
            meta = json.loads(executed.read_text(encoding="utf-8"))["metadata"].get("papermill", {}) if executed.is_file() else {}
            rows[nb.stem] = {"papermill_s": meta.get("duration"),
                             **_summary(_chapter_record(args.collect / "records", nb.stem), args.collect / "records")}
    else:
        from nbsupport.book.runner import execute_chapter

        out = Path(tempfile.mkdtemp(prefix="chapter-budget-"))
        print(f"executed copies and run records under {out}", flush=True)
        if not args.keep_cache:
            os.environ["NBSUPPORT_CACHE"] = str(out / "cache")
        for c, nb in notebooks.items():
            t0 = time.perf_counter()
            res = execute_chapter(nb, out / "executed", profile=args.profile, records_dir=out / "records")
            rows[nb.stem] = {"wall_s": time.perf_counter() - t0, "papermill_s": res.seconds,
                             **_summary(_chapter_record(out / "records", nb.stem), out / "records")}
            print(f"{nb.stem}: {rows[nb.stem]['wall_s'] / 60:.1f} min", flush=True)
    walls = [r.get("wall_s") or r.get("papermill_s") or r.get("record_wall_s") or 0.0 for r in rows.values()]
    device = describe_device("cpu")
    result = {"benchmark": "chapter_budget", "profile": args.profile, "device": device.get("name"),
              "device_info": device, "commit": git_commit(), "mode": "collected" if args.collect else "executed",
              "total_minutes": sum(walls) / 60, "chapters": rows,
              **({"note": args.note} if args.note else {})}
    print(f"total: {result['total_minutes']:.1f} min")
    suffix = f"-{args.profile}" + (f"-{args.tag}" if args.tag else "")
    write_benchmark(ROOT / "benchmarks" / "results", "chapter_budget", str(device.get("name")), suffix, result)


if __name__ == "__main__":
    main()
