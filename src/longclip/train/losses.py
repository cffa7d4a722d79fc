"""Training objectives: CLIP's contrastive loss and Long-CLIP's primary component matching.

Primary component matching (Zhang et al., "Long-CLIP", ECCV 2024, Sec. 3.3): the long caption is matched with the
image's full features (fine-grained), and the short caption with the image features rebuilt from their top
principal components only (coarse-grained), so the short caption is asked to carry the image's main attributes and
not its details.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .distributed import DistributedContext, gather_with_grad

logger = logging.getLogger(__name__)

PCM_GRADIENTS = ("through-svd", "detached")


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Symmetric cross-entropy over the image-text similarity matrix (CLIP's InfoNCE); row ``i`` pairs with ``i``.

    Args:
        image_features: ``[N, D]`` L2-normalized (or, for the coarse loss, PCA-rebuilt) image features.
        text_features: ``[N, D]`` L2-normalized text features.
        logit_scale: The temperature's inverse, already exponentiated.
        label_smoothing: Passed to ``F.cross_entropy``.
    """
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    per_image = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    per_text = F.cross_entropy(logits.T, labels, label_smoothing=label_smoothing)
    return (per_image + per_text) / 2


def principal_component_reconstruction(
    features: torch.Tensor, components: int, gradient: str = "through-svd"
) -> torch.Tensor:
    """Rebuild ``[N, D]`` features from their top principal components, mean added back, not renormalized.

    The SVD runs in (at least) float32 on the centred batch, as the original Long-CLIP's ``PCA`` does.

    Args:
        features: ``[N, D]`` features.
        components: Principal components kept.
        gradient: ``"through-svd"`` (the original's: gradients also flow through the principal directions, i.e.
            through the SVD) or ``"detached"`` (the directions are constants: the same value, but a gradient that
            ignores how the directions move; the SVD's backward is unstable when singular values nearly repeat).

    Raises:
        torch.linalg.LinAlgError: The SVD did not converge or gave non-finite directions.
    """
    x = features.to(torch.promote_types(features.dtype, torch.float32))  # half precision is too coarse for SVD
    mean = x.mean(dim=0, keepdim=True)
    centred = x - mean
    if gradient not in PCM_GRADIENTS:
        raise ValueError(f"gradient must be one of {PCM_GRADIENTS}, got {gradient!r}")
    source = centred.detach() if gradient == "detached" else centred
    _, _, directions = torch.linalg.svd(source, full_matrices=False)
    if not torch.isfinite(directions).all():
        raise torch.linalg.LinAlgError("SVD gave non-finite principal directions")
    basis = directions[:components]  # [k, D]; fewer rows if the batch is smaller than k
    return (centred @ basis.T @ basis + mean).to(features.dtype)


@dataclass
class LossOutput:
    loss: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


class LongCLIPObjective:
    """Fine-grained loss (long caption <-> image) plus weighted coarse-grained loss (short caption <-> PCA image).

    Features are gathered across ranks with gradients, so each rank computes the loss of the whole global batch.
    PCA runs on each rank's local batch, as in the original training. When the SVD fails on any rank, all ranks skip
    the coarse loss for that step (a warning, and ``svd_failures`` counts it) instead of crashing.

    Args:
        pca_components: Principal components kept for the coarse-grained image features.
        short_loss_weight: Weight of the coarse-grained loss.
        label_smoothing: Label smoothing of both cross-entropies.
        context: The distributed context (gathering across ranks).
        pcm_gradient: How gradients meet the SVD (see :func:`principal_component_reconstruction`).
    """

    def __init__(
        self,
        pca_components: int = 32,
        short_loss_weight: float = 1.0,
        label_smoothing: float = 0.1,
        context: DistributedContext | None = None,
        pcm_gradient: str = "through-svd",
    ):
        self.pca_components = pca_components
        self.short_loss_weight = short_loss_weight
        self.label_smoothing = label_smoothing
        self.context = context or DistributedContext()
        self.pcm_gradient = pcm_gradient
        self.svd_failures = 0

    def __call__(
        self,
        image_features: torch.Tensor,
        long_features: torch.Tensor,
        short_features: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> LossOutput:
        """Loss of one step from this rank's normalized features ``[n_local, D]`` and the exponentiated scale."""
        gather = lambda t: gather_with_grad(t, self.context)  # noqa: E731
        fine = contrastive_loss(gather(image_features), gather(long_features), logit_scale, self.label_smoothing)
        parts = {"loss_fine": float(fine.detach())}
        if self.short_loss_weight == 0:
            return LossOutput(fine, parts)

        try:
            coarse_images = principal_component_reconstruction(image_features, self.pca_components, self.pcm_gradient)
            ok = True
        except (torch.linalg.LinAlgError, RuntimeError) as e:
            logger.warning("SVD failed for this batch (%s); skipping the short-caption loss this step", e)
            coarse_images, ok = None, False
        if not self.context.all_agree(ok):
            self.svd_failures += 1
            parts["svd_failed"] = 1.0
            return LossOutput(fine, parts)
        coarse = contrastive_loss(gather(coarse_images), gather(short_features), logit_scale, self.label_smoothing)
        parts["loss_coarse"] = float(coarse.detach())
        return LossOutput(fine + self.short_loss_weight * coarse, parts)
