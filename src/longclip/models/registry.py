"""The model-family registry: which ``DualEncoder`` subclass builds a checkpoint.

One table, like the evaluation data sets': a family is a name, its class and the ``config.json`` model types it
builds. ``build_model(read_checkpoint(path))`` is how every part of the package gets a model; a new method adds a
family with one ``register_family`` line (from inside the package or from user code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CheckpointError
from .base import DualEncoder

if TYPE_CHECKING:
    from ..checkpoints import Checkpoint


@dataclass(frozen=True)
class Family:
    """A registered model family.

    Attributes:
        name: Registry name (``Checkpoint.family`` of the layouts it owns).
        model_class: The ``DualEncoder`` subclass; ``model_class.from_checkpoint`` builds it.
        model_types: ``config.json`` ``model_type`` values it builds.
    """

    name: str
    model_class: type[DualEncoder]
    model_types: tuple[str, ...]


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, model_class: type[DualEncoder], model_types: tuple[str, ...] = ()) -> None:
    """Register a model family (registering a name again replaces it, e.g. when a module is reloaded).

    Args:
        name: Registry name; ``model_class.family`` is set to it.
        model_class: A ``DualEncoder`` subclass implementing ``from_checkpoint``.
        model_types: The ``config.json`` ``model_type`` values this family builds.

    Raises:
        TypeError: ``model_class`` is not a ``DualEncoder`` subclass.
        ValueError: The name is empty, or a model type already belongs to another family.
    """
    if not (isinstance(model_class, type) and issubclass(model_class, DualEncoder)):
        raise TypeError(f"model_class must be a DualEncoder subclass, got {model_class!r}")
    if not name:
        raise ValueError("a model family needs a name")
    model_types = (model_types,) if isinstance(model_types, str) else tuple(model_types)
    for other in _FAMILIES.values():
        taken = set(other.model_types) & set(model_types)
        if other.name != name and taken:
            raise ValueError(f"model type {sorted(taken)[0]!r} already belongs to the family {other.name!r}")
    model_class.family = name
    _FAMILIES[name] = Family(name, model_class, model_types)


def families() -> dict[str, Family]:
    """The registered families by name."""
    return dict(_FAMILIES)


def family_for(checkpoint: Checkpoint) -> type[DualEncoder]:
    """The class that builds ``checkpoint``: by its ``family`` if registered, else by its config's ``model_type``.

    Raises:
        CheckpointError: No registered family builds it; the message names what it is and what is known.
    """
    if checkpoint.family in _FAMILIES:
        return _FAMILIES[checkpoint.family].model_class
    model_type = checkpoint.config.get("model_type")
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return family.model_class
    known = ", ".join(f"{f.name} ({', '.join(f.model_types) or 'no model types'})" for f in _FAMILIES.values())
    raise CheckpointError(
        f"{checkpoint.path} is a {model_type or checkpoint.family!r} model, and no registered model family builds "
        f"it (registered: {known or 'none'})"
    )


def build_model(checkpoint: Checkpoint) -> DualEncoder:
    """Build the model a checkpoint holds with its family's ``from_checkpoint`` (float32, CPU, eval mode)."""
    return family_for(checkpoint).from_checkpoint(checkpoint).eval()
