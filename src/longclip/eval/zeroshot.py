"""Zero-shot image classification: prompt-ensembled text classifiers, top-k accuracy, mean per-class recall.

The classifier is the CLIP paper's prompt ensembling (Radford et al. 2021, section 3.1.4): each class name is put into
every template (``"a photo of a {}."``), the L2-normalized text embeddings are averaged over the templates and the
mean is L2-normalized again. Metric keys are CLIP_benchmark's (``clip_benchmark/metrics/zeroshot_classification.py``):
``acc1``, ``acc5`` and ``mean_per_class_recall`` (its balanced accuracy: per-class recall@1 averaged over the classes
that occur in the labels).

As in the retrieval metrics, **ties count against the model**: the rank of the true class is the number of other
classes whose logit is greater than or equal to its logit, and it is a top-k hit if that rank is below k.
CLIP_benchmark takes ``topk``, which breaks ties by class index; the two agree on the continuous logits of a real
model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..models import DualEncoder

logger = logging.getLogger(__name__)

__all__ = ["build_classifier", "classification_metrics", "zero_shot_classify"]

Template = str | Callable[[str], str]


def build_classifier(
    model: DualEncoder,
    class_names: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
) -> torch.Tensor:
    """Zero-shot classifier weights ``[n_classes, D]`` from class names and prompt templates.

    For each class, every template is filled with the class name, the prompts are embedded and L2-normalized,
    averaged over the templates, and the mean is L2-normalized (the CLIP paper's prompt ensembling).

    Args:
        model: The image-text model (its ``embed_texts`` is used; prompts longer than the context are truncated).
        class_names: One name per class, in label order.
        templates: Prompt templates with a ``{}`` or ``{c}`` placeholder (``"a photo of a {}."``), or callables
            taking the class name and returning the prompt (open_clip's ``lambda c: f"a photo of a {c}."``).
        batch_size: Prompts per forward pass.

    Returns:
        ``[len(class_names), D]`` float32 L2-normalized class embeddings; ``image_features @ classifier.T`` gives
        the zero-shot logits (up to the model's logit scale, which does not change any ranking).

    Raises:
        ValueError: On no class names, no templates, or a template that cannot be filled with a class name.
    """
    if isinstance(class_names, str) or isinstance(templates, str):
        raise ValueError("class_names and templates must be lists of strings, not a single string")
    class_names, templates = list(class_names), list(templates)
    if not class_names:
        raise ValueError("class_names is empty; expected one name per class")
    if not templates:
        raise ValueError("templates is empty; expected at least one, e.g. ['a photo of a {}.']")
    # One embed_texts call for every prompt: it sorts all of them by length and batches across classes.
    prompts = [_fill(template, name) for name in class_names for template in templates]
    features = model.embed_texts(prompts, batch_size=batch_size, normalize=True)
    features = features.float().reshape(len(class_names), len(templates), -1)
    logger.debug("built a zero-shot classifier for %d classes x %d templates", len(class_names), len(templates))
    return F.normalize(features.mean(dim=1), dim=-1)


def _fill(template: Template, class_name: str) -> str:
    if callable(template):
        return template(class_name)
    try:
        # Positional and named arguments both, so "a photo of a {}." and "a photo of a {c}." both work.
        prompt = template.format(class_name, c=class_name)
        has_placeholder = "\0" in template.format("\0", c="\0")
    except (IndexError, KeyError, ValueError) as e:
        raise ValueError(f"template {template!r} cannot be filled with a class name: {e!r}") from e
    if not has_placeholder:
        # Without a placeholder every class would get the same prompt, and the classifier would be constant.
        raise ValueError(f"template {template!r} has no '{{}}' or '{{c}}' placeholder for the class name")
    return prompt


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor | Sequence[int], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracies and mean per-class recall of classification scores, with pessimistic ties.

    Args:
        logits: ``[N, n_classes]`` scores (any monotone scale: cosine similarities, logits, probabilities).
        labels: ``[N]`` true class indices in ``[0, n_classes)``.
        ks: Cut-offs for ``acc{k}``. A ``k`` above ``n_classes`` is clamped to ``n_classes`` (so it is 1.0) and
            still reported under its own name, so ``acc5`` exists for a 3-class task.

    Returns:
        ``{"acc1": ..., "acc5": ..., "mean_per_class_recall": ...}`` (one ``acc{k}`` per ``k``) as Python floats.
        ``mean_per_class_recall`` averages top-1 recall over the classes that occur in ``labels``.

    Raises:
        ValueError: On logits that are not 2-D or contain NaN, labels of the wrong shape or out of range, or a
            ``k`` below 1.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a 2-D tensor [N, n_classes], got {shape}")
    n, n_classes = logits.shape
    if n == 0 or n_classes == 0:
        raise ValueError(f"logits is empty (shape {(n, n_classes)}); expected at least one sample and one class")
    if bool(torch.isnan(logits).any()):
        raise ValueError("logits contain NaN; drop the rows of images that could not be embedded")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have one class index per row of logits, shape [{n}], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.to(device=logits.device, dtype=torch.long)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise ValueError(f"labels has class index {low if low < 0 else high}, expected indices in [0, {n_classes})")
    if isinstance(ks, int):
        ks = [ks]
    ks = list(ks)
    for k in ks:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"every k in ks must be a positive integer, got {k!r} in {ks}")

    with torch.no_grad():
        logits = logits.detach().float()
        correct = logits.gather(1, labels[:, None])
        # Pessimistic rank: other classes scoring >= the true one (the true class itself is counted once, removed).
        ranks = (logits >= correct).sum(dim=1).cpu() - 1
        labels = labels.cpu()  # the bookkeeping below is in float64, which not every accelerator has
        # rank < min(k, n_classes) equals rank < k since rank <= n_classes - 1; the clamp is implicit.
        metrics = {f"acc{int(k)}": float((ranks < k).double().mean()) for k in ks}
        hits = (ranks == 0).double()
        per_class_hits = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, labels, hits)
        counts = torch.bincount(labels, minlength=n_classes).double()
        present = counts > 0
        metrics["mean_per_class_recall"] = float((per_class_hits[present] / counts[present]).mean())
    return metrics


def zero_shot_classify(
    model: DualEncoder,
    images: Sequence,
    labels: Sequence[int],
    class_names: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 64,
    skip_errors: bool = False,
) -> dict[str, float]:
    """Zero-shot classification of images against class-name prompts.

    Args:
        model: The image-text model.
        images: Images in any form ``model.embed_images`` accepts (paths, bytes, PIL images, arrays, tensors).
        labels: True class index of each image.
        class_names: One name per class, in label order.
        templates: Prompt templates, as for :func:`build_classifier`.
        batch_size: Images per forward pass.
        skip_errors: Leave out images that cannot be loaded (logged by ``embed_images``) instead of raising.

    Returns:
        :func:`classification_metrics` (``acc1``, ``acc5``, ``mean_per_class_recall``) over the images that were
        scored, plus ``num_images`` (images scored) and ``num_skipped`` (images left out as unreadable).

    Raises:
        ValueError: If ``images`` and ``labels`` differ in length, a label is out of range, or no image is left.
    """
    images = list(images)
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    if labels.shape[0] != len(images):
        raise ValueError(f"got {len(images)} images but {labels.shape[0]} labels; expected one label per image")
    if not images:
        raise ValueError("images is empty; expected at least one image")
    n_classes = len(class_names)
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.numel():
        # Checked before the (slow) image embedding so that a wrong label list fails at once.
        raise ValueError(f"label {int(bad[0])} is out of range for {n_classes} class names")

    classifier = build_classifier(model, class_names, templates)
    features = model.embed_images(images, batch_size=batch_size, normalize=True, skip_errors=skip_errors)
    kept = ~torch.isnan(features).any(dim=1)
    num_skipped = int((~kept).sum())
    if num_skipped:
        logger.warning(
            "%d of %d images could not be loaded and are left out of the accuracy", num_skipped, len(images)
        )
    if not bool(kept.any()):
        raise ValueError(f"none of the {len(images)} images could be embedded")
    logits = features[kept].float() @ classifier.to(features.device).T
    metrics: dict[str, float] = classification_metrics(logits, labels[kept])
    metrics["num_images"] = int(kept.sum())
    metrics["num_skipped"] = num_skipped
    return metrics
