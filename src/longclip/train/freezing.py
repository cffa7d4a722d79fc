"""What stays fixed during fine-tuning: the kept rows of the text position table, and whole towers on request.

Long-CLIP fine-tunes with two position tables: a frozen one whose first ``keep_positions`` rows are used, and a
trained one for the rest. ``PartlyFrozenEmbedding`` (in ``longclip.positions``) is that split as a module: the kept
rows live in a buffer (no gradient, no weight decay, no optimizer state) so they come out of training bit-identical.
"""

from __future__ import annotations

from transformers import CLIPModel

# The position-row pieces live with the rest of Long-CLIP's position logic; imported here for existing callers.
from ..positions import PartlyFrozenEmbedding, freeze_position_rows, merge_position_rows

__all__ = ["PartlyFrozenEmbedding", "freeze_position_rows", "freeze_tower", "merge_position_rows"]


def freeze_tower(clip: CLIPModel, tower: str) -> None:
    """Stop gradients to a whole tower: ``"vision"`` (encoder and projection) or ``"text"``."""
    modules = {
        "vision": (clip.vision_model, clip.visual_projection),
        "text": (clip.text_model, clip.text_projection),
    }
    if tower not in modules:
        raise ValueError(f"tower must be 'vision' or 'text', got {tower!r}")
    for module in modules[tower]:
        module.requires_grad_(False)
