"""Image-text retrieval metrics: recall@k in both directions, with the keys CLIP_benchmark reports.

Definitions follow CLIP_benchmark (``clip_benchmark/metrics/zeroshot_retrieval.py``), which in turn follows the
Flickr30k / MS-COCO retrieval protocol of the CLIP paper (Radford et al. 2021, section 3.1.5):

* ``image_retrieval_recall@k`` (text -> image): the fraction of texts whose image is among the ``k`` images most
  similar to the text.
* ``text_retrieval_recall@k`` (image -> text): the fraction of images for which *any* of their texts is among the
  ``k`` texts most similar to the image. Images without a text cannot be scored and are left out.

One deliberate difference: **ties count against the model**. CLIP_benchmark takes ``topk`` of the scores, which
breaks ties by position, so a model that maps every image to the same vector gets recall@1 = 1 whenever the right
image happens to come first. Here the rank of the correct candidate is *pessimistic*: the number of other (wrong)
candidates whose score is greater than **or equal to** the correct one's, and a hit at ``k`` means rank < ``k``. A
collapsed model therefore gets recall@1 = 0 (unless there is a single candidate). On continuous features of a real
model ties are vanishingly rare and both definitions agree.

Similarities are dot products of the given features (cosine similarities for L2-normalized ones), computed in
float32 in chunks of rows, so 25,000 texts x 5,000 images never hold more than ``chunk_size x N`` scores at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["retrieval_metrics"]

_NORM_TOLERANCE = 1e-2  # how far from 1 a row's norm may be before we warn that the features look unnormalized


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@k for text->image and image->text retrieval, with pessimistic tie handling.

    Ties count against the model: the rank of a correct candidate is the number of *other* candidates scoring at
    least as high (``>=``) as it, and it is a hit at ``k`` if that rank is below ``k``. For image->text the best-ranked
    of the image's texts counts, and the image's other texts are not counted against it. So features that are all
    equal give recall@1 = 0, not 1, unless there is a single candidate.

    Args:
        image_features: ``[N_img, D]`` image features, L2-normalized (e.g. ``model.embed_images(...)``).
        text_features: ``[N_txt, D]`` text features, L2-normalized (e.g. ``model.embed_texts(...)``).
        text_to_image: ``[N_txt]`` integers: for each text, the index of the image it describes. Several texts may
            share an image (five captions per image in COCO and Flickr30k).
        ks: The cut-offs ``k`` to report.
        chunk_size: Rows of the similarity matrix computed at a time; bounds memory to ``chunk_size x N`` floats.

    Returns:
        ``{"image_retrieval_recall@{k}": ..., "text_retrieval_recall@{k}": ...}`` for every ``k`` in ``ks``, as
        Python floats in ``[0, 1]``.

    Raises:
        ValueError: On features that are not 2-D or disagree in width, NaN rows (images ``embed_images`` skipped:
            drop them and their texts first), a ``text_to_image`` of the wrong length or with an index outside
            ``[0, N_img)``, a ``k`` below 1 or a ``chunk_size`` below 1.
    """
    ks = _check_ks(ks)
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    images, texts, owners = _check_inputs(image_features, text_features, text_to_image)

    with torch.no_grad():
        t2i_ranks = _text_to_image_ranks(images, texts, owners, chunk_size)
        i2t_ranks = _image_to_text_ranks(images, texts, owners, chunk_size)

    skipped = images.shape[0] - i2t_ranks.numel()
    if skipped:
        logger.warning(
            "%d of %d images have no text; they are left out of text retrieval (image->text) recall",
            skipped,
            images.shape[0],
        )
    logger.debug("retrieval over %d images and %d texts", images.shape[0], texts.shape[0])

    metrics = {}
    for k, recall in zip(ks, _recall_at_k(t2i_ranks, ks), strict=True):
        metrics[f"image_retrieval_recall@{k}"] = recall
    for k, recall in zip(ks, _recall_at_k(i2t_ranks, ks), strict=True):
        metrics[f"text_retrieval_recall@{k}"] = recall
    return metrics


def _text_to_image_ranks(
    images: torch.Tensor, texts: torch.Tensor, owners: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """For each text, the number of images other than its own that score ``>=`` its own image."""
    ranks = []
    for start in range(0, texts.shape[0], chunk_size):
        scores = texts[start : start + chunk_size] @ images.T  # [chunk, N_img]
        rows = torch.arange(scores.shape[0], device=scores.device)
        # Read the correct score from the same matrix rather than recomputing it, so it compares equal to itself
        # bit for bit; it is then counted once by ``>=`` and subtracted.
        correct = scores[rows, owners[start : start + chunk_size]]
        ranks.append((scores >= correct[:, None]).sum(dim=1) - 1)
    return torch.cat(ranks)


def _image_to_text_ranks(
    images: torch.Tensor, texts: torch.Tensor, owners: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """For each image that has a text: the number of *other images'* texts scoring ``>=`` its best own text."""
    ranks = []
    for start in range(0, images.shape[0], chunk_size):
        scores = images[start : start + chunk_size] @ texts.T  # [chunk, N_txt]
        image_ids = torch.arange(start, start + scores.shape[0], device=scores.device)
        own = owners[None, :] == image_ids[:, None]
        best = scores.masked_fill(~own, -torch.inf).amax(dim=1)
        # The image's other texts never count against it: only a wrong text can push the best right one down.
        rank = ((scores >= best[:, None]) & ~own).sum(dim=1)
        ranks.append(rank[own.any(dim=1)])
    return torch.cat(ranks)


def _recall_at_k(ranks: torch.Tensor, ks: Sequence[int]) -> list[float]:
    """Fraction of queries with rank < k, for each k (ranks are 0-based, so rank 0 is a hit at k = 1)."""
    ranks = ranks.cpu()  # float64 for exact-looking fractions in JSON; not every accelerator has it
    return [float((ranks < k).double().mean()) for k in ks]


def _check_ks(ks: Sequence[int]) -> list[int]:
    if isinstance(ks, int):
        ks = [ks]
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty; expected at least one cut-off k, e.g. (1, 5, 10)")
    for k in ks:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"every k in ks must be a positive integer, got {k!r} in {ks}")
    return [int(k) for k in ks]


def _check_inputs(
    image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor | Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate shapes, indices and values; return float32 features and int64 owners on the images' device."""
    for name, features in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(features, torch.Tensor) or features.ndim != 2:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"{name} must be a 2-D tensor [N, D], got {shape}")
        if features.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(features.shape)}); expected at least one row")
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image_features and text_features must have the same width D, got {image_features.shape[1]} "
            f"and {text_features.shape[1]}"
        )
    device = image_features.device
    images = image_features.detach().to(dtype=torch.float32)
    texts = text_features.detach().to(device=device, dtype=torch.float32)
    for name, features in (("image_features", images), ("text_features", texts)):
        bad = torch.isnan(features).any(dim=1) | torch.isinf(features).any(dim=1)
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            raise ValueError(
                f"{name} has {len(rows)} rows with NaN or infinite values (first: {rows[:5]}); rows of images that "
                "embed_images(skip_errors=True) could not load are NaN: drop them, and the texts of those images, "
                "before computing retrieval metrics"
            )
        norms = features.norm(dim=1)
        if bool(((norms - 1).abs() > _NORM_TOLERANCE).any()):
            # Not an error (ranking by dot product is well defined), but recall then depends on feature norms.
            logger.warning("%s do not look L2-normalized (row norms %.3g..%.3g)", name, norms.min(), norms.max())

    owners = torch.as_tensor(text_to_image)
    if owners.ndim != 1 or owners.shape[0] != texts.shape[0]:
        raise ValueError(
            f"text_to_image must have one image index per text, shape [{texts.shape[0]}], got {tuple(owners.shape)}"
        )
    if owners.dtype.is_floating_point or owners.dtype.is_complex or owners.dtype == torch.bool:
        raise ValueError(f"text_to_image must hold integer image indices, got dtype {owners.dtype}")
    owners = owners.to(device=device, dtype=torch.long)
    low, high = int(owners.min()), int(owners.max())
    if low < 0 or high >= images.shape[0]:
        bad = low if low < 0 else high
        raise ValueError(f"text_to_image has image index {bad}, expected indices in [0, {images.shape[0]})")
    return images, texts, owners
