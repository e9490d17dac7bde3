"""Fidelity of generated images: FID and KID through torch-fidelity, with a registered domain extractor.

The standard extractor is ``inception-v3-compat`` (its weights are downloaded by torch-fidelity, or
read from a local path); offline, or for medical images, a **domain extractor** is registered with
torch-fidelity: a classifier trained on real images (its pre-logit features), as the study did with
a chest X-ray network. At the ``smoke`` and ``cpu`` profiles the reference extractor is the book's
frozen, pretrained pocket ViT (:func:`reference_extractor`).

Real and generated images reach every extractor through one path: ``uint8 [H, W, 3]`` arrays
(generated images as written to PNG, real ones through the same float -> uint8 rounding,
:func:`uint8_images`), then the extractor's own resize and normalisation.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from nbsupport.evaluation.diversity import pixel_features, vendi_score

__all__ = ["UInt8Images", "register_domain_extractor", "reference_extractor", "uint8_images", "fid_kid",
           "fid_from_features", "per_grade_scores"]

_counter = itertools.count()


class UInt8Images(Dataset):
    """Images as torch-fidelity wants them: ``uint8`` tensors ``[3, H, W]``.

    Args:
        images: a list of ``[H, W, 3]`` uint8 arrays, or of file paths.
    """

    def __init__(self, images: Sequence[np.ndarray | str]) -> None:
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        im = self.images[i]
        if isinstance(im, (str, bytes)) or hasattr(im, "__fspath__"):
            from PIL import Image

            im = np.asarray(Image.open(im).convert("RGB"))
        return torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)


def register_domain_extractor(model: nn.Module, image_size: int, mean: Sequence[float], std: Sequence[float],
                              name: str | None = None) -> str:
    """Register a timm classifier as a torch-fidelity feature extractor; returns its name.

    Features: ``"features"`` (pre-logits, ``[B, D]``) and ``"logits"``. Inputs are torch-fidelity's
    ``uint8 [B, 3, H, W]`` batches, resized to ``image_size`` and normalised by ``mean``/``std``.
    The model is copied, so registering never freezes or moves the caller's model.
    """
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    frozen = copy.deepcopy(model).eval()
    name = name or f"nbsupport-domain-{next(_counter)}"

    class DomainExtractor(FeatureExtractorBase):
        def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
            super().__init__(name, features_list)
            self.model = frozen
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("features", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "features"

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            x = x.float() / 255.0
            if x.shape[-1] != image_size or x.shape[-2] != image_size:
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                                  antialias=True)
            x = (x - self.mean) / self.std
            feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            out = {"features": feats, "logits": self.model.get_classifier()(feats)}
            return tuple(out[f].double() for f in self.features_list)

    torch_fidelity.register_feature_extractor(name, DomainExtractor)
    return name


def uint8_images(dataset: Dataset) -> tuple[list[np.ndarray], list[Any]]:
    """The images and labels of a text-to-image dataset as ``uint8 [H, W, 3]``, rounded exactly as
    :func:`nbsupport.sd.sampling.sample` rounds generated images (``[-1, 1] -> [0, 1] -> x 255 + 0.5``)."""
    images, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        x = (item["pixel_values"].float().permute(1, 2, 0).numpy() + 1.0) / 2.0
        images.append((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))
        labels.append(item.get("label"))
    return images, labels


def reference_extractor(profile: Any, inception_weights: str | None = None) -> tuple[dict[str, Any], str]:
    """FID/KID's feature extractor for a profile: ``(keyword arguments for fid_kid, description)``.

    ``smoke``/``cpu`` (tiny or pocket generators): the pretrained pocket ViT, frozen, class-token
    features (it loads offline, from the package); ``gpu``/``full``: torch-fidelity's Inception-v3
    (``inception_weights``: a local copy of its weights for offline use).
    """
    from nbsupport.core.profiles import get_profile

    p = get_profile(profile)
    if p.sd_model in ("tiny", "pocket"):
        from nbsupport.vit.backbones import POCKET_MEAN, POCKET_STD, create_vit

        vit = create_vit("pocket-fundus-vit", pretrained=True, num_classes=0, img_size=p.sd_resolution)
        name = register_domain_extractor(vit, p.sd_resolution, POCKET_MEAN, POCKET_STD)
        return (dict(feature_extractor=name, feature_layer="features"),
                f"pocket ViT, frozen ({vit.nbsupport_weights}), class-token features")
    return (dict(feature_extractor="inception-v3-compat", extractor_weights_path=inception_weights),
            "Inception-v3 (torch-fidelity), pool features")


def fid_kid(real: Dataset, fake: Dataset, feature_extractor: str = "inception-v3-compat",
            feature_layer: str | None = None, batch_size: int = 64, kid_subset_size: int = 1000,
            extractor_weights_path: str | None = None, cuda: bool | None = None) -> dict[str, float]:
    """FID and KID (mean, std) of ``fake`` against ``real`` through torch-fidelity.

    KID is averaged over 100 random subsets of ``kid_subset_size`` images from each side, capped at
    half the smaller set: subsets as large as a set would all hold the same images and report a
    standard deviation of zero. ``kid_std`` is the spread over those subsets. KID is the less biased
    of the two at small sample counts (FID is biased upwards when few images are compared).
    """
    import torch_fidelity

    if min(len(real), len(fake)) < 4:
        raise ValueError(f"FID/KID need at least 4 images per side, got {len(real)} real and {len(fake)} generated")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    kw: dict[str, Any] = dict(input1=fake, input2=real, fid=True, kid=True, feature_extractor=feature_extractor,
                              batch_size=batch_size, cuda=cuda, verbose=False, cache=False, save_cpu_ram=True,
                              kid_subset_size=min(kid_subset_size, len(real) // 2, len(fake) // 2))
    if feature_layer is not None:
        kw.update(feature_layer_fid=feature_layer, feature_layer_kid=feature_layer)
    if extractor_weights_path is not None:
        kw["feature_extractor_weights_path"] = extractor_weights_path
    m = torch_fidelity.calculate_metrics(**kw)
    return {"fid": float(m["frechet_inception_distance"]), "kid": float(m["kernel_inception_distance_mean"]),
            "kid_std": float(m["kernel_inception_distance_std"])}


def fid_from_features(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets ``[N, D]`` with torch-fidelity's own statistics and formula."""
    from torch_fidelity.metric_fid import (
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )

    s1 = fid_features_to_statistics(torch.as_tensor(np.asarray(fake), dtype=torch.float64))
    s2 = fid_features_to_statistics(torch.as_tensor(np.asarray(real), dtype=torch.float64))
    return float(fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"])


def per_grade_scores(real_feats: np.ndarray, real_labels: Sequence[int], real_images: Sequence[np.ndarray],
                     gen_feats: np.ndarray, gen_labels: Sequence[int], gen_images: Sequence[np.ndarray],
                     num_classes: int, min_count: int = 4, **fid_kw: Any) -> dict[int, dict[str, float]]:
    """FID and KID per grade through :func:`fid_kid` (``fid_kw``: the same extractor as the pooled
    scores), Vendi on ``gen_feats`` (the caller's features) and on pixels.

    A grade is scored only where both the real and the generated side have ``min_count`` images
    or more. ``real_feats`` is kept for the call's symmetry (Vendi of the real images per grade).
    """
    out: dict[int, dict[str, float]] = {}
    for c in range(num_classes):
        g = [i for i, t in enumerate(gen_labels) if int(t) == c]
        r = [i for i, t in enumerate(real_labels) if int(t) == c]
        if len(g) < min_count or len(r) < min_count:
            continue
        fk = fid_kid(UInt8Images([real_images[i] for i in r]), UInt8Images([gen_images[i] for i in g]), **fid_kw)
        out[c] = {"fid": fk["fid"], "kid": fk["kid"], "vendi": vendi_score(gen_feats[g]),
                  "vendi_real": vendi_score(real_feats[r]),
                  "vendi_pixels": vendi_score(pixel_features([gen_images[i] for i in g])), "n": len(g)}
    return out
