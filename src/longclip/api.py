"""The seed-compatible entry points: ``load`` and ``load_from_clip``, as the Long-CLIP README uses them."""

from __future__ import annotations

import os

import torch

from .checkpoints import load_clip
from .images import ImageTransform
from .models import LongCLIPModel, stretch_clip
from .models.clip import DTypeName, _resolve_dtype
from .positions import LONGCLIP_KEEP_ROWS, LONGCLIP_STRETCH_RATIO
from .tokenizer import CLIP_CONTEXT_LENGTH


def load(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | DTypeName | None = None,
    revision: str | None = None,
) -> tuple[LongCLIPModel, ImageTransform]:
    """Load a model and its image preprocessing, like ``longclip.load`` in the original repository.

    Args:
        name_or_path: A released Long-CLIP ``.pt`` (``longclip-B.pt``), an OpenAI CLIP ``.pt``, a transformers CLIP
            directory, or a hub id (``BeichenZhang/LongCLIP-B``, ``openai/clip-vit-base-patch16``, ...).
        device: Where to put the model.
        dtype: Weight dtype; by default float32 on the CPU and float16 on CUDA.
        revision: Hub revision, for hub ids.

    Returns:
        ``(model, preprocess)``: ``preprocess(image)`` gives the ``[3, H, W]`` tensor ``model.encode_image`` takes.
    """
    model = LongCLIPModel.from_pretrained(name_or_path, device=device, dtype=dtype, revision=revision)
    return model, model.preprocess


def load_from_clip(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | DTypeName | None = None,
    keep: int = LONGCLIP_KEEP_ROWS,
    ratio: int = LONGCLIP_STRETCH_RATIO,
    mode: str = "kps",
    revision: str | None = None,
) -> tuple[LongCLIPModel, ImageTransform]:
    """Load a 77-token CLIP and stretch its text position table for long texts (248 rows by default).

    The result is ready to fine-tune; before fine-tuning it already reads long texts, though not well.

    Args:
        name_or_path: Any CLIP that ``load`` accepts, with a 77-row text position table.
        keep: Rows kept unchanged by knowledge-preserving stretching.
        ratio: Interpolation factor for the remaining rows.
        mode: ``"kps"`` (knowledge-preserving, Long-CLIP) or ``"linear"`` (baseline).

    Raises:
        ValueError: The model's text context is not CLIP's 77 tokens (already stretched?).
    """
    checkpoint = load_clip(name_or_path, revision)
    rows = checkpoint.model.config.text_config.max_position_embeddings
    if rows != CLIP_CONTEXT_LENGTH or checkpoint.keep_rows is not None:
        raise ValueError(
            f"{name_or_path} has a {rows}-token text context, expected CLIP's {CLIP_CONTEXT_LENGTH}; "
            "a Long-CLIP checkpoint loads with longclip.load"
        )
    stretch_clip(checkpoint.model, keep=keep, ratio=ratio, mode=mode)
    model = LongCLIPModel.from_checkpoint(checkpoint)
    model = model.to(device=device, dtype=_resolve_dtype(dtype, device)).eval()
    return model, model.preprocess
