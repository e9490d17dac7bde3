"""Profiles: the one knob for scale.

Every chapter's ``parameters`` cell has ``profile`` first. A profile fixes model size, data size,
resolution and whether random weights are allowed; it never silently changes meaning.

| profile | where         | models                                  | data                              |
|---------|---------------|-----------------------------------------|-----------------------------------|
| smoke   | CI, any CPU   | tiny, randomly initialised              | procedural, 64 px, dozens         |
| cpu     | a laptop, offline | the pocket ViT and pocket SD shipped in the package | procedural new-clinic camera, 64 px, 300 labels / captions |
| gpu     | Colab T4      | hub weights, pinned revisions           | real sets via manifests           |
| full    | >= 40 GB GPU  | as in the papers                        | as in the papers                  |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Profile", "PROFILES", "get_profile", "profile_names"]


@dataclass(frozen=True)
class Profile:
    """Settings that scale every chapter together.

    Attributes:
        name: profile name (``smoke``, ``cpu``, ``gpu``, ``full``).
        description: one line for the page.
        random_weights: True when models are tiny and randomly initialised *by design*.
            When False, hub weights are required and a failed download is an error.
        image_size: classification input resolution in pixels.
        sd_resolution: Stable Diffusion training/sampling resolution in pixels.
        n_train, n_val, n_test: number of images per split for procedural data
            (real manifests use their own splits; ``max_train`` caps them, ``None`` = all).
        max_train: cap on training images for real datasets (None = all).
        epochs: classification training epochs.
        batch_size: classification batch size.
        sd_steps: Stable Diffusion optimisation steps.
        sd_batch_size: Stable Diffusion batch size (per step, before accumulation).
        vit: timm model name of the classification backbone.
        default_dataset: manifest used when a chapter is not given one.
        sd_dataset: text-to-image manifest of the Stable Diffusion chapters.
        seg_dataset: segmentation manifest of the segmentation chapter.
        seg_epochs: segmentation training epochs (None: ``epochs``).
        sd_grad_accum: gradient accumulation of Stable Diffusion training.
        sd_precision: ``"fp16"`` (T4: no bf16 on Turing), ``"bf16"`` or None (fp32).
        sd_sample_steps: denoising steps when sampling.
        sd_model: ``"tiny"`` (random, a few hundred thousand parameters), ``"pocket"`` (the book's
            pretrained pocket Stable Diffusion, shipped in the package) or ``"sd15"`` (hub weights).
        sd_max_train: images the Stable Diffusion chapters fine-tune on (the limited image budget;
            None = the whole training split).
        sd_lr_scale: factor on the study's fine-tuning rates (:data:`nbsupport.sd.methods.LR`).
        sd_checkpointing: gradient checkpointing in Stable Diffusion training (a GPU memory saver
            that costs a quarter more compute; off where memory is plentiful, e.g. the CPU profiles).
        sd_guidance: classifier-free guidance scale when sampling.
        sd_n_generate: images generated per method and set for chapters 07 and 08 (None: two per
            test caption).
        sd_seed_check: the methods chapter 06 trains once more, with the next seed, to measure how
            far a seed moves a result (each is another full run: none at the GPU profiles).
        num_workers: DataLoader workers.
        mixed_precision: whether autocast is used on a CUDA device.
        seeds: training seeds of every method comparison (mean +- std over them).
        lr_factors: the learning-rate rule: each method's registry rate times these factors, the best
            on validation (first seed, full training split) is used for every seed; one factor: the
            registry rate as is (papers' rates for papers' schedules).
    """

    name: str
    description: str
    random_weights: bool
    image_size: int
    sd_resolution: int
    n_train: int
    n_val: int
    n_test: int
    max_train: int | None
    epochs: int
    batch_size: int
    sd_steps: int
    sd_batch_size: int
    vit: str
    default_dataset: str
    num_workers: int
    mixed_precision: bool
    sd_dataset: str = "fundus-procedural"
    seg_dataset: str = "fundus-clinic-seg"
    seg_epochs: int | None = None
    sd_grad_accum: int = 1
    sd_precision: str | None = None
    sd_sample_steps: int = 30
    sd_model: str = "sd15"
    sd_max_train: int | None = None
    sd_lr_scale: float = 1.0
    sd_checkpointing: bool = True
    sd_guidance: float = 7.5
    sd_n_generate: int | None = None
    sd_seed_check: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    lr_factors: tuple[float, ...] = (1.0,)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for run records."""
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="CI on any CPU: tiny randomly initialised models, procedural data at 64 px. "
        "Numbers prove the code runs; they mean nothing about the methods.",
        random_weights=True,
        image_size=64,
        sd_resolution=64,
        n_train=40,
        n_val=20,
        n_test=20,
        max_train=40,
        epochs=2,
        batch_size=8,
        sd_steps=4,
        sd_batch_size=2,
        vit="vit_tiny_patch16_224",
        default_dataset="fundus-procedural",
        num_workers=0,
        mixed_precision=False,
        sd_dataset="fundus-procedural",
        sd_grad_accum=1,
        sd_precision=None,
        sd_sample_steps=4,
        sd_model="tiny",
        sd_checkpointing=False,
        sd_max_train=40,
        sd_n_generate=8,
        sd_seed_check=("unet", "lora"),
        seeds=(0, 1),
    ),
    "cpu": Profile(
        name="cpu",
        description="A laptop, offline: the book's pocket ViT (pretrained on procedural eyes, shipped in "
        "the package) adapted to a new clinic's camera with 300 labelled images at 64 px; 3 seeds per method. The pocket "
        "Stable Diffusion (pretrained on the source cameras) fine-tuned on the clinic's 300 captioned images.",
        random_weights=False,
        image_size=64,
        sd_resolution=64,
        n_train=300,
        n_val=120,
        n_test=500,
        max_train=300,
        epochs=6,           # the budget rule: chapters 01-04 (3 seeds each) within 30 minutes on 2 CPU cores
        batch_size=16,      # 300 labels: 19 optimiser steps per epoch, 114 in all
        sd_steps=200,       # the budget rule: chapters 05-08 and the results page within 45 minutes on 2 CPU cores (400 took 64.6)
        sd_batch_size=16,
        vit="pocket-fundus-vit",
        default_dataset="fundus-clinic",
        num_workers=0,      # images live in memory: worker processes only add start-up time
        mixed_precision=False,
        sd_dataset="fundus-clinic",
        sd_grad_accum=1,
        sd_precision=None,
        sd_sample_steps=20,
        sd_model="pocket",
        sd_max_train=300,   # the new clinic's 300 captioned photographs (the ViT chapters' labels)
        sd_lr_scale=3.0,    # the study's rates are 1/10 of SD's pretraining rate (1e-4); the pocket's is 3e-4
        sd_checkpointing=False,   # 25% faster steps on a CPU (measured: 0.31 -> 0.23 s for the UNet at batch 16)
        sd_guidance=7.5,    # chosen on the source domain by the pretraining record's rule (nbsupport.sd.pretrain.guidance_sweep)
        sd_n_generate=200,
        sd_seed_check=("unet", "lora"),
        lr_factors=(1.0, 3.0, 10.0),   # 114 steps, not the papers' 100 epochs: each method's rate from a validation grid
        seg_epochs=4,       # the budget rule: chapter 9 (segmentation) within 15 minutes on 2 CPU cores (6 epochs took 20.1)
    ),
    "gpu": Profile(
        name="gpu",
        description="A Colab T4 (16 GB): ViT-B/16 with hub weights at 224 px, real datasets via manifests; "
        "Stable Diffusion v1.5 at 512 px.",
        random_weights=False,
        image_size=224,
        sd_resolution=512,
        n_train=4000,
        n_val=500,
        n_test=1000,
        max_train=None,
        epochs=20,
        batch_size=32,
        sd_steps=1000,
        sd_batch_size=1,
        vit="vit_base_patch16_224.augreg2_in21k_ft_in1k",
        default_dataset="retinamnist-224",
        num_workers=2,
        mixed_precision=True,
        sd_dataset="nih-chestxray14",
        seg_dataset="isic2016-seg",
        sd_grad_accum=4,
        sd_precision="fp16",
        sd_sample_steps=30,
    ),
    "full": Profile(
        name="full",
        description="A >= 40 GB GPU: paper settings (ViT-B/16, 60 epochs; SD 1.5 at 512 px, batch 8).",
        random_weights=False,
        image_size=224,
        sd_resolution=512,
        n_train=20000,
        n_val=2000,
        n_test=4000,
        max_train=None,
        epochs=60,
        batch_size=50,
        sd_steps=10000,
        sd_batch_size=8,
        vit="vit_base_patch16_clip_224.openai",
        default_dataset="aptos2019",
        num_workers=8,
        mixed_precision=True,
        sd_dataset="chexpert",
        seg_dataset="isic2016-seg",
        sd_grad_accum=4,
        sd_precision="bf16",
        sd_sample_steps=50,
    ),
}


def profile_names() -> list[str]:
    """Names of the profiles, smallest first."""
    return list(PROFILES)


def get_profile(name: str | Profile) -> Profile:
    """Look up a profile by name.

    Raises:
        ValueError: naming the unknown profile and the valid ones.
    """
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r}: expected one of {', '.join(PROFILES)} "
            "(set it in the chapter's parameters cell or with --profile)"
        ) from None
