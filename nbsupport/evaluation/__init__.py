"""Evaluating generated images: fidelity (FID/KID), diversity (Vendi), prompt-image alignment.

Sits above ``vit`` and ``sd``: the domain extractor and the alignment judge are classifiers.
"""

from nbsupport.evaluation.alignment import alignment, alignment_reference, classifier_features, clip_score
from nbsupport.evaluation.diversity import pixel_features, vendi_score
from nbsupport.evaluation.fidelity import (
    UInt8Images,
    fid_from_features,
    fid_kid,
    per_grade_scores,
    reference_extractor,
    register_domain_extractor,
    uint8_images,
)
from nbsupport.evaluation.judge import Judge, train_judge

__all__ = ["UInt8Images", "register_domain_extractor", "reference_extractor", "uint8_images", "Judge", "train_judge", "fid_kid", "fid_from_features", "per_grade_scores",
           "vendi_score", "pixel_features", "classifier_features", "alignment", "alignment_reference", "clip_score"]
