"""Colab proven by simulation: chapters 03 and 06 at the ``gpu`` profile, offline, on full-size
models with random weights, as a 16 GB T4 would run them.

    python benchmarks/colab_sim.py                    # a CUDA GPU: full size, T4 emulation
    python benchmarks/colab_sim.py --reduced          # anywhere: tiny models, the same code path (a test runs this)
    python benchmarks/colab_sim.py --methods lora unet --steps 5

What it builds, in a temporary folder (nothing is downloaded; ``HF_HUB_OFFLINE=1``):

- the ``gpu`` profile's ViT-B/16 with random weights, as a local ``.safetensors`` file (``-p weights``);
- a Stable Diffusion 1.5 snapshot in the diffusers layout (``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``) with random weights and SD 1.5's exact sizes (``-p sd_weights``);
  the tokenizer is the book's local one (CLIP's vocabulary is a download), the text encoder keeps
  SD's 49,408-token embedding so that every count and byte is SD 1.5's;
- RetinaMNIST-224 (an ``.npz`` with the medmnist keys) and NIH ChestX-ray14 (``Data_Entry_2017.csv``
  and PNGs) in their published formats, with random pixels.

On CUDA it sets ``NBSUPPORT_EMULATE_T4=1``: fp16 autocast with a GradScaler (never bf16), trainable
parameters in fp32, SDPA attention, and the process capped at 14.75 GiB of GPU memory. Chapter 03
runs every method for one epoch on one seed; chapter 06 runs each method on its own (an
out-of-memory stops that method only). Per method the JSON says whether it fits, its peak memory
and its step time: ``benchmarks/results/colab_sim-<device>[-reduced].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nbsupport.core.env import describe_device  # noqa: E402
from nbsupport.core.records import write_benchmark  # noqa: E402

VIT_METHODS = ["linear", "full", "vpt_shallow", "vpt_deep", "lora", "adaptformer", "bitfit", "ssf", "dvpt"]
SD_METHODS = ["unet", "text_encoder", "vae", "text_encoder+unet", "vae+unet", "vae+text_encoder", "all",
              "lora", "dora", "bitfit", "difffit"]


def fake_retinamnist(cache: Path, n: tuple[int, int, int] = (64, 16, 16)) -> None:
    """RetinaMNIST at 224 px as medmnist stores it: ``retinamnist_224.npz`` with ``<split>_images``
    ``[N, 224, 224, 3]`` uint8 and ``<split>_labels`` ``[N, 1]``."""
    import numpy as np

    root = cache / "data" / "retinamnist-224"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(k, 224, 224, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % 5).reshape(k, 1)
    np.savez(root / "retinamnist_224.npz", **arrays)


def fake_nih(cache: Path, n: int = 40, size: int = 64) -> None:
    """NIH ChestX-ray14 as published: ``Data_Entry_2017.csv`` and grayscale PNGs under ``images/``."""
    import numpy as np
    from PIL import Image

    root = cache / "data" / "nih-chestxray14"
    (root / "images").mkdir(parents=True, exist_ok=True)
    findings = ["No Finding", "Edema", "Effusion|Mass", "Cardiomegaly|Edema"]
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
            "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"]
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"{i // 2:08d}_{i % 2:03d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), mode="L").save(root / "images" / name)
        rows.append(f"{name},{findings[i % 4]},{i % 2},{i // 2},{40 + i},M,PA,2500,2048,0.143,0.143")
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")


def vit_weights(out: Path, reduced: bool) -> tuple[str, Path]:
    """The profile's ViT (or a tiny one) with random weights, saved as safetensors."""
    import safetensors.torch
    import timm

    name = "vit_tiny_patch16_224" if reduced else "vit_base_patch16_224"
    model = timm.create_model(name, pretrained=False, num_classes=0)
    path = out / f"{name}-random.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return name, path


def sd_snapshot(out: Path, reduced: bool) -> Path:
    """SD 1.5's architecture (or the tiny one) with random weights in the diffusers layout."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from nbsupport.sd import models
    from nbsupport.sd.tokenizer import load_tiny_tokenizer

    root = out / ("sd-tiny" if reduced else "sd15")
    tok = load_tiny_tokenizer(["Chest X-ray showing Edema, Effusion, Mass, Cardiomegaly.",
                               "Normal chest X-ray with no significant findings."], root / "tokenizer")
    tok.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    cfg = models.TINY if reduced else {"unet": models.UNET_SD15, "vae": models.VAE_SD15, "text": models.TEXT_SD15}
    UNet2DConditionModel(**cfg["unet"]).save_pretrained(root / "unet")
    AutoencoderKL(**cfg["vae"]).save_pretrained(root / "vae")
    text_cfg = {**cfg["text"], "vocab_size": max(cfg["text"].get("vocab_size", 0), len(tok)),
                "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    CLIPTextModel(CLIPTextConfig(**text_cfg)).save_pretrained(root / "text_encoder")
    models.training_scheduler(None).save_pretrained(root / "scheduler")
    assert isinstance(DDPMScheduler.from_pretrained(root / "scheduler"), DDPMScheduler)
    return root


def run_chapter(nb: str, params: dict, env: dict, out: Path, log: Path) -> tuple[bool, str]:
    """Execute one chapter at the gpu profile; (ran, short reason)."""
    cmd = [sys.executable, "-m", "nbsupport", "run", str(ROOT / "notebooks" / nb), "--profile", "gpu",
           "--output", str(out)]
    for k, v in params.items():
        cmd += ["-p", k, json.dumps(v) if not isinstance(v, str) else v]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode == 0:
        return True, "ran"
    text = proc.stdout + proc.stderr
    reason = "out of memory" if ("OutOfMemoryError" in text or "CUDA out of memory" in text) else \
        next((line for line in reversed(text.splitlines()) if "Error" in line), "failed")[:300]
    return False, reason


def records(folder: Path, chapter: str) -> dict[str, dict]:
    out = {}
    for f in folder.glob(f"{chapter}-*.json"):
        rec = json.loads(f.read_text())
        if rec.get("method"):
            out[rec["method"]] = rec
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", action="store_true", help="tiny models and fp32 (the CPU test of the code path)")
    ap.add_argument("--methods", nargs="*", default=None, help="methods of both chapters (default: all)")
    ap.add_argument("--steps", type=int, default=None, help="SD optimizer steps per method (default 10; reduced 1)")
    ap.add_argument("--chapters", nargs="*", default=["03", "06"])
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="colab-sim-"))
    cache, recs, executed = work / "cache", work / "records", work / "executed"
    env = {**os.environ, "NBSUPPORT_CACHE": str(cache), "NBSUPPORT_RECORDS": str(recs), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", **({"NBSUPPORT_EMULATE_T4": "1"} if cuda else {})}
    fake_retinamnist(cache)
    fake_nih(cache, size=64 if args.reduced else 256)
    t0 = time.perf_counter()
    result: dict = {"benchmark": "colab_sim", "reduced": args.reduced, "emulated_t4": cuda,
                    "device": describe_device("cuda" if cuda else "cpu").get("name"), "chapters": {}}
    if "03" in args.chapters:
        name, weights = vit_weights(work, args.reduced)
        methods = [m for m in (args.methods or VIT_METHODS) if m in VIT_METHODS]
        ok, reason = run_chapter("03_benchmark.ipynb", {"backbone": name, "weights": str(weights), "epochs": 1,
                                                        "seeds": [0], "method_names": methods},
                                 env, executed, work / "03.log")
        got = records(recs, "03_benchmark")
        result["chapters"]["03_benchmark"] = {"ran": ok, "reason": reason, "backbone": name, "methods": {
            m: {"fits": m in got, "peak_GiB": (got[m]["metrics"].get("peak_memory_bytes") or 0) / 2**30 if m in got else None,
                "step_s": got[m]["metrics"].get("step_time_s") if m in got else None} for m in methods}}
    if "06" in args.chapters:
        snapshot = sd_snapshot(work, args.reduced)
        steps = args.steps or (1 if args.reduced else 10)
        rows = {}
        for m in [m for m in (args.methods or SD_METHODS) if m in SD_METHODS]:
            ok, reason = run_chapter("06_sd_finetuning.ipynb", {"sd_weights": str(snapshot), "method_names": [m],
                                                                "steps": steps, "n_generate": 1},
                                     env, executed / m, work / f"06-{m}.log")
            rec = records(recs, "06_sd_finetuning").get(m)
            metrics = rec["metrics"] if rec else {}
            rows[m] = {"fits": ok, "reason": reason,
                       "peak_GiB": (metrics.get("peak_memory_bytes") or 0) / 2**30 if rec else None,
                       "step_s": metrics.get("step_time_s"), "notices": (rec or {}).get("params", {}).get("notices")}
        result["chapters"]["06_sd_finetuning"] = {"steps": steps, "snapshot": "reduced" if args.reduced else "SD 1.5 sizes",
                                                  "methods": rows}
    result["wall_s"] = time.perf_counter() - t0
    path = write_benchmark(Path(args.results), "colab_sim", str(result["device"]),
                           "-reduced" if args.reduced else "-t4-emulated", result)
    print(json.dumps(result, indent=1))
    print("written:", path)
    return 0 if all(c.get("ran", True) for c in result["chapters"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
