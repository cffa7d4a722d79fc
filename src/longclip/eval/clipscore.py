"""CLIPScore for texts of any length: a reference-free image-caption score.

CLIPScore is defined in Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning"
(EMNLP), as ``w * max(cos(E_image, E_text), 0)``. The paper uses ``w = 2.5`` to spread scores over roughly [0, 1];
torchmetrics' ``CLIPScore`` and most later work report ``100 * max(cos, 0)``, which is our default (pass
``w=2.5`` for the paper's scale). Unlike torchmetrics, which averages over the batch, :func:`clip_score` returns one
score per pair; :func:`clip_score_corpus` gives the mean.

The original CLIPScore is limited to CLIP's 77 tokens. With a Long-CLIP model, captions up to the model's context
(248 tokens) are read in full; longer ones are truncated keeping the end-of-text token last (as Long-CLIP does), or,
with ``long_texts="chunk"``, embedded in consecutive pieces whose normalized embeddings are averaged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..models.base import DualEncoder, LongTextMode

logger = logging.getLogger(__name__)

__all__ = ["clip_score", "clip_score_corpus"]


def clip_score(
    images: Sequence,
    texts: Sequence[str],
    model: DualEncoder,
    batch_size: int = 32,
    w: float = 100.0,
    long_texts: LongTextMode = "truncate",
) -> torch.Tensor:
    """CLIPScore of each (image, text) pair: ``w * max(cos(image_i, text_i), 0)`` (Hessel et al. 2021).

    Args:
        images: Images in any form ``model.embed_images`` accepts (paths, bytes, PIL images, arrays, tensors).
        texts: One caption per image; ``texts[i]`` is scored against ``images[i]``.
        model: The image-text model.
        batch_size: Images (and texts) per forward pass.
        w: Scale; 100 as torchmetrics reports it, 2.5 in the paper.
        long_texts: Texts longer than the model's context: ``"truncate"`` (end token kept), ``"chunk"`` (mean of
            the normalized embeddings of consecutive pieces) or ``"error"``.

    Returns:
        ``[N]`` float32 scores in ``[0, w]``.

    Raises:
        ValueError: If ``images`` and ``texts`` differ in length, ``texts`` is a single string or ``w`` is not
            positive.
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a list of captions, one per image, not a single string")
    images, texts = list(images), list(texts)
    if len(images) != len(texts):
        raise ValueError(f"got {len(images)} images but {len(texts)} texts; expected one text per image")
    if not w > 0:
        raise ValueError(f"w must be positive, got {w!r}")
    if not images:
        return torch.empty(0)
    image_features = model.embed_images(images, batch_size=batch_size, normalize=True)
    text_features = model.embed_texts(texts, batch_size=batch_size, normalize=True, long_texts=long_texts)
    cosine = (image_features.float() * text_features.float().to(image_features.device)).sum(dim=-1)
    # Negative cosines are clipped to 0 as in the paper: "unrelated" is the floor, there is no "anti-related".
    return w * cosine.clamp(min=0)


def clip_score_corpus(
    images: Sequence,
    texts: Sequence[str],
    model: DualEncoder,
    batch_size: int = 32,
    w: float = 100.0,
    long_texts: LongTextMode = "truncate",
) -> float:
    """Mean CLIPScore over all pairs (what torchmetrics' ``CLIPScore`` reports); arguments as :func:`clip_score`.

    Raises:
        ValueError: As :func:`clip_score`, and on no pairs (the mean of nothing is undefined).
    """
    scores = clip_score(images, texts, model, batch_size=batch_size, w=w, long_texts=long_texts)
    if scores.numel() == 0:
        raise ValueError("no image-text pairs to score")
    return float(scores.mean())
