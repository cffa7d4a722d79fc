"""The one loading entry, ``load`` (and ``load_from_clip``), with the seed-compatible signatures of Long-CLIP's README.

``load`` = ``checkpoints.read_checkpoint`` -> ``models.build_model`` (the family registry picks the class) ->
``.to(device, dtype)``. ``LongCLIPModel.from_pretrained``, the processor, the trainer and the CLI go through it.
"""

from __future__ import annotations

import os

import torch

from .checkpoints import read_checkpoint
from .images import ImageTransform
from .models import DualEncoder, LongCLIPModel, build_model, family_for, resolve_dtype
from .models.base import DTypeName
from .positions import LONGCLIP_KEEP_POSITIONS, LONGCLIP_STRETCH_RATIO, stretch_clip
from .tokenizer import CLIP_CONTEXT_LENGTH


def load(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | DTypeName | None = "auto",
    revision: str | None = None,
    layout: str | None = None,
) -> tuple[DualEncoder, ImageTransform]:
    """Load a model and its image preprocessing, like ``longclip.load`` in the original repository.

    Args:
        name_or_path: A released Long-CLIP ``.pt`` (``longclip-B.pt``), an OpenAI CLIP ``.pt``, a directory that
            ``save_pretrained`` wrote (any registered family), or a hub id (``BeichenZhang/LongCLIP-B``,
            ``openai/clip-vit-base-patch16``, ...).
        device: Where to put the model.
        dtype: Weight dtype. ``"auto"`` (the default) picks what the hardware computes natively: bfloat16 on CUDA
            devices and CPUs that have it (AVX512-BF16 or AMX), float16 on older CUDA devices, float32 otherwise
            (``longclip.precision``).
        revision: Hub revision, for hub ids.
        layout: Read a single checkpoint file in this registered layout instead of detecting it from its keys
            (``longclip.checkpoints.layouts()``); for files whose names fit two layouts, such as a TULIP stage-2 file
            that keeps CLIP's unused position table (``layout="tulip-open_clip"``).

    Returns:
        ``(model, preprocess)``: ``preprocess(image)`` gives the ``[3, H, W]`` tensor ``model.encode_image`` takes.
    """
    model = load_model(name_or_path, device=device, dtype=dtype, revision=revision, layout=layout)
    return model, model.preprocess


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | DTypeName | None = "auto",
    revision: str | None = None,
    expect: type[DualEncoder] = DualEncoder,
    layout: str | None = None,
) -> DualEncoder:
    """``load`` without the preprocessing: read, build with the registered family, move; in eval mode.

    Args:
        expect: Refuse a checkpoint whose family's class is not this one or a subclass (before building it).
        layout: As for ``load``.

    Raises:
        ValueError: The checkpoint's family is not ``expect``; or ``dtype`` is not a float dtype name; or
            ``layout`` names no registered layout.
    """
    torch_dtype = resolve_dtype(dtype, device)  # a bad name fails before any file is read
    checkpoint = read_checkpoint(name_or_path, revision, layout=layout)
    model_class = family_for(checkpoint)
    if not issubclass(model_class, expect):
        raise ValueError(
            f"{name_or_path} holds a {model_class.family!r} model ({model_class.__name__}), not a "
            f"{expect.__name__}; load it with longclip.load"
        )
    model = build_model(checkpoint)
    return model.to(device=device, dtype=torch_dtype).eval()


def load_from_clip(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | DTypeName | None = "auto",
    keep_positions: int = LONGCLIP_KEEP_POSITIONS,
    ratio: int = LONGCLIP_STRETCH_RATIO,
    mode: str = "kps",
    revision: str | None = None,
    keep: int | None = None,
) -> tuple[LongCLIPModel, ImageTransform]:
    """Load a 77-token CLIP and stretch its text position table for long texts (248 rows by default).

    The result is ready to fine-tune; before fine-tuning it already reads long texts, though not well.

    Args:
        name_or_path: Any CLIP that ``load`` accepts, with a 77-row text position table.
        keep_positions: Rows kept unchanged by knowledge-preserving stretching.
        ratio: Interpolation factor for the remaining rows.
        mode: ``"kps"`` (knowledge-preserving, Long-CLIP) or ``"linear"`` (baseline).
        keep: Old name of ``keep_positions`` (deprecated).

    Raises:
        ValueError: The model's text context is not CLIP's 77 tokens (already stretched?).
    """
    model = load_model(name_or_path, dtype=torch.float32, revision=revision, expect=LongCLIPModel)
    if model.context_length != CLIP_CONTEXT_LENGTH or model.keep_positions is not None:
        raise ValueError(
            f"{name_or_path} has a {model.context_length}-token text context, expected CLIP's "
            f"{CLIP_CONTEXT_LENGTH}; a Long-CLIP checkpoint loads with longclip.load"
        )
    stretch_clip(model.clip, keep_positions=keep_positions, ratio=ratio, mode=mode, keep=keep)
    model = model.to(device=device, dtype=resolve_dtype(dtype, device)).eval()
    return model, model.preprocess
