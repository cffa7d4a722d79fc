"""A training task: one method's step (forward pass and loss) behind one interface, and the table of methods.

The training loop (``longclip.train.fit``) knows only this: a task turns the batch dict its own ``collate`` made
into a ``LossOutput``. Everything a method needs beyond that — a frozen teacher, its loss, counters such as SVD
failures, how its model is prepared (stretched, frozen) and saved — belongs to the task, so a new method is a task
file and a ``register_task`` line, never a branch in the loop, the loader or the CLI. DDP wraps the task, so every
trainable parameter it owns is synchronised; frozen parameters (a teacher, frozen towers) are left out of DDP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..distributed import DistributedContext
from ..losses import LossOutput

if TYPE_CHECKING:
    from ...models import DualEncoder
    from ..config import TrainConfig

MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps its temperature so logits never exceed 100


@dataclasses.dataclass
class NoOptions:
    """A method without settings of its own."""


class Task(nn.Module):
    """One training method. Subclasses set ``name`` and ``options_class`` and implement ``forward``.

    Attributes:
        name: The name ``longclip train --method`` takes.
        options_class: The method's own settings (a dataclass; each field's ``metadata["help"]`` becomes a flag).
        defaults: The method's values for common settings (``TrainConfig`` fields such as ``lr``), used where the
            user gives none.
        model: The model being trained (what checkpoints and the final save hold).
    """

    name: ClassVar[str] = ""
    options_class: ClassVar[type] = NoOptions
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: DualEncoder, options: Any = None, context: DistributedContext | None = None):
        super().__init__()
        self.model = model
        self.options = options if options is not None else self.options_class()
        self.context = context or DistributedContext()

    # --- what a method provides ---------------------------------------------------------------------------------

    @classmethod
    def prepare_model(cls, config: TrainConfig, options: Any) -> DualEncoder:
        """Load the model this method trains, from ``config.model`` (frozen parts frozen). By default: as it is."""
        from ...api import load_model

        return load_model(config.model, dtype="float32")

    def collate(self, items: list[dict | None]) -> dict[str, Any]:
        """Batch dataset items (``None`` for unreadable images); by default images with long and short captions.

        Every batch dict has ``indices`` (dataset indices of the items kept) and ``num_bad`` (items dropped), which
        the loop counts; the rest is the task's own.
        """
        from ...data import CaptionCollator

        return CaptionCollator(self.model.tokenizer)(items)

    def forward(self, batch: dict[str, Any]) -> LossOutput:
        """The loss of one step on this rank's batch (tensors already on the device)."""
        raise NotImplementedError

    def validator(self, pairs: list) -> Callable[[nn.Module], dict[str, float]] | None:
        """What to measure on the held-out pairs after each epoch (None: nothing; the rows still stay out of training).

        By default image-text retrieval R@1 with the long and with the short captions, through the model's
        ``embed_images`` / ``embed_texts``.
        """
        from ..validation import retrieval_validator

        return retrieval_validator(pairs)

    def after_step(self) -> None:
        """Called after each optimizer step; by default clamps the logit scale as CLIP does."""
        scale = getattr(self.model, "logit_scale", None)
        if isinstance(scale, torch.Tensor) and scale.requires_grad:
            with torch.no_grad():
                scale.clamp_(0, MAX_LOGIT_SCALE)

    def counters(self) -> dict[str, float]:
        """Running counts worth logging and keeping across a resume (e.g. SVD failures)."""
        return {}

    def load_counters(self, counters: dict[str, float]) -> None:
        """Restore ``counters()`` from a training checkpoint."""

    def save_model(self, directory: Path) -> None:
        """Write the model as it is now where ``longclip.load`` reads it, without changing it (for checkpoints).

        A model without ``save_pretrained`` (e.g. a text-only encoder that ``save_final`` writes its own way) gets no
        ``model/`` copy in its checkpoints; override this to give it one.
        """
        save = getattr(self.model, "save_pretrained", None)
        if save is not None:
            save(directory)

    def save_final(self, directory: Path, config: TrainConfig) -> Path:
        """Write the trained model where ``longclip.load`` reads it; returns its path."""
        final = directory / "model"
        self.model.save_pretrained(final)
        return final

    # --- helpers for subclasses ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[None]:
        """Compute inside this block in float32 even under autocast (softmax over a big batch needs it)."""
        device_type = self.context.device.type
        with torch.autocast(device_type, enabled=False):
            yield

    def frozen_parameter_names(self) -> list[str]:
        """Names of parameters that do not train (DDP is told to leave them alone)."""
        return [name for name, p in self.named_parameters() if not p.requires_grad]


_TASKS: dict[str, type[Task]] = {}


def register_task(task_class: type[Task]) -> type[Task]:
    """Make a method available to ``longclip train --method`` and ``longclip.train.train`` (usable as a decorator).

    Raises:
        ValueError: The class has no name, or another class already took it.
    """
    if not task_class.name:
        raise ValueError(f"{task_class.__name__} has no name; set the class attribute `name`")
    if not dataclasses.is_dataclass(task_class.options_class):
        raise ValueError(f"{task_class.__name__}.options_class must be a dataclass")
    existing = _TASKS.get(task_class.name)
    if existing is not None and existing is not task_class:
        raise ValueError(f"a training method named {task_class.name!r} is already registered ({existing.__name__})")
    _TASKS[task_class.name] = task_class
    return task_class


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``.

    Raises:
        ValueError: No such method (the message lists the known ones).
    """
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown training method {name!r}; known: {', '.join(sorted(_TASKS))}") from None


def available_tasks() -> list[str]:
    """Names of the registered methods."""
    return sorted(_TASKS)
