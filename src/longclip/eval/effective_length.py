"""The effective-length probe: retrieval accuracy as long captions are cut shorter and shorter.

Each caption is cut at token ``k`` (its first ``k`` tokens, start token included, then the end token placed at
position ``k``) and retrieval is measured again. Where the curve stops rising is how much of a caption the model
actually uses: the measurement behind Long-CLIP's observation that CLIP's effective length is about 20 tokens
(Zhang et al., ECCV 2024, Sec. 3.1).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from ..models.base import DualEncoder
from ..tokenizer import EOT_ID
from .metrics import retrieval_metrics

logger = logging.getLogger(__name__)

DEFAULT_LENGTHS = (5, 10, 15, 20, 25, 30, 40, 50, 60, 77, 100, 125, 150, 175, 200, 225, 248)


def cut_tokens(ids: Sequence[int], k: int) -> list[int]:
    """The first ``k`` tokens of ``ids`` followed by the end token, which lands at position ``k``.

    A caption that already ends by then is returned whole.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1 (the start token), got {k}")
    return list(ids) if len(ids) <= k + 1 else [*ids[:k], EOT_ID]


def effective_length_curve(
    model: DualEncoder,
    images: Sequence,
    texts: Sequence[str],
    text_to_image: Sequence[int],
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    batch_size: int = 64,
) -> list[dict[str, float]]:
    """Retrieval recall@1 in both directions with captions cut at each length in ``lengths``.

    Lengths beyond the model's context are clipped to it (a 77-token CLIP sees at most 76 caption positions).

    Returns:
        One dict per length: ``{"k", "image_retrieval_recall@1", "text_retrieval_recall@1"}``.
    """
    image_features = model.embed_images(images, batch_size=batch_size, progress=False)
    kept = ~torch.isnan(image_features).any(dim=1)
    if not bool(kept.all()):
        raise ValueError(f"{int((~kept).sum())} images could not be read; the probe needs all of them")
    token_ids = model.tokenizer.encode(texts)
    limit = model.context_length - 1
    curve = []
    for k in lengths:
        # The tokenizer's own cut (CLIP's keeps the end token last, = cut_tokens), so any model family is probed.
        cut = [model.tokenizer.truncate(ids, min(k, limit) + 1) for ids in token_ids]
        text_features = model.embed_tokens(cut, batch_size=batch_size, progress=False)
        metrics = retrieval_metrics(image_features, text_features, text_to_image, ks=(1,))
        curve.append({"k": int(k), **metrics})
        logger.info("k=%d: %s", k, metrics)
    return curve


def plot_effective_length(curves: dict[str, list[dict[str, float]]], path: str | os.PathLike, title: str = "") -> None:
    """Save a PNG of text-to-image and image-to-text recall@1 against the cut length, one line per model.

    Needs matplotlib (``pip install 'longclip[eval]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: render to a file
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'longclip[eval]'") from e

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    directions = (("image_retrieval_recall@1", "text → image R@1"), ("text_retrieval_recall@1", "image → text R@1"))
    for axis, (key, label) in zip(axes, directions, strict=True):
        for name, curve in curves.items():
            axis.plot([p["k"] for p in curve], [100 * p[key] for p in curve], marker="o", markersize=3, label=name)
        axis.axvline(77, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("caption cut at token k")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("recall@1 (%)")
    axes[0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
