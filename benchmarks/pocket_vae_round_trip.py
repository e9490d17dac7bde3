"""What a pocket VAE keeps: round trip of held-out eyes through a pretraining run's VAE checkpoint.

For the run's VAE (stage 1) on the corpus's 2,000 held-out eyes: :func:`nbsupport.sd.pretrain.evaluate_vae`
(PSNR; eye side and grade read back from reconstructions by the pocket ViT's probes, next to the
same probes on the real eyes); on the first 256 of them, the posterior's noise (root mean square of
its std) against the latents' spread (std of the posterior means), hence how many bits a latent
value can carry, ``0.5 * log2(1 + spread**2 / noise**2)``, and the KL term as the run weighted it;
and the first 8 eyes above their reconstructions (a base64 PNG, for a picture).

    python benchmarks/pocket_vae_round_trip.py RUN_DIR --label v3-kl-per-pixel --kl-per pixel

Writes ``results/pocket_vae_round_trip-<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent / "results"


def _png_grid(top: np.ndarray, bottom: np.ndarray) -> str:
    """Two rows of uint8 images ``[N, S, S, 3]`` as a base64 PNG."""
    import base64
    import io

    from PIL import Image

    grid = np.concatenate([np.concatenate(list(top), 1), np.concatenate(list(bottom), 1)], 0)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--label", required=True)
    ap.add_argument("--kl-per", choices=["pixel", "image-mean"], required=True,
                    help="how the run weighted its KL term (recipes v1/v2: image-mean; v3 on: pixel)")
    args = ap.parse_args()

    from nbsupport.core.checkpoints import StepCheckpoints
    from nbsupport.core.env import describe_device
    from nbsupport.core.records import git_commit
    from nbsupport.data.corpus import corpus_labels, load_corpus
    from nbsupport.sd.pocket import build_pocket
    from nbsupport.sd.pretrain import SDPretrainConfig, _pixels, _unprefixed, evaluate_vae

    cfg = SDPretrainConfig()
    images, _ = load_corpus(cfg.corpus, workers=1, progress=False)
    grades, eyes, _ = corpus_labels(cfg.corpus)
    real, g, e = images[-cfg.holdout:], grades[-cfg.holdout:], list(eyes[-cfg.holdout:])
    vae = build_pocket(seed=cfg.seed).vae.eval()
    tensors, state = StepCheckpoints(args.run_dir).load("vae")
    vae.load_state_dict(_unprefixed(tensors, "vae"))
    t0 = time.perf_counter()
    ev = evaluate_vae(vae, real, g, e)
    with torch.no_grad():
        x = _pixels(real[:256], torch.device("cpu"))
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.mean[:8]).sample.clamp(-1, 1)
        spread, noise = float(dist.mean.std()), float(dist.var.mean().sqrt())
        kl = float(dist.kl().mean()) * cfg.kl_weight / (x[0].numel() if args.kl_per == "pixel" else 1)
    l1_final = state["loss_curve"][-1][1]
    out = {"run": args.run_dir.name, "label": args.label, "vae_steps": state["step"], "kl_weighting": args.kl_per,
           "device": describe_device("cpu")["name"], "commit": git_commit(), "seconds": round(time.perf_counter() - t0, 1),
           **ev, "latent_spread": spread, "posterior_noise": noise,
           "bits_per_latent_value": float(0.5 * np.log2(1 + spread ** 2 / noise ** 2)),
           "n_latent_stats": int(len(x)), "kl_term": kl, "final_training_loss": l1_final,
           "examples_png": _png_grid(real[:8], ((recon + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())}
    HERE.mkdir(exist_ok=True)
    path = HERE / f"pocket_vae_round_trip-{args.label}.json"
    path.write_text(json.dumps(out), encoding="utf-8")
    print(path, {k: v for k, v in out.items() if not k.startswith("examples")})


if __name__ == "__main__":
    main()
