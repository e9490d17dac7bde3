"""Evaluating generated images: FID and KID (torch-fidelity), Vendi score, prompt-image alignment.

- **FID / KID** go through ``torch_fidelity.calculate_metrics``. The standard extractor is
  ``inception-v3-compat`` (its weights are downloaded by torch-fidelity, or read from a local
  path); offline, or for medical images, a **domain extractor** is registered with torch-fidelity:
  a classifier trained on real images (its pre-logit features), as the study did with a chest
  X-ray network.
- **Vendi score** (Friedman & Dieng 2023): the exponential of the Shannon entropy of the
  eigenvalues of ``K / n``, ``K`` the cosine-similarity matrix of the features; "the effective
  number of distinct images". Written out here and checked against the ``vendi-score`` package.
- **Alignment**: does an image show what its prompt asked? The real-data classifier's accuracy /
  AUC on generated images against the prompted labels; CLIP score where CLIP weights can be had.
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

__all__ = ["UInt8Images", "register_domain_extractor", "fid_kid", "fid_from_features", "vendi_score",
           "classifier_features", "alignment", "clip_score", "assert_disjoint", "per_grade_scores",
           "pixel_features"]

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


def fid_kid(real: Dataset, fake: Dataset, feature_extractor: str = "inception-v3-compat",
            feature_layer: str | None = None, batch_size: int = 64, kid_subset_size: int = 1000,
            extractor_weights_path: str | None = None, cuda: bool | None = None) -> dict[str, float]:
    """FID and KID (mean, std) of ``fake`` against ``real`` through torch-fidelity.

    ``kid_subset_size`` is capped at the smaller set; KID is the less biased of the two at small
    sample counts (FID is biased upwards when few images are compared).
    """
    import torch_fidelity

    cuda = torch.cuda.is_available() if cuda is None else cuda
    kw: dict[str, Any] = dict(input1=fake, input2=real, fid=True, kid=True, feature_extractor=feature_extractor,
                              batch_size=batch_size, cuda=cuda, verbose=False, cache=False, save_cpu_ram=True,
                              kid_subset_size=min(kid_subset_size, len(real), len(fake)))
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


def pixel_features(images: Sequence[np.ndarray], side: int = 32) -> np.ndarray:
    """``[N, side * side * 3]`` pixel vectors of ``[H, W, 3]`` images subsampled to about ``side`` px,
    for a Vendi score on pixels (diversity that ignores what a classifier finds relevant)."""
    return np.stack([np.asarray(im)[::max(1, im.shape[0] // side), ::max(1, im.shape[1] // side)].reshape(-1)
                     for im in images]).astype(np.float64)


def vendi_score(features: np.ndarray | torch.Tensor) -> float:
    """Vendi score of ``[N, D]`` features under the cosine-similarity kernel.

    ``exp(-sum_i l_i log l_i)`` over the eigenvalues ``l`` of ``K / N``, ``K = X X^T`` with unit-norm
    rows ``X``: 1 when all items are identical, N when all are orthogonal.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    k = x @ x.T / len(x)
    w = np.linalg.eigvalsh(k)
    w = w[w > 1e-12]
    return float(np.exp(-(w * np.log(w)).sum()))


@torch.no_grad()
def classifier_features(model: nn.Module, images: Sequence[np.ndarray], image_size: int, mean: Sequence[float],
                        std: Sequence[float], device: torch.device | str = "cpu",
                        batch_size: int = 64, multi_label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logit features ``[N, D]`` and probabilities ``[N, K]`` (softmax; sigmoid when
    ``multi_label``) of ``[H, W, 3]`` uint8 images."""
    model = model.eval().to(device)
    m = torch.tensor(mean).view(1, 3, 1, 1).to(device)
    s = torch.tensor(std).view(1, 3, 1, 1).to(device)
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images[i:i + batch_size]])
        x = x.to(device).float() / 255.0
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        f = model.forward_head(model.forward_features((x - m) / s), pre_logits=True)
        feats.append(f.float().cpu())
        logits = model.get_classifier()(f).float()
        probs.append((logits.sigmoid() if multi_label else logits.softmax(-1)).cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def alignment(probs: np.ndarray, prompted: Sequence[Any], num_classes: int) -> dict[str, Any]:
    """How well images show what their prompts asked, judged by a real-data classifier.

    Args:
        probs: ``[N, K]`` the classifier's probabilities on the generated images.
        prompted: ``[N]`` the class each image's prompt asked for, or ``[N, K]`` multi-hot findings.

    Returns accuracy, quadratic-weighted Kappa, macro AUC and F1 (as for real data) and the
    per-class accuracy; for findings, macro and per-finding AUC, F1 and accuracy.
    """
    from nbsupport.metrics import classification_metrics, multilabel_metrics

    if np.asarray(prompted).ndim == 2:
        out_ml: dict[str, Any] = multilabel_metrics(np.asarray(prompted), probs)
        out_ml["per_class_accuracy"] = out_ml["per_finding_auc"]
        return out_ml
    y = np.asarray(prompted, dtype=int)
    out: dict[str, Any] = classification_metrics(y, probs, num_classes)
    pred = np.asarray(probs).argmax(1)
    out["per_class_accuracy"] = {int(c): float((pred[y == c] == c).mean()) for c in np.unique(y)}
    return out


def clip_score(images: Sequence[np.ndarray], prompts: Sequence[str], model_id: str = "openai/clip-vit-base-patch32",
               revision: str | None = None, device: torch.device | str = "cpu") -> float:
    """Mean CLIP score ``100 * max(cos(image, text), 0)`` (Hessel et al. 2021) with a hub CLIP.

    Raises:
        RuntimeError: when the CLIP weights cannot be loaded (offline), naming the fix.
    """
    try:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(model_id, revision=revision, use_safetensors=True).to(device).eval()
        proc = CLIPProcessor.from_pretrained(model_id, revision=revision)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"CLIP score needs the weights of {model_id!r} ({exc.__class__.__name__}); offline, "
                           "pass a local folder as model_id, or rely on the classifier-based alignment") from exc
    with torch.no_grad():
        inp = proc(text=list(prompts), images=[np.asarray(i) for i in images], return_tensors="pt",
                   padding=True, truncation=True).to(device)
        img = F.normalize(model.get_image_features(pixel_values=inp["pixel_values"]), dim=-1)
        txt = F.normalize(model.get_text_features(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"]), dim=-1)
    return float((100 * (img * txt).sum(-1).clamp(min=0)).mean())


def assert_disjoint(train_keys: Sequence[Any], test_keys: Sequence[Any], what: str = "image") -> None:
    """Raise if any test key (image id or patient id) is also a training key."""
    leak = set(train_keys) & set(test_keys)
    if leak:
        raise AssertionError(f"{len(leak)} test {what}(s) leaked into training, e.g. {sorted(map(str, leak))[:3]}")


def per_grade_scores(real_feats: np.ndarray, real_labels: Sequence[int], real_images: Sequence[np.ndarray],
                     gen_feats: np.ndarray, gen_labels: Sequence[int], gen_images: Sequence[np.ndarray],
                     num_classes: int, min_count: int = 2, **fid_kw: Any) -> dict[int, dict[str, float]]:
    """FID and Vendi (on the same features), KID (torch-fidelity) and pixel Vendi per grade.

    A grade is scored only where both the real and the generated side have ``min_count`` images
    or more; ``fid_kw`` goes to :func:`fid_kid` (the extractor to use).
    """
    out: dict[int, dict[str, float]] = {}
    for c in range(num_classes):
        g = [i for i, t in enumerate(gen_labels) if int(t) == c]
        r = [i for i, t in enumerate(real_labels) if int(t) == c]
        if len(g) < min_count or len(r) < min_count:
            continue
        kid = fid_kid(UInt8Images([real_images[i] for i in r]), UInt8Images([gen_images[i] for i in g]), **fid_kw)["kid"]
        out[c] = {"fid": fid_from_features(real_feats[r], gen_feats[g]), "kid": kid, "vendi": vendi_score(gen_feats[g]),
                  "vendi_pixels": vendi_score(pixel_features([gen_images[i] for i in g])), "n": len(g)}
    return out
