"""Position tables of the text tower: stretching CLIP's 77 rows to Long-CLIP's 248, and folding the two tables.

Knowledge-preserving stretching (Zhang et al., "Long-CLIP: Unlocking the Long-Text Capability of CLIP", ECCV 2024,
Sec. 3.2): CLIP's first rows are well trained (captions rarely run past ~20 tokens), so they are kept as they are;
the remaining rows are interpolated ``ratio`` times more densely, and the last ``ratio`` rows continue the final
step linearly. With 77 rows, ``keep=20`` and ``ratio=4`` this gives 20 + 4 * 57 = 248 rows.

The released checkpoints store two tables: ``positional_embedding`` (frozen during fine-tuning, used for the kept
rows) and ``positional_embedding_res`` (trained, used for all later rows). Inference only needs their fold.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LONGCLIP_KEEP_ROWS = 20  # rows of CLIP's table that Long-CLIP keeps frozen
LONGCLIP_STRETCH_RATIO = 4


def stretched_length(length: int, keep: int = LONGCLIP_KEEP_ROWS, ratio: int = LONGCLIP_STRETCH_RATIO) -> int:
    """Number of rows after stretching a ``length``-row table: ``keep + ratio * (length - keep)``."""
    return keep + ratio * (length - keep)


def stretch_positional_embedding(
    table: torch.Tensor,
    keep: int = LONGCLIP_KEEP_ROWS,
    ratio: int = LONGCLIP_STRETCH_RATIO,
    mode: Literal["kps", "linear"] = "kps",
) -> torch.Tensor:
    """Stretch a ``[length, dim]`` position table to ``keep + ratio * (length - keep)`` rows.

    Args:
        table: The original table (CLIP: 77 rows).
        keep: Rows copied unchanged (``mode="kps"`` only).
        ratio: How many new rows each remaining original row becomes.
        mode: ``"kps"`` for knowledge-preserving stretching as in Long-CLIP: row ``keep + ratio*i + j`` is
            ``(1 - j/ratio) * t[keep+i] + (j/ratio) * t[keep+i+1]``, and the last ``ratio`` rows extrapolate the
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
    if not 0 <= keep <= length - 2:
        raise ValueError(f"keep must be between 0 and {length - 2} for a {length}-row table, got {keep}")
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
    frozen: torch.Tensor, trained: torch.Tensor, keep: int = LONGCLIP_KEEP_ROWS
) -> torch.Tensor:
    """The table inference uses: rows ``< keep`` from the frozen table, the rest from the trained one.

    Equals the released code's ``positional_embedding * mask1 + positional_embedding_res * mask2``.
    """
    if frozen.shape != trained.shape:
        raise ValueError(f"position tables differ in shape: {tuple(frozen.shape)} and {tuple(trained.shape)}")
    return torch.cat([frozen[:keep], trained[keep:]])


def keep_rows_from_mask(mask: torch.Tensor) -> int:
    """Read ``keep`` from a released checkpoint's ``mask1`` (ones on the kept rows, then zeros)."""
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
