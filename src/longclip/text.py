"""What every text encoder takes: a ``TextBatch`` (ids and attention mask), made by a ``TextTokenizer``.

A model family brings its own tokenizer (CLIP's BPE for Long-CLIP, a language model's for LLM2CLIP); the shared
code (``DualEncoder.embed_texts``, the caption collator, evaluation) only talks to it through this protocol, so it
never assumes a pad id, an end token or a context length.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class TextBatch:
    """Token ids and their attention mask, both ``[N, L]`` int64.

    Attributes:
        input_ids: Ids padded on the right with the tokenizer's ``pad_id``.
        attention_mask: 1 on real tokens (start and end tokens included), 0 on padding.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(self.input_ids.shape)}")
        if self.attention_mask.shape != self.input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(self.attention_mask.shape)}, "
                f"expected the shape of input_ids {tuple(self.input_ids.shape)}"
            )

    def to(self, device: str | torch.device) -> TextBatch:
        """The same batch on ``device``."""
        return TextBatch(self.input_ids.to(device), self.attention_mask.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real tokens of each row, ``[N]``."""
        return self.attention_mask.sum(dim=1)


@runtime_checkable
class TextTokenizer(Protocol):
    """The tokenizer of a model family, as the shared code uses it.

    Attributes:
        context_length: The model's text context (a property of the model, copied here).
        pad_id: The id written on padded positions.
    """

    context_length: int
    pad_id: int

    def encode(self, texts: str | Sequence[str]) -> list[list[int]]:
        """Full ids of each text, special tokens included, never cut."""
        ...

    def truncate(self, ids: Sequence[int], length: int) -> list[int]:
        """One id list cut to at most ``length`` ids, keeping what the family's pooling needs."""
        ...

    def chunk(self, text: str, length: int | None = None) -> list[list[int]]:
        """Consecutive pieces of one text that each fit ``length`` (the context by default)."""
        ...

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None, truncate: bool = False) -> TextBatch:
        """Pad id lists to ``length`` (the longest list, at most the context, by default) into a ``TextBatch``."""
        ...

    def batch(self, texts: str | Sequence[str], truncate: bool = False) -> TextBatch:
        """Encode and pad texts to the batch's width."""
        ...

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer's files into ``directory``."""
        ...


def pad_ids(
    ids: Sequence[Sequence[int]],
    pad_id: int,
    limit: int,
    truncate_row,
    length: int | None = None,
    truncate: bool = False,
) -> TextBatch:
    """Shared body of ``TextTokenizer.pad``: check or cut each row, then pad on the right.

    Args:
        ids: The id lists.
        pad_id: Id for padded positions.
        limit: The most ids a row may have (the context length).
        truncate_row: ``fn(ids, length) -> ids``, the tokenizer's own ``truncate``.
        length: Width of the batch; by default its longest row (after cutting).
        truncate: Cut rows longer than ``length or limit``; otherwise such a row raises ``ValueError``.
    """
    limit = length if length is not None else limit
    rows = []
    for i, row in enumerate(ids):
        row = list(row)
        if len(row) > limit:
            if not truncate:
                raise ValueError(
                    f"text {i} has {len(row)} tokens, more than the context length {limit}; "
                    "pass truncate=True to cut it, or embed it in chunks (long_texts='chunk')"
                )
            row = truncate_row(row, limit)
        rows.append(row)
    width = length if length is not None else max((len(r) for r in rows), default=0)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return TextBatch(input_ids, mask)
