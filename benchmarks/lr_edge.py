"""Beyond the learning-rate grid: each method's validation score at factors past the profile's grid.

When the book's rule (chapter 3: the registry rate times the profile's ``lr_factors``, best on
validation, seed 0) picks the top factor, a larger rate might have done better. This trains each
method once more per extra factor, with the rule's own seed, budget and validation split, and
records the whole grid, so a page can say whether the edge hid a better rate.

    python benchmarks/lr_edge.py --profile cpu --factors 1 3 10 30 100
    python benchmarks/lr_edge.py --profile cpu --dataset my-fundus      # your own manifest

Runs already in the cache (``$NBSUPPORT_CACHE``) are reused, so the grid's own factors cost nothing
after a book build. Writes ``benchmarks/results/lr_edge-<device>-<profile>[-<dataset>].json`` (the
dataset named when it is not the profile's default).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbsupport.core.env import describe_device, library_versions, pick_device  # noqa: E402
from nbsupport.core.profiles import get_profile  # noqa: E402
from nbsupport.core.records import git_commit, write_benchmark  # noqa: E402
from nbsupport.data.manifests import dataset_name, load_manifest  # noqa: E402
from nbsupport.vit import experiment, methods  # noqa: E402

METHODS = ["linear", "full", "vpt_shallow", "vpt_deep", "lora", "adaptformer", "bitfit", "ssf", "dvpt"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--dataset", default=None, help="a manifest name or path; default: the profile's dataset")
    ap.add_argument("--factors", type=float, nargs="+", default=[1, 3, 10, 30, 100],
                    help="multiples of each method's registry rate (include the profile's own)")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--seed", type=int, default=0, help="the rule's seed (chapter 3 uses the first seed)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    prof = get_profile(args.profile)
    if not set(prof.lr_factors) <= set(args.factors):
        ap.error(f"--factors {args.factors} must include profile {prof.name!r}'s own {list(prof.lr_factors)}")
    device = pick_device()
    dataset = args.dataset or prof.default_dataset
    bb = experiment.make_backbone(prof.name, num_classes=len(load_manifest(dataset).classes), seed=args.seed)
    data = experiment.load_classification_data(dataset, prof.name, bb)
    rows = []
    for m in methods.check_names(args.methods):
        t0 = time.perf_counter()
        best, grid = experiment.choose_lr(m, bb, data, prof.name, device, seed=args.seed, factors=args.factors)
        base = methods.METHODS[m].lr
        scores = {f"{lr / base:g}": score for lr, score in sorted(grid.items())}
        in_rule = {f: s for f, s in scores.items() if float(f) in prof.lr_factors}
        rule_best = max(in_rule, key=lambda f: (in_rule[f], -float(f)))
        rows.append({"method": m, "base_lr": base, "val_score_by_factor": scores, "rule_factor": float(rule_best),
                     "best_factor": best / base, "edge_hid_better": best / base > max(prof.lr_factors)})
        print(f"{m:12s} " + "  ".join(f"x{f}: {s:.3f}" for f, s in scores.items()) + f"  ({time.perf_counter() - t0:.0f} s)")
    dev = describe_device(device)["name"]
    name = dataset_name(data.dataset)                  # a manifest given by path: its name
    out = {"benchmark": "lr_edge", "device": dev, "profile": prof.name, "dataset": name,
           "weights": bb.weights, "backbone": bb.name, "rule_factors": list(prof.lr_factors), "factors": args.factors,
           "seed": args.seed, "score": "best validation score", "commit": git_commit(), "versions": library_versions(),
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "results": rows}
    tag = "" if name == prof.default_dataset else f"-{name}"
    write_benchmark(args.out, "lr_edge", dev, f"-{prof.name}{tag}", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
