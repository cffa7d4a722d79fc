"""Long-CLIP: a transformers ``CLIPModel`` whose text tower has a stretched (248-row) position table.

For inference a Long-CLIP model *is* a standard ``CLIPModel`` with ``max_position_embeddings=248``; this wrapper
adds what the original code offered (``encode_text`` / ``encode_image`` / logits from ``model(image, text)``), the
tokenizer and preprocessing that belong to the weights, and fast batch helpers. ``save_pretrained`` writes a plain
transformers directory (safetensors, config, tokenizer and preprocessor files) that ``CLIPModel.from_pretrained``
reads without this package.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel

from ..checkpoints import LoadedCheckpoint, load_clip
from ..images import ImageTransform
from ..positions import LONGCLIP_KEEP_ROWS, LONGCLIP_STRETCH_RATIO, stretch_positional_embedding
from ..processing import LongCLIPProcessor
from ..tokenizer import EOT_ID, VOCAB_SIZE, get_tokenizer
from .base import DualEncoder

logger = logging.getLogger(__name__)

DTypeName = Literal["float32", "float16", "bfloat16"]


class LongCLIPModel(DualEncoder):
    """A CLIP with a long text context, wrapping a transformers ``CLIPModel`` (available as ``.clip``).

    Args:
        clip: The transformers model.
        image_transform: Preprocessing for its image tower; by default OpenAI CLIP's at the tower's resolution.
    """

    def __init__(self, clip: CLIPModel, image_transform: ImageTransform | None = None):
        super().__init__()
        vocab = clip.config.text_config.vocab_size
        if vocab != VOCAB_SIZE:
            raise ValueError(f"this CLIP has a {vocab}-token vocabulary; longclip's tokenizer is CLIP's {VOCAB_SIZE}")
        self.clip = clip
        self.tokenizer = get_tokenizer(clip.config.text_config.max_position_embeddings)
        self.image_transform = image_transform or ImageTransform.for_size(clip.config.vision_config.image_size)

    @property
    def config(self):
        return self.clip.config

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    @property
    def embed_dim(self) -> int:
        return self.clip.config.projection_dim

    @property
    def processor(self) -> LongCLIPProcessor:
        """Tokenizer and preprocessing together, as ``LongCLIPProcessor``."""
        return LongCLIPProcessor(self.tokenizer, self.image_transform)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Project token ids (``[N, L]``, padded after the end token) to text features ``[N, embed_dim]``.

        The batch is cut to its longest text before the transformer runs: the text tower is causal and pools the
        end token, so positions after it never influence the result, and skipping them is pure savings.
        """
        if tokens.ndim != 2:
            raise ValueError(f"expected token ids of shape [batch, length], got {tuple(tokens.shape)}")
        if tokens.shape[0] == 0:
            return torch.empty(0, self.embed_dim, device=self.device, dtype=self.dtype)
        is_end = tokens == EOT_ID
        if not bool(is_end.any(dim=1).all()):
            row = int((~is_end.any(dim=1)).nonzero()[0])
            raise ValueError(f"token row {row} has no end-of-text token ({EOT_ID}); tokenize with longclip.tokenize")
        length = int(is_end.int().argmax(dim=1).max()) + 1
        if length > self.context_length:
            raise ValueError(f"texts of {length} tokens do not fit this model's context of {self.context_length}")
        tokens = tokens[:, :length].to(self.device)
        features = self.clip.get_text_features(input_ids=tokens).pooler_output
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Project preprocessed images (``[N, 3, H, W]``) to image features ``[N, embed_dim]``."""
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        features = self.clip.get_image_features(pixel_values=pixels).pooler_output
        return F.normalize(features, dim=-1) if normalize else features

    # --- loading and saving ------------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, checkpoint: LoadedCheckpoint) -> LongCLIPModel:
        """Wrap a loaded checkpoint, with the preprocessing saved beside it when there is one."""
        transform = None
        if checkpoint.directory is not None:
            size = checkpoint.model.config.vision_config.image_size
            transform = ImageTransform.from_directory(checkpoint.directory, size)
        return cls(checkpoint.model, transform)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | DTypeName | None = None,
        revision: str | None = None,
    ) -> LongCLIPModel:
        """Load any supported checkpoint: released Long-CLIP or OpenAI ``.pt``, transformers directory, hub id.

        Args:
            name_or_path: File, directory or hub id (``BeichenZhang/LongCLIP-B``, ``openai/clip-vit-base-patch16``).
            device: Where to put the model.
            dtype: Weight dtype; by default float32 on the CPU and float16 on CUDA, as OpenAI's ``clip.load``.
            revision: Hub revision, for hub ids.
        """
        model = cls.from_checkpoint(load_clip(name_or_path, revision))
        return model.to(device=device, dtype=_resolve_dtype(dtype, device)).eval()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write a transformers CLIP directory: safetensors weights, config, tokenizer and preprocessor files."""
        self.clip.save_pretrained(Path(directory))
        self.processor.save_pretrained(directory)


def stretch_clip(
    clip: CLIPModel, keep: int = LONGCLIP_KEEP_ROWS, ratio: int = LONGCLIP_STRETCH_RATIO, mode: str = "kps"
) -> CLIPModel:
    """Stretch a CLIP's text position table in place (77 -> 248 rows with the defaults) and return it.

    Records ``keep`` as ``config.longclip_keep_rows`` (fine-tuning freezes those rows) for ``mode="kps"``.
    """
    embeddings = clip.text_model.embeddings
    old = embeddings.position_embedding.weight.data
    table = stretch_positional_embedding(old, keep=keep, ratio=ratio, mode=mode)
    embeddings.position_embedding = nn.Embedding.from_pretrained(table, freeze=False)
    position_ids = torch.arange(table.shape[0], device=old.device).expand(1, -1)
    embeddings.register_buffer("position_ids", position_ids, persistent=False)
    clip.config.text_config.max_position_embeddings = table.shape[0]
    clip.config.longclip_keep_rows = keep if mode == "kps" else 0
    logger.info("stretched the text position table from %d to %d rows (%s)", old.shape[0], table.shape[0], mode)
    return clip


def _resolve_dtype(dtype: torch.dtype | str | None, device: str | torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
        return getattr(torch, dtype)
    return dtype
