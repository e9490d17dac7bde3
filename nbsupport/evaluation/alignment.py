"""Prompt-image alignment: does an image show what its prompt asked? A real-data classifier's
accuracy / Kappa / AUC on generated images against the prompted labels; CLIP score where CLIP
weights can be had.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nbsupport.vit.metrics import classification_metrics, multilabel_metrics

__all__ = ["classifier_features", "alignment", "alignment_reference", "clip_score"]


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

    Returns, for grades: accuracy, quadratic-weighted Kappa, and AUC and F1 macro-averaged over the
    classes *present in the prompts* (``f1_classes`` lists them), with ``per_class_score`` the
    accuracy per prompted class (``per_class_metric`` says ``"accuracy"``). For findings: macro and
    per-finding AUC (``per_class_metric`` says ``"AUC"``), F1 and accuracy.
    """
    from sklearn.metrics import f1_score

    if np.asarray(prompted).ndim == 2:
        out_ml: dict[str, Any] = multilabel_metrics(np.asarray(prompted), probs)
        out_ml["per_class_score"] = out_ml["per_finding_auc"]
        out_ml["per_class_metric"] = "AUC"
        return out_ml
    y = np.asarray(prompted, dtype=int)
    out: dict[str, Any] = classification_metrics(y, probs, num_classes)
    pred = np.asarray(probs).argmax(1)
    present = sorted(int(c) for c in np.unique(y))
    out["f1"] = float(f1_score(y, pred, labels=present, average="macro", zero_division=0))
    out["f1_classes"] = present
    out["per_class_score"] = {c: float((pred[y == c] == c).mean()) for c in present}
    out["per_class_metric"] = "accuracy"
    return out


def alignment_reference(real_probs: np.ndarray, real_labels: Sequence[int], prompted: Sequence[int],
                        num_classes: int) -> float:
    """The alignment accuracy of images the judge reads exactly as it reads real ones: its accuracy
    on the real images of each grade, weighted by how often the prompts ask for that grade.

    This, not the judge's accuracy over the test set as drawn, is what a generator's alignment
    accuracy is read against: the prompts' mix of grades differs from the test set's, and the judge
    is better on some grades than others. Grades the prompts ask for but no real image shows are
    left out of the weights.

    Args:
        real_probs: ``[M, K]`` the judge's probabilities on real images.
        real_labels: ``[M]`` their grades.
        prompted: ``[N]`` the grade each generated image's prompt asked for.
        num_classes: ``K``.
    """
    y = np.asarray(real_labels, dtype=int)
    hit = np.asarray(real_probs).argmax(1) == y                                       # [M]
    asked = np.bincount(np.asarray(prompted, dtype=int), minlength=num_classes)     # [K]
    shown = np.bincount(y, minlength=num_classes)                                    # [K]
    recall = np.bincount(y, weights=hit, minlength=num_classes) / np.maximum(shown, 1)
    weight = np.where(shown > 0, asked, 0)
    if weight.sum() == 0:
        raise ValueError("alignment_reference: no prompted grade has a real image to compare with")
    return float((weight * recall).sum() / weight.sum())


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
