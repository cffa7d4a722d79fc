"""Long-CLIP's position logic, all of it: stretching CLIP's 77 rows to 248, the kept rows, freezing, folding.

Knowledge-preserving stretching (Zhang et al., "Long-CLIP: Unlocking the Long-Text Capability of CLIP", ECCV 2024,
Sec. 3.2): CLIP's first rows are well trained (captions rarely run past ~20 tokens), so they are kept as they are;
the remaining rows are interpolated ``ratio`` times more densely, and the last ``ratio`` rows continue the final
step linearly. With 77 rows, ``keep_positions=20`` and ``ratio=4`` this gives 20 + 4 * 57 = 248 rows.

The kept rows go by one name everywhere: ``keep_positions`` (the config field saved in ``config.json``, these
functions' parameter, the CLI's ``--keep-positions``). During fine-tuning they stay frozen
(``freeze_position_rows``). The released checkpoints store two tables: ``positional_embedding`` (frozen during
fine-tuning, used for the kept rows) and ``positional_embedding_res`` (trained, used for all later rows); inference
only needs their fold (``fold_positional_tables``), and ``keep_positions_from_mask`` reads the split from ``mask1``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

LONGCLIP_KEEP_POSITIONS = 20  # rows of CLIP's table that Long-CLIP keeps frozen
LONGCLIP_STRETCH_RATIO = 4


def stretched_length(
    length: int, keep_positions: int = LONGCLIP_KEEP_POSITIONS, ratio: int = LONGCLIP_STRETCH_RATIO
) -> int:
    """Rows after stretching a ``length``-row table: ``keep_positions + ratio * (length - keep_positions)``."""
    return keep_positions + ratio * (length - keep_positions)


def stretch_positional_embedding(
    table: torch.Tensor,
    keep_positions: int = LONGCLIP_KEEP_POSITIONS,
    ratio: int = LONGCLIP_STRETCH_RATIO,
    mode: Literal["kps", "linear"] = "kps",
) -> torch.Tensor:
    """Stretch a ``[length, dim]`` position table to ``keep_positions + ratio * (length - keep_positions)`` rows.

    Args:
        table: The original table (CLIP: 77 rows).
        keep_positions: Rows copied unchanged (``mode="kps"`` only).
        ratio: How many new rows each remaining original row becomes.
        mode: ``"kps"`` for knowledge-preserving stretching as in Long-CLIP: with ``k = keep_positions``, row
            ``k + ratio*i + j`` is ``(1 - j/ratio) * t[k+i] + (j/ratio) * t[k+i+1]``, and the last ``ratio`` rows
            extrapolate the
            final step, ``t[-1] + j/ratio * (t[-1] - t[-2])``. ``"linear"`` is the baseline the paper compares
            against: the whole table linearly interpolated to the same length (first and last rows exact).

    Returns:
        The stretched table, in the input's dtype and device. Computed in float64 so an fp16 input loses nothing
        more than its own precision.
    """
    if table.ndim != 2:
        raise ValueError(f"expected a [length, dim] position table, got shape {tuple(table.shape)}")
    length = table.shape[0]
    if ratio < 1:
        raise ValueError(f"ratio must be a positive integer, got {ratio}")
    keep = keep_positions
    if not 0 <= keep <= length - 2:
        raise ValueError(f"keep_positions must be between 0 and {length - 2} for a {length}-row table, got {keep}")
    target = stretched_length(length, keep, ratio)
    source = table.detach().to(torch.float64)

    if mode == "linear":
        out = F.interpolate(source.T[None], size=target, mode="linear", align_corners=True)[0].T
    elif mode == "kps":
        steps = torch.arange(ratio, dtype=torch.float64, device=table.device)[:, None, None] / ratio  # j / ratio
        left, right = source[keep:-1], source[keep + 1 :]
        # [ratio, n-keep-1, dim] -> interleave so that each original row is followed by its interpolants.
        between = ((1 - steps) * left + steps * right).transpose(0, 1).reshape(-1, table.shape[1])
        tail = source[-1] + steps[:, 0] * (source[-1] - source[-2])
        out = torch.cat([source[:keep], between, tail])
    else:
        raise ValueError(f"mode must be 'kps' or 'linear', got {mode!r}")
    return out.to(table.dtype)


def fold_positional_tables(
    frozen: torch.Tensor, trained: torch.Tensor, keep_positions: int = LONGCLIP_KEEP_POSITIONS
) -> torch.Tensor:
    """The table inference uses: rows ``< keep_positions`` from the frozen table, the rest from the trained one.

    Equals the released code's ``positional_embedding * mask1 + positional_embedding_res * mask2``.
    """
    if frozen.shape != trained.shape:
        raise ValueError(f"position tables differ in shape: {tuple(frozen.shape)} and {tuple(trained.shape)}")
    return torch.cat([frozen[:keep_positions], trained[keep_positions:]])


def unfold_positional_tables(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The released layout's two tables for one table: both hold it, so their masked sum gives it back exactly,
    whatever ``keep_positions`` a reader assumes (the released loader takes no masks from the file)."""
    return table, table.clone()


def keep_positions_from_mask(mask: torch.Tensor) -> int:
    """Read ``keep_positions`` from a released checkpoint's ``mask1`` (ones on the kept rows, then zeros)."""
    flat = mask.reshape(-1)
    keep = int(flat.sum().round())
    expected = torch.zeros_like(flat)
    expected[:keep] = 1
    if not torch.equal(flat, expected):
        raise ValueError("mask1 must be ones on its first rows and zeros after; this checkpoint's mask is not")
    return keep


def keep_positions_of(config: object) -> int | None:
    """The kept rows a CLIP config records: ``keep_positions``, or ``longclip_keep_rows`` in directories written
    before that field was declared; None for a CLIP that is no Long-CLIP."""
    keep = getattr(config, "keep_positions", None)
    return getattr(config, "longclip_keep_rows", None) if keep is None else keep


# --- on a model: a transformers CLIPModel (anything with ``text_model.embeddings.position_embedding``) -------------


def stretch_clip(
    clip: nn.Module,
    keep_positions: int = LONGCLIP_KEEP_POSITIONS,
    ratio: int = LONGCLIP_STRETCH_RATIO,
    mode: Literal["kps", "linear"] = "kps",
    keep: int | None = None,
) -> nn.Module:
    """Stretch a CLIP's text position table in place (77 -> 248 rows with the defaults) and return it.

    Records ``config.keep_positions`` (the rows fine-tuning freezes): ``keep_positions`` for ``mode="kps"``, 0 for
    ``"linear"``, which keeps no row as it was. The context length follows the table
    (``config.text_config.max_position_embeddings``).

    Args:
        keep: Old name of ``keep_positions`` (deprecated).
    """
    keep_positions = _renamed_keep(keep, keep_positions)
    embeddings = clip.text_model.embeddings
    old = embeddings.position_embedding.weight.data
    table = stretch_positional_embedding(old, keep_positions=keep_positions, ratio=ratio, mode=mode)
    embeddings.position_embedding = nn.Embedding.from_pretrained(table, freeze=False)
    position_ids = torch.arange(table.shape[0], device=old.device).expand(1, -1)
    embeddings.register_buffer("position_ids", position_ids, persistent=False)
    clip.config.text_config.max_position_embeddings = table.shape[0]
    clip.config.keep_positions = keep_positions if mode == "kps" else 0
    logger.info("stretched the text position table from %d to %d rows (%s)", old.shape[0], table.shape[0], mode)
    return clip


class PartlyFrozenEmbedding(nn.Module):
    """An embedding table whose first ``keep_positions`` rows are a buffer and whose other rows are a parameter.

    Long-CLIP's frozen / trained table split as a module: the kept rows get no gradient, no weight decay and no
    optimizer state, so they come out of training bit-identical.
    """

    def __init__(self, weight: torch.Tensor, keep_positions: int):
        super().__init__()
        if not 0 <= keep_positions < weight.shape[0]:
            raise ValueError(f"keep_positions must be between 0 and {weight.shape[0] - 1}, got {keep_positions}")
        self.register_buffer("frozen", weight[:keep_positions].detach().clone())
        self.trained = nn.Parameter(weight[keep_positions:].detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.frozen, self.trained])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


def freeze_position_rows(clip: nn.Module, keep_positions: int) -> None:
    """Split the text position table so its first ``keep_positions`` rows cannot change (in place)."""
    embeddings = clip.text_model.embeddings
    if keep_positions > 0 and not isinstance(embeddings.position_embedding, PartlyFrozenEmbedding):
        embeddings.position_embedding = PartlyFrozenEmbedding(embeddings.position_embedding.weight, keep_positions)


def merge_position_rows(clip: nn.Module) -> None:
    """Undo ``freeze_position_rows``: one ordinary ``nn.Embedding`` again, as transformers saves and loads it."""
    embeddings = clip.text_model.embeddings
    if isinstance(embeddings.position_embedding, PartlyFrozenEmbedding):
        table = embeddings.position_embedding.weight.detach()
        embeddings.position_embedding = nn.Embedding.from_pretrained(table, freeze=False)


def _renamed_keep(keep: int | None, keep_positions: int) -> int:
    if keep is None:
        return keep_positions
    warnings.warn("`keep` is now called `keep_positions`", DeprecationWarning, stacklevel=3)
    return keep
