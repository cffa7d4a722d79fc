"""Training: methods as tasks (``Task``, ``register_task``), the one loop (``fit``) and its entry (``train``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "LongCLIPObjective": "losses",
    "contrastive_loss": "losses",
    "principal_component_reconstruction": "losses",
    "LossOutput": "losses",
    "Task": "tasks",
    "available_tasks": "tasks",
    "get_task": "tasks",
    "register_task": "tasks",
    "TrainingError": "trainer",
    "fit": "trainer",
    "train": "trainer",
}
__all__ = [
    "LongCLIPObjective",
    "LossOutput",
    "Task",
    "available_tasks",
    "get_task",
    "register_task",
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
    from .losses import LongCLIPObjective, LossOutput, contrastive_loss, principal_component_reconstruction
    from .tasks import Task, available_tasks, get_task, register_task
    from .trainer import TrainingError, fit, train
