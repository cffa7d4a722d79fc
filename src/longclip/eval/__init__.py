"""Evaluation metrics: zero-shot classification and image-text retrieval, with CLIP_benchmark's result keys.

Only the metrics live here; they take features, logits or a model plus in-memory inputs, never dataset paths.
"""

from .metrics import retrieval_metrics
from .zeroshot import build_classifier, classification_metrics, zero_shot_classify

__all__ = ["build_classifier", "classification_metrics", "retrieval_metrics", "zero_shot_classify"]
