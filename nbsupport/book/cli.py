"""Command line: ``python -m nbsupport ...`` (also installed as ``nbsupport``).

Commands:
    run NOTEBOOK [-p NAME VALUE]... [--profile P]   execute one chapter with papermill
    book [--profile P]                              execute every chapter, build the website (default cpu)
    data list | describe NAME | verify NAME | fetch NAME
    info                                            versions, device, profiles
    pretrain [--minutes M] [--export PATH] [--smoke]  pretrain the pocket ViT (resumable)
    pretrain-sd [--minutes M] [--export PATH] [--smoke]  pretrain the pocket Stable Diffusion (resumable)
    site HTML_DIR [--screenshots DIR]                check a built website; screenshot every page
    train vit|sd --method M [--dataset D] [--profile P]  one method's runs outside a notebook; also
                                                    under ``accelerate launch -m nbsupport train ...``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nbsupport.core.profiles import PROFILES

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbsupport", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute one chapter (papermill) into an executed copy")
    run.add_argument("notebook", type=Path)
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a parameter for the chapter's parameters cell (value parsed as YAML)")
    run.add_argument("--profile", choices=list(PROFILES), default=None)
    run.add_argument("--output", type=Path, default=None, help="folder of the executed copy")

    book = sub.add_parser("book", help="execute every chapter in _toc.yml and build the HTML")
    book.add_argument("--profile", choices=list(PROFILES), default="cpu", help="default cpu: the pocket models, offline; smoke: a quick check")
    book.add_argument("--build-dir", type=Path, default=None)
    book.add_argument("--no-execute", action="store_true", help="reuse the executed copies")
    book.add_argument("--force", action="store_true", help="execute every chapter, changed or not")

    data = sub.add_parser("data", help="dataset manifests")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dsub.add_parser("list", help="the shipped manifests")
    for name, help_ in (("describe", "what a dataset is"), ("verify", "check files are complete and readable"),
                        ("fetch", "download / check a dataset into the cache")):
        p = dsub.add_parser(name, help=help_)
        p.add_argument("name", help="manifest name or path to a YAML file")
        if name == "verify":
            p.add_argument("--max-images", type=int, default=None)

    sub.add_parser("info", help="versions, device and profiles")

    site = sub.add_parser("site", help="check a built website (and screenshot its pages)")
    site.add_argument("html", type=Path, nargs="?", default=Path("_build/_build/html"))
    site.add_argument("--screenshots", type=Path, default=None, help="write a PNG of every page here (needs chromium)")

    for cmd, what in (("pretrain", "the pocket foundation ViT"), ("pretrain-sd", "the pocket Stable Diffusion")):
        pre = sub.add_parser(cmd, help=f"pretrain {what} (resumable; a GPU in practice)")
        pre.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: the cache)")
        pre.add_argument("--minutes", type=float, default=None, help="stop after this long; run again to resume")
        pre.add_argument("--steps", type=int, default=None, help="override the recipe's steps (a different run)")
        pre.add_argument("--device", default=None)
        pre.add_argument("--export", type=Path, default=None,
                         help="when finished, write the fp16 weights here (+ .json record)")
        pre.add_argument("--smoke", action="store_true", help="a few seconds: checks the loop, teaches nothing")

    train = sub.add_parser("train", help="train one method at a profile, as the chapters do (works under "
                                         "`accelerate launch -m nbsupport train ...` and torchrun)")
    tsub = train.add_subparsers(dest="family", required=True)
    for fam, what in (("vit", "classification (chapter 03's runs)"), ("sd", "Stable Diffusion (chapter 06's runs)")):
        t = tsub.add_parser(fam, help=what)
        t.add_argument("--method", required=True)
        t.add_argument("--dataset", default=None, help="manifest name; default: the profile's")
        t.add_argument("--profile", choices=list(PROFILES), default="cpu")
        t.add_argument("--device", default=None, help="default: cuda when available")
        t.add_argument("--chapter", default="03_benchmark" if fam == "vit" else "06_sd_finetuning",
                       help="the chapter the run record is filed under (the chapter reuses the checkpoint)")
        if fam == "vit":
            t.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the profile's seeds")
            t.add_argument("--epochs", type=int, default=None)
            t.add_argument("--weights", default=None, help="a local weights file for the backbone")
            t.add_argument("--batch-size", type=int, default=None, help="global images per step")
            t.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step")
        else:
            t.add_argument("--seed", type=int, default=0)
            t.add_argument("--steps", type=int, default=None)
            t.add_argument("--batch-size", type=int, default=None, help="global images per micro-batch")
            t.add_argument("--sd-weights", default=None, help="a pocket file, an SD snapshot folder or a hub id")

    params = sub.add_parser("params", help="parameter tables (see nbsupport.vit.methods)")
    params.add_argument("family", choices=["vit", "sd"])
    params.add_argument("--backbone", default="vit_base_patch16_224")
    params.add_argument("--model", default=None, help="sd: a diffusers SD snapshot (local folder or hub id); "
                                                       "default: SD 1.5's architecture")
    params.add_argument("--json", action="store_true")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from nbsupport.book.runner import ChapterFailed, execute_chapter

    params = dict(args.parameter)
    try:
        res = execute_chapter(args.notebook, args.output, params, args.profile, progress=True)
    except ChapterFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"executed copy: {res.output}")
    for rec in res.records:
        print(f"run record   : {rec}")
    if not res.records:
        print("run record   : (the chapter wrote none)")
    print(f"time         : {res.seconds:.1f} s")
    return 0


def _cmd_book(args: argparse.Namespace) -> int:
    from nbsupport.book.runner import ChapterFailed, build_book

    try:
        build_book(args.profile, build_dir=args.build_dir, execute=not args.no_execute, force=args.force)
    except ChapterFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from nbsupport.data import datasets, manifests

    if args.data_command == "list":
        bad = 0
        for name, m in manifests.load_manifests().items():
            if isinstance(m, Exception):                    # one bad file never hides the others
                bad += 1
                print(f"{name:28s} INVALID    {m}")
                continue
            print(f"{name:28s} {m['source']['type']:10s} {', '.join(m.tasks):45s} {m['title']}")
        return 2 if bad else 0
    try:
        m = manifests.load_manifest(args.name)
        if args.data_command == "describe":
            print(m.describe())
        elif args.data_command == "verify":
            report = datasets.verify(m, args.max_images)
            print(json.dumps(report, indent=2))
            for note in report.get("notes", []):
                print(f"note: {note}", file=sys.stderr)
            for problem in report.get("problems", []):
                print(f"problem: {problem}", file=sys.stderr)
            if report.get("problems"):
                return 1
        elif args.data_command == "fetch":
            print(f"{m.name}: ready in {datasets.fetch(m)}")
    except (manifests.ManifestError, datasets.DataError, datasets.DataUnavailableError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from nbsupport.core.env import environment_summary

    print(environment_summary("-"))
    for p in PROFILES.values():
        print(f"  {p.name:6s} {p.description}")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    """``nbsupport params vit|sd``: print the parameter table (counts from the method registries)."""
    family, backbone, as_json = args.family, args.backbone, args.json
    if family == "sd":
        try:
            from nbsupport.sd.methods import parameter_table as sd_table
        except ImportError as exc:
            print(f"error: the sd parameter table needs diffusers and transformers: pip install 'nbsupport[sd]' ({exc})")
            return 2
        from nbsupport.sd.models import WeightsUnavailableError

        try:
            rows = sd_table(model=args.model)
        except WeightsUnavailableError as exc:
            print(f"error: {exc}")
            return 2
    else:
        from nbsupport.vit.backbones import BACKBONES
        from nbsupport.vit.methods import parameter_table

        name = BACKBONES[backbone].timm_name.split(".")[0] if backbone in BACKBONES else backbone
        rows = parameter_table(name)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    w = max(len(r["method"]) for r in rows) + 1
    share = "% of model" if family == "sd" else "% backbone"
    print(f"{'method':{w}s} {'trainable':>14s} {share:>10s} {'added':>10s} {'checkpoint':>12s}")
    for r in rows:
        print(f"{r['method']:{w}s} {r['trainable']:14,d} {r['trainable_pct']:9.3f}% {r['added']:10,d} "
              f"{r['checkpoint_bytes'] / 2**20:10.2f} MB")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    """``nbsupport pretrain``: the pocket ViT's recipe, resumable; exports when finished."""
    import dataclasses

    from nbsupport.core.paths import cache_dir
    from nbsupport.vit import pretrain as pt

    cfg = pt.PretrainConfig.smoke() if args.smoke else pt.PretrainConfig()
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    out = args.out or cache_dir() / "pocket-pretrain"
    state = pt.pretrain(cfg, out, device=args.device, max_minutes=args.minutes)
    print(f"step {state['step']}/{cfg.steps} after {state['elapsed_s'] / 60:.1f} min; checkpoints in {out / cfg.key}")
    for p in state["probes"]:
        print(f"  probe at step {p['step']:6d}: QWK cls {p['cls']:.3f}  cls+mean {p['cls+mean']:.3f}")
    if not state["done"]:
        print("not finished: run the same command again to resume")
        return 0
    if args.export:
        rec = pt.export_weights(out / cfg.key, args.export, {"device": state["device"]})
        print(f"exported {args.export} (sha256 {rec['sha256']})")
    return 0


def _cmd_pretrain_sd(args: argparse.Namespace) -> int:
    """``nbsupport pretrain-sd``: the pocket Stable Diffusion's recipe, resumable; exports when finished."""
    import dataclasses

    from nbsupport.core.paths import cache_dir
    from nbsupport.sd import pretrain as pt

    cfg = pt.SDPretrainConfig.smoke() if args.smoke else pt.SDPretrainConfig()
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    out = args.out or cache_dir() / "pocket-sd-pretrain"
    res = pt.pretrain_sd(cfg, out, device=args.device, max_minutes=args.minutes)
    vae, diff = res["vae"], res["diffusion"] or {"step": 0, "elapsed_s": 0.0, "evaluations": []}
    print(f"VAE step {vae['step']}/{cfg.vae_steps} ({vae['elapsed_s'] / 60:.1f} min); UNet + text encoder step "
          f"{diff['step']}/{cfg.steps} ({diff['elapsed_s'] / 60:.1f} min); checkpoints in {res['run_dir']}")
    for e in diff["evaluations"]:
        print(f"  step {e['step']:6d}: Frechet distance (pocket ViT) {e['fid_pocket_vit']:.1f} (real vs real "
              f"{e['fid_real_vs_real']:.1f}), eye agreement {e['eye_agreement']:.2f}, grade QWK {e['grade_qwk']:.2f}")
    if not res["finished"]:
        print("not finished: run the same command again to resume")
        return 0
    if args.export:
        rec = pt.export_pocket(res["run_dir"], args.export, cfg=cfg, eval_device=args.device)
        print(f"exported {args.export} (sha256 {rec['sha256']})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """``nbsupport train vit|sd``: the chapters' runs for one method; every process of a launched
    run calls this, the main one prints and writes."""
    from nbsupport.core.distributed import is_main_process, main_process_first, process_device
    from nbsupport.core.env import pick_device
    from nbsupport.core.profiles import get_profile

    p = get_profile(args.profile)
    device = process_device(pick_device(args.device))
    if args.family == "vit":
        from nbsupport.data.manifests import load_manifest
        from nbsupport.vit import experiment, methods

        methods.check_names([args.method])
        dataset = args.dataset or p.default_dataset
        seeds = args.seeds or list(p.seeds)
        with main_process_first(device):         # downloads and cache files: the main process first
            bb = experiment.make_backbone(p, num_classes=len(load_manifest(dataset).classes),
                                          weights_path=args.weights, seed=seeds[0])
            data = experiment.load_classification_data(dataset, p, bb)
        rows = experiment.run_seeds(args.method, bb, data, p.name, args.chapter, device, seeds, epochs=args.epochs,
                                    train_overrides={"batch_size": args.batch_size, "grad_accum": args.grad_accum},
                                    progress=is_main_process())
        summary = [{"seed": r["seed"], "lr": r["lr"], "test": {k[5:]: r[k] for k in r if k.startswith("test_")},
                    "record": r.get("record")} for r in rows]
    else:
        from nbsupport.sd import experiment
        from nbsupport.sd.methods import SD_METHODS

        if args.method not in SD_METHODS:
            raise SystemExit(f"--method {args.method!r}: expected one of {', '.join(SD_METHODS)}")
        with main_process_first(device):         # downloads and cache files: the main process first
            data = experiment.load_text_to_image_data(args.dataset, p)
            components = experiment.fresh_components(p, data, args.seed, args.sd_weights)
        cfg = experiment.train_config(p, args.steps, args.batch_size, args.seed)
        out = experiment.run_method(args.method, p, data, args.chapter, device, cfg, components=components,
                                    progress=is_main_process())
        res = out["result"]
        summary = [{"steps": res.steps, "loss_first": res.losses[0] if res.losses else None,
                    "loss_last": res.losses[-1] if res.losses else None, "test_loss_before": out["test_loss_before"],
                    "test_loss_after": out["test_loss_after"], "checkpoint": res.checkpoint, "record": out["record"]}]
    if is_main_process():
        print(json.dumps(summary, indent=1, default=str))
    return 0


def _cmd_site(args: argparse.Namespace) -> int:
    from nbsupport.book import site
    from nbsupport.book.runner import toc_chapters
    from nbsupport.core.paths import cache_dir, repo_root

    root = repo_root()
    chapters = [str(nb.relative_to(root).with_suffix(".html")) for nb in toc_chapters(root)]
    problems = site.check_site(args.html, chapters, [cache_dir(), Path.home(), root, args.html.resolve().parent.parent])
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s) in {args.html}")
    if args.screenshots:
        shots = site.screenshot_pages(args.html, args.screenshots)
        print(f"{len(shots)} screenshots in {args.screenshots}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"run": _cmd_run, "book": _cmd_book, "data": _cmd_data, "info": _cmd_info,
               "params": _cmd_params, "pretrain": _cmd_pretrain,
               "pretrain-sd": _cmd_pretrain_sd, "site": _cmd_site, "train": _cmd_train}[args.command]
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
