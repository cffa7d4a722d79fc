"""Fine-tuning: Long-CLIP's recipe (``train``) on a method-agnostic loop (``fit``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "LongCLIPObjective": "losses",
    "contrastive_loss": "losses",
    "principal_component_reconstruction": "losses",
    "TrainingError": "trainer",
    "fit": "trainer",
    "train": "trainer",
}
__all__ = [
    "LongCLIPObjective",
    "TrainConfig",
    "TrainingError",
    "contrastive_loss",
    "fit",
    "principal_component_reconstruction",
    "train",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .config import TrainConfig
    from .losses import LongCLIPObjective, contrastive_loss, principal_component_reconstruction
    from .trainer import TrainingError, fit, train
