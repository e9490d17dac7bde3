"""How much headroom does a procedural grading task leave? Linear probes on cheap features.

    python benchmarks/headroom.py --size 64 --camera default --n-train 400 --n-test 200

A task where colour statistics or frozen *random* features already grade well cannot show what
pretraining or adaptation adds. This benchmark fits the same probe (standardised logistic
regression, C by 3-fold cross-validation on the training split, scored by quadratic-weighted Kappa)
on four feature sets of the same images:

- ``colour``: per-channel mean, std and 5/25/50/75/95th percentiles inside the field of view;
- ``pixels``: the image average-pooled to 16 x 16 x 3;
- ``random_vit``: frozen features (mean token + class token) of a randomly initialised ViT
  (patch 8, width 192, depth 6), one per init seed;
- ``oracle``: the generator's true lesion counts per kind (what a perfect lesion detector would
  see: an upper bound on the information the image carries about the grade);

and, with ``--cnn-train N``, a reference that *learns* from plenty of labels: a small CNN trained
from scratch on N labelled images (flips, AdamW, ``--cnn-epochs``), to show that the grade can be
read from the pixels at this resolution (the headroom is real, not noise).

Writes ``benchmarks/results/headroom-<cpu>-<tag>.json``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbsupport.core.records import git_commit, write_benchmark  # noqa: E402
from nbsupport.data import fundus  # noqa: E402
from nbsupport.vit.probe import probe_qwk as probe  # noqa: E402

BALANCE = (0.40, 0.15, 0.22, 0.10, 0.13)   # the shipped manifests' class balance


def draw(n: int, seed0: int, size: int, camera: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images ``[n, size, size, 3]`` uint8, grades ``[n]`` and lesion counts + beading ``[n, K+1]``."""
    rng = np.random.default_rng(seed0)
    grades = rng.choice(5, size=n, p=BALANCE)
    imgs, counts = [], []
    for i, g in enumerate(grades):
        s = fundus.generate_fundus(seed0 * 100_003 + i, int(g), size, camera)
        imgs.append(s.image)
        counts.append([s.counts[k] for k in fundus.LESION_KINDS] + [float("venous_beading" in s.findings)])
    return np.stack(imgs), grades, np.asarray(counts, dtype=np.float64)


def colour_features(imgs: np.ndarray) -> np.ndarray:
    x = imgs.astype(np.float32) / 255.0
    fov = x.max(-1) > 0.04                                           # [n, H, W]
    out = []
    for im, m in zip(x, fov):
        px = im[m]                                                   # [p, 3]
        out.append(np.concatenate([px.mean(0), px.std(0), np.percentile(px, [5, 25, 50, 75, 95], axis=0).ravel()]))
    return np.asarray(out)


def pixel_features(imgs: np.ndarray, side: int = 16) -> np.ndarray:
    n, h, w, c = imgs.shape
    f = h // side
    return imgs.reshape(n, side, f, side, f, c).mean((2, 4)).reshape(n, -1) / 255.0


def random_vit_features(imgs: np.ndarray, seed: int) -> np.ndarray:
    import timm
    import torch

    torch.manual_seed(seed)
    size = imgs.shape[1]
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=size, patch_size=8, embed_dim=192, depth=6, num_heads=3, num_classes=0).eval()
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    feats = []
    with torch.no_grad():
        for i in range(0, len(imgs), 64):
            x = torch.from_numpy(imgs[i:i + 64]).permute(0, 3, 1, 2).float() / 255.0
            t = model.forward_features((x - mean) / 0.25)            # [B, 1 + N, D]
            feats.append(torch.cat([t[:, 0], t[:, 1:].mean(1)], 1))
    return torch.cat(feats).numpy()


def cnn_reference(train_i: np.ndarray, train_y: np.ndarray, test_i: np.ndarray, test_y: np.ndarray,
                  epochs: int, seed: int = 0) -> float:
    """Test QWK of a small CNN trained from scratch (the last epoch; no model selection on test)."""
    import torch
    from sklearn.metrics import cohen_kappa_score
    from torch import nn

    torch.manual_seed(seed)

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    net = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 192),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(192, 5))
    x = torch.from_numpy(train_i).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
    y = torch.from_numpy(train_y).long()
    steps = epochs * ((len(x) + 63) // 64)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            xb = x[idx]
            flip = torch.rand(len(xb), generator=gen) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        xt = torch.from_numpy(test_i).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
        pred = torch.cat([net(xt[i:i + 256]).argmax(1) for i in range(0, len(xt), 256)]).numpy()
    return float(cohen_kappa_score(test_y, pred, weights="quadratic"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--camera", default="default")
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--vit-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cnn-train", type=int, default=0, help="labelled images for the CNN reference (0: skip)")
    ap.add_argument("--cnn-epochs", type=int, default=15)
    ap.add_argument("--tag", default="", help="suffix of the result file")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    tr_i, tr_y, tr_c = draw(args.n_train, 11, args.size, args.camera)
    te_i, te_y, te_c = draw(args.n_test, 12, args.size, args.camera)
    gen_s = time.perf_counter() - t0
    res: dict[str, object] = {
        "colour": probe(colour_features(tr_i), tr_y, colour_features(te_i), te_y),
        "pixels": probe(pixel_features(tr_i), tr_y, pixel_features(te_i), te_y),
        "oracle": probe(tr_c, tr_y, te_c, te_y),
    }
    vit = [probe(random_vit_features(tr_i, s), tr_y, random_vit_features(te_i, s), te_y) for s in args.vit_seeds]
    res["random_vit"] = {"mean": float(np.mean(vit)), "std": float(np.std(vit)), "per_seed": vit}
    if args.cnn_train:
        big_i, big_y, _ = draw(args.cnn_train, 13, args.size, args.camera)
        res[f"cnn_scratch_{args.cnn_train}_labels"] = cnn_reference(big_i, big_y, te_i, te_y, args.cnn_epochs)
    for k, v in res.items():
        print(f"{k:11s} QWK {v['mean'] if isinstance(v, dict) else v:.3f}")
    cpu = f"cpu {platform.machine()} {len(__import__('os').sched_getaffinity(0))} cores"
    write_benchmark(args.out, "headroom", cpu, f"-{args.size}px-{args.camera}{args.tag}", {
        "benchmark": "headroom", "device": cpu, "git_commit": git_commit(), "size": args.size, "camera": args.camera,
        "n_train": args.n_train, "n_test": args.n_test, "generation_s": gen_s,
        "cnn_train": args.cnn_train, "cnn_epochs": args.cnn_epochs if args.cnn_train else None,
        "probe": "standardised logistic regression, C in {0.01, 0.1, 1, 10} by 3-fold CV (QWK)",
        "qwk": res, "wall_s": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
