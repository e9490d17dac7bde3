"""How far is far? Anchors for the pocket Stable Diffusion's sample FIDs (pocket-ViT features).

Chapter 5 shows the shipped pocket SD's samples at FIDs in the thirties against a real-vs-real floor
below 1, but the floor was measured with 1,000 images a side and the samples with 200, and a single
number has no scale. This measures, against the same 2,000 held-out source eyes as the guidance sweep
and always with 200 images (the samples' count), in ``--draws`` disjoint draws (mean and std):

- ``real``: 200 other real source eyes: the floor at the samples' count;
- ``vae``: the same eyes through the shipped pocket VAE and back: what its decoder alone costs
  (these eyes are from the corpus's training part, which the VAE saw: if anything it flatters it);
- ``camera``: the same eyes through the target camera (the one chapter 6 fine-tunes on);
- ``grade0``: 200 real source eyes all of grade 0: the right look, without the variety of grades;
- ``samples``: the shipped model's samples at the ``cpu`` profile's guidance (the evaluation's
  prompts, cycling over grades and sides; new seeds in every draw, the first draw's are the sweep's).

    python benchmarks/pocket_sd_fid_anchors.py [--draws 5]

Writes ``results/pocket_sd_fid_anchors-<device>.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent / "results"
N = 200   # images per draw: the pocket SD's evaluation sample count

ANCHORS = {
    "real": "other real source eyes",
    "vae": "the same eyes through the pocket VAE and back",
    "camera": "the same eyes through the target camera",
    "grade0": "real source eyes, all of grade 0",
    "samples": "the pocket SD's samples (the profile's guidance)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from tqdm.auto import tqdm

    from nbsupport.core.env import describe_device
    from nbsupport.core.records import git_commit, write_benchmark
    from nbsupport.data.corpus import TARGET_CAMERA, corpus_image, corpus_labels
    from nbsupport.evaluation.fidelity import fid_from_features
    from nbsupport.sd import pocket
    from nbsupport.sd.pretrain import SDPretrainConfig, _pixels, _probe_features, evaluation_prompts
    from nbsupport.sd.sampling import sample

    t0 = time.perf_counter()
    device = torch.device(args.device)
    cfg = SDPretrainConfig()
    grades, _, _ = corpus_labels(cfg.corpus)
    n_total = cfg.corpus.n
    holdout = range(n_total - cfg.holdout, n_total)

    def render(idx: list[int] | range, camera: str | None = None) -> np.ndarray:
        """Corpus eyes ``idx`` as uint8 ``[n, S, S, 3]`` (through ``camera`` if given)."""
        return np.stack([corpus_image(cfg.corpus, i, grades[i], camera).image
                         for i in tqdm(idx, desc="render", leave=False)])

    reference = _probe_features(render(holdout), device)                              # [2000, D]

    real_idx = list(range(args.draws * N))                     # training-part eyes, any grade
    grade0_idx = [i for i in range(n_total - cfg.holdout) if grades[i] == 0][:args.draws * N]
    if len(grade0_idx) < args.draws * N:
        raise ValueError(f"only {len(grade0_idx)} grade-0 eyes outside the held-out ones for {args.draws} draws of {N}")
    real = render(real_idx)
    comp = pocket.load_pocket().to(device)
    with torch.no_grad():
        recon = []
        for i in range(0, len(real), 250):
            x = _pixels(real[i:i + 250], device)
            y = comp.vae.decode(comp.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            recon.append(((y + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    record = pocket.shipped_record()
    guidance = float(record["guidance_sweep"]["chosen"])
    prompts, _, _ = evaluation_prompts(N)
    samples = np.concatenate([np.stack(sample(comp, prompts, list(range(k * N, (k + 1) * N)),
                                              resolution=cfg.corpus.image_size, steps=cfg.eval_steps,
                                              guidance_scale=guidance, device=device))
                              for k in tqdm(range(args.draws), desc="sample draws")])
    images = {"real": real, "vae": np.concatenate(recon), "camera": render(real_idx, TARGET_CAMERA),
              "grade0": render(grade0_idx), "samples": samples}
    anchors = {}
    for name, ims in images.items():
        feats = _probe_features(ims, device)
        fids = [fid_from_features(reference, feats[k * N:(k + 1) * N]) for k in range(args.draws)]
        anchors[name] = {"what": ANCHORS[name], "fids": fids, "mean": float(np.mean(fids)),
                         "std": float(np.std(fids, ddof=1)) if len(fids) > 1 else None}
        print(f"{name:8s} FID {np.mean(fids):7.2f} +- {anchors[name]['std'] or 0:.2f}  ({ANCHORS[name]})")
    sweep_row = next(r for r in record["guidance_sweep"]["rows"] if r["guidance"] == guidance)
    dev = describe_device(str(device))["name"]
    out = {"benchmark": "pocket_sd_fid_anchors", "device": dev, "commit": git_commit(),
           "weights": f"pocket-fundus-sd@sha256:{record['sha256'][:16]}", "n_per_draw": N,
           "draws": args.draws, "n_reference": len(reference), "guidance": guidance,
           "sample_steps": cfg.eval_steps, "sweep_fid_at_guidance": sweep_row["fid_pocket_vit"],
           "anchors": anchors, "seconds": round(time.perf_counter() - t0, 1)}
    write_benchmark(HERE, "pocket_sd_fid_anchors", dev, "", out)
    print(f"{out['seconds']:.0f} s; the sweep's FID at guidance {guidance:g}: "
          f"{sweep_row['fid_pocket_vit']:.2f} (its seeds are draw 0's: {anchors['samples']['fids'][0]:.2f})")


if __name__ == "__main__":
    main()
