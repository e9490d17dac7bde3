"""Evaluating generated images: fidelity (FID/KID), diversity (Vendi), prompt-image alignment.

Sits above ``vit`` and ``sd``: the domain extractor and the alignment judge are classifiers.
"""

from nbsupport.evaluation.alignment import alignment, classifier_features, clip_score
from nbsupport.evaluation.diversity import pixel_features, vendi_score
from nbsupport.evaluation.fidelity import (
    UInt8Images,
    fid_from_features,
    fid_kid,
    per_grade_scores,
    register_domain_extractor,
)

__all__ = ["UInt8Images", "register_domain_extractor", "fid_kid", "fid_from_features", "per_grade_scores",
           "vendi_score", "pixel_features", "classifier_features", "alignment", "clip_score"]
