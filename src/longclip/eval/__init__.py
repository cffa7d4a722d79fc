"""Evaluation: metrics with CLIP_benchmark's result keys, the benchmark data sets, and the runner over both.

``metrics`` / ``zeroshot`` / ``clipscore`` work on features, logits or a model plus in-memory inputs; ``datasets``
reads local copies of the benchmarks in their published layouts (registered in one table); ``runner`` evaluates a
model on any registered data set through one code path; ``effective_length`` is the caption-length probe.
"""

from .clipscore import clip_score, clip_score_corpus
from .datasets import DATASETS, ClassificationSet, RetrievalSet, load_dataset
from .metrics import retrieval_metrics
from .runner import evaluate, evaluate_dataset, format_markdown, write_clip_benchmark, write_report
from .zeroshot import build_classifier, classification_metrics, zero_shot_classify

__all__ = [
    "DATASETS",
    "ClassificationSet",
    "RetrievalSet",
    "build_classifier",
    "classification_metrics",
    "clip_score",
    "clip_score_corpus",
    "evaluate",
    "evaluate_dataset",
    "format_markdown",
    "load_dataset",
    "retrieval_metrics",
    "write_clip_benchmark",
    "write_report",
    "zero_shot_classify",
]
