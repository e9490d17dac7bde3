"""The text-to-image experiment that chapter 06 and ``nbsupport train sd`` share: a profile's data,
model and training settings in one place, so a run launched outside a notebook (e.g. under
``accelerate launch`` on several GPUs) leaves the very checkpoint and record the chapter then reuses.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from nbsupport.core.profiles import Profile, get_profile
from nbsupport.sd.models import SDComponents
from nbsupport.sd.train import SDTrainConfig, run_sd_method

__all__ = ["TextToImageData", "load_text_to_image_data", "train_config", "fresh_components", "run_method"]


@dataclass
class TextToImageData:
    """The training images (the profile's limited budget) and the test images of a manifest."""

    dataset: str
    train: Dataset
    test: Dataset
    captions: list[str]
    resolution: int


def load_text_to_image_data(dataset: str | None, profile: str | Profile) -> TextToImageData:
    """A text-to-image manifest's train split (at most ``sd_max_train`` images) and test split
    (``n_test``) at the profile's resolution; ``dataset=None`` takes the profile's ``sd_dataset``."""
    from nbsupport.data import datasets

    p = get_profile(profile)
    name = dataset or p.sd_dataset
    train = datasets.build_dataset(name, "train", task="text-to-image", image_size=p.sd_resolution,
                                   limit=p.sd_max_train)
    test = datasets.build_dataset(name, "test", task="text-to-image", image_size=p.sd_resolution, limit=p.n_test)
    captions = sorted({train[i]["caption"] for i in range(len(train))} | {test[i]["caption"] for i in range(len(test))})
    return TextToImageData(name, train, test, captions, p.sd_resolution)


def train_config(profile: str | Profile, steps: int | None = None, batch_size: int | None = None,
                 seed: int = 0) -> SDTrainConfig:
    """The profile's fine-tuning settings (steps, micro-batch, accumulation, precision, rate scale)."""
    p = get_profile(profile)
    steps = steps or p.sd_steps
    return SDTrainConfig(steps=steps, batch_size=batch_size or p.sd_batch_size, grad_accum=p.sd_grad_accum,
                         resolution=p.sd_resolution, mixed_precision=p.sd_precision, lr_scale=p.sd_lr_scale,
                         gradient_checkpointing=p.sd_checkpointing,
                         checkpoint_every=max(1, steps // 4), seed=seed)


def fresh_components(profile: str | Profile, data: TextToImageData, seed: int = 0,
                     weights: str | Path | None = None, tokenizer_dir: str | Path | None = None) -> SDComponents:
    """The profile's pretrained (or tiny random) pipeline, untouched (see
    :func:`nbsupport.sd.models.load_for_profile`)."""
    from nbsupport.sd.models import load_for_profile

    tok = tokenizer_dir if tokenizer_dir is not None else Path(tempfile.mkdtemp()) / "tokenizer"
    return load_for_profile(profile, data.captions, tok, seed=seed, weights=weights)


def run_method(method: str, profile: str | Profile, data: TextToImageData, chapter: str,
               device: torch.device | str, cfg: SDTrainConfig | None = None, weights: str | Path | None = None,
               components: SDComponents | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune a fresh pipeline with ``method`` at the profile's settings and write the record
    (:func:`nbsupport.sd.train.run_sd_method`); returns its dict plus the trained ``components``."""
    p = get_profile(profile)
    cfg = cfg or train_config(p)
    comp = components if components is not None else fresh_components(p, data, cfg.seed, weights)
    out = run_sd_method(comp, method, data.train, data.test, cfg, device, chapter, p.name, data.dataset,
                        progress=progress)
    return {**out, "components": comp}
