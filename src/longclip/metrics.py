"""Kept for old imports: CLIPScore lives in :mod:`longclip.eval.clipscore` beside the other evaluation metrics."""

from .eval.clipscore import clip_score, clip_score_corpus

__all__ = ["clip_score", "clip_score_corpus"]
