"""What stays fixed during fine-tuning: the kept rows of the text position table, and whole towers on request.

Long-CLIP fine-tunes with two position tables: a frozen one whose first ``keep`` rows are used, and a trained one
for the rest. ``PartlyFrozenEmbedding`` is that split as a module: the kept rows live in a buffer (no gradient, no
weight decay, no optimizer state) so they come out of training bit-identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel


class PartlyFrozenEmbedding(nn.Module):
    """An embedding table whose first ``keep`` rows are a buffer and whose other rows are a parameter."""

    def __init__(self, weight: torch.Tensor, keep: int):
        super().__init__()
        if not 0 <= keep < weight.shape[0]:
            raise ValueError(f"keep must be between 0 and {weight.shape[0] - 1}, got {keep}")
        self.register_buffer("frozen", weight[:keep].detach().clone())
        self.trained = nn.Parameter(weight[keep:].detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.frozen, self.trained])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


def freeze_position_rows(clip: CLIPModel, keep: int) -> None:
    """Split the text position table so its first ``keep`` rows cannot change (in place)."""
    embeddings = clip.text_model.embeddings
    if keep > 0 and not isinstance(embeddings.position_embedding, PartlyFrozenEmbedding):
        embeddings.position_embedding = PartlyFrozenEmbedding(embeddings.position_embedding.weight, keep)


def merge_position_rows(clip: CLIPModel) -> None:
    """Undo ``freeze_position_rows``: one ordinary ``nn.Embedding`` again, as transformers saves and loads it."""
    embeddings = clip.text_model.embeddings
    if isinstance(embeddings.position_embedding, PartlyFrozenEmbedding):
        table = embeddings.position_embedding.weight.detach()
        embeddings.position_embedding = nn.Embedding.from_pretrained(table, freeze=False)


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
