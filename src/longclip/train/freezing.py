"""What stays fixed during fine-tuning: the kept rows of the text position table, and whole towers on request.

Long-CLIP fine-tunes with two position tables: a frozen one whose first ``keep_positions`` rows are used, and a
trained one for the rest. ``PartlyFrozenEmbedding`` (in ``longclip.positions``) is that split as a module: the kept
rows live in a buffer (no gradient, no weight decay, no optimizer state) so they come out of training bit-identical.
"""

from __future__ import annotations

from ..models import DualEncoder

# The position-row pieces live with the rest of Long-CLIP's position logic; imported here for existing callers.
from ..positions import PartlyFrozenEmbedding, freeze_position_rows, merge_position_rows

__all__ = ["PartlyFrozenEmbedding", "freeze_position_rows", "freeze_tower", "merge_position_rows"]


def freeze_tower(model: DualEncoder, tower: str) -> None:
    """Stop gradients to a whole tower of any model family: ``"vision"`` or ``"text"`` (``model.towers()``)."""
    towers = model.towers()
    if tower not in towers:
        raise ValueError(f"tower must be one of {', '.join(sorted(towers))}, got {tower!r}")
    for module in towers[tower]:
        module.requires_grad_(False)
