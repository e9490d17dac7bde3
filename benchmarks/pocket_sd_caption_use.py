"""Does a pocket Stable Diffusion use its caption, or read the answer from the noise?

For a pretraining run's checkpoint (EMA weights), on 256 training latents with fixed noise:

1. the denoising loss at t = 100, 500, 900 with the true captions, with "left"/"right" swapped,
   with the grade moved by 2, and with the empty caption: a model that uses a caption word loses
   when the word is wrong;
2. with the *empty* caption, how often the model's predicted clean latent at t = 999, 950, 900, 800
   has the true eye side (a logistic probe on the VAE latents reads the side at ~0.9998): a
   schedule that leaves image signal at its last step lets a model find the layout there, so the
   caption's side is never needed in training, and is ignored at sampling, which starts from pure noise.

    python benchmarks/pocket_sd_caption_use.py RUN_DIR [--schedule sd15]

``--schedule sd15`` evaluates a run of the first recipe (SD 1.5's epsilon schedule); the default is
the pocket scheduler of this version. Writes ``results/pocket_sd_caption_use-<run>-step<k>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).parent / "results"


def predicted_x0(sched, xt: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean latent implied by a UNet output under the scheduler's ``prediction_type``."""
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    kind = sched.config.prediction_type
    if kind == "v_prediction":
        return a.sqrt() * xt - (1 - a).sqrt() * out
    if kind == "epsilon":
        return (xt - (1 - a).sqrt() * out) / a.sqrt()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--schedule", choices=["pocket", "sd15"], default="pocket")
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()

    import safetensors.torch
    from sklearn.linear_model import LogisticRegression

    from nbsupport.core.checkpoints import StepCheckpoints
    from nbsupport.data.corpus import corpus_labels
    from nbsupport.sd.models import training_scheduler
    from nbsupport.sd.pocket import build_pocket
    from nbsupport.sd.pretrain import SDPretrainConfig, _unprefixed, source_caption
    from nbsupport.sd.train import training_target

    cfg = SDPretrainConfig()
    grades, eyes, _ = corpus_labels(cfg.corpus)
    lat = safetensors.torch.load_file(str(args.run_dir / "latents.safetensors"))
    means, stds = lat["mean"].float(), lat["std"].float()
    right = np.array([e == "right" for e in eyes[:len(means)]])
    probe = LogisticRegression(max_iter=3000).fit(means[:20000].reshape(20000, -1).numpy(), right[:20000])
    idx = torch.arange(30000, 30000 + args.n)
    probe_acc = float((probe.predict(means[idx].reshape(args.n, -1).numpy()) == right[idx.numpy()]).mean())

    tensors, state = StepCheckpoints(args.run_dir).load("diffusion")
    comp = build_pocket(seed=0)
    if args.schedule == "sd15":
        comp.scheduler = training_scheduler(None)
    comp.unet.load_state_dict(_unprefixed(tensors, "ema.unet"))
    comp.text_encoder.load_state_dict(_unprefixed(tensors, "ema.text_encoder"))
    comp.unet.eval()
    comp.text_encoder.eval()
    sched, tok, scale = comp.scheduler, comp.tokenizer, state["vae_scaling_factor"]
    gen = torch.Generator().manual_seed(123)
    z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
    noise = torch.randn(z0.shape, generator=gen)

    def captions(kind: str) -> list[str]:
        out = []
        for i in idx.tolist():
            e, g = eyes[i], int(grades[i])
            if kind == "eye swapped":
                e = "right" if e == "left" else "left"
            if kind == "grade moved":
                g = (g + 2) % 5
            out.append("" if kind == "empty" else source_caption(g, e))
        return out

    def embed(kind: str) -> torch.Tensor:
        ids = tok(captions(kind), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        return comp.text_encoder(ids)[0]

    losses, side = {}, {}
    with torch.no_grad():
        embs = {k: embed(k) for k in ("true", "eye swapped", "grade moved", "empty")}
        for tv in (100, 500, 900):
            t = torch.full((args.n,), tv)
            xt = sched.add_noise(z0, noise, t)
            target = training_target(sched, z0, noise, t)
            losses[str(tv)] = {k: F.mse_loss(comp.unet(xt, t, e).sample, target).item() for k, e in embs.items()}
        for tv in (999, 950, 900, 800):
            t = torch.full((args.n,), tv)
            if sched.config.prediction_type == "epsilon" and float(sched.alphas_cumprod[tv]) == 0.0:
                continue
            xt = sched.add_noise(z0, noise, t)
            x0 = predicted_x0(sched, xt, comp.unet(xt, t, embs["empty"]).sample, t) / scale
            side[str(tv)] = float((probe.predict(x0.reshape(args.n, -1).numpy()) == right[idx.numpy()]).mean())
    out = {"benchmark": "pocket_sd_caption_use", "run": args.run_dir.name, "step": state["step"],
           "schedule": {k: sched.config[k] for k in ("prediction_type", "rescale_betas_zero_snr", "beta_schedule")},
           "terminal_alphas_cumprod": float(sched.alphas_cumprod[-1]), "n": args.n,
           "latent_probe_accuracy": probe_acc, "loss_by_caption": losses,
           "eye_side_from_noise_with_empty_caption": side,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = HERE / f"pocket_sd_caption_use-{args.run_dir.name}-step{state['step']}.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("step", "schedule", "loss_by_caption", "eye_side_from_noise_with_empty_caption")},
                     indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
