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
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import CLIPConfig, CLIPModel

from ..errors import CheckpointError
from ..images import ImageTransform
from ..positions import keep_positions_of, stretch_clip
from ..processing import LongCLIPProcessor
from ..tokenizer import EOT_ID, VOCAB_SIZE, LongCLIPTokenizer, get_tokenizer
from .base import DTypeName, DualEncoder, check_state_dict, quiet_transformers_progress

if TYPE_CHECKING:
    from ..checkpoints import Checkpoint, LoadedCheckpoint

logger = logging.getLogger(__name__)

__all__ = ["DTypeName", "LongCLIPConfig", "LongCLIPModel", "clip_config", "clip_context_length", "stretch_clip"]


@strict
class LongCLIPConfig(CLIPConfig):
    """transformers' ``CLIPConfig`` with Long-CLIP's one extra field, saved in ``config.json``.

    ``model_type`` stays ``"clip"``: plain transformers reads the directory as a ``CLIPModel`` (the extra key
    becomes an attribute there).

    Attributes:
        keep_positions: Leading rows of the text position table kept from CLIP (frozen while fine-tuning); None
            for a CLIP that was never stretched, 0 for a linearly stretched one.
    """

    keep_positions: int | None = None


def clip_config(config: dict | CLIPConfig) -> LongCLIPConfig:
    """A ``LongCLIPConfig`` from a ``config.json`` dict (or a config), reading the old ``longclip_keep_rows``."""
    config = dict(config.to_dict() if isinstance(config, CLIPConfig) else config)
    legacy = config.pop("longclip_keep_rows", None)
    if config.get("keep_positions") is None and legacy is not None:
        config["keep_positions"] = legacy
    if config.get("model_type", "clip") != "clip":
        raise ValueError(f"expected a CLIP config (model_type 'clip'), got model_type {config['model_type']!r}")
    return LongCLIPConfig.from_dict(config)


def clip_context_length(config: CLIPConfig) -> int:
    """A CLIP's text context: its position table's rows. The one place the CLIP family derives it."""
    return config.text_config.max_position_embeddings


class LongCLIPModel(DualEncoder):
    """A CLIP with a long text context, wrapping a transformers ``CLIPModel`` (available as ``.clip``).

    Args:
        clip: The transformers model.
        image_transform: Preprocessing for its image tower; by default OpenAI CLIP's at the tower's resolution.
    """

    family: ClassVar[str] = "clip"

    def __init__(self, clip: CLIPModel, image_transform: ImageTransform | None = None):
        super().__init__()
        vocab = clip.config.text_config.vocab_size
        if vocab != VOCAB_SIZE:
            raise ValueError(f"this CLIP has a {vocab}-token vocabulary; longclip's tokenizer is CLIP's {VOCAB_SIZE}")
        self.clip = clip
        self.image_transform = image_transform or ImageTransform.for_size(clip.config.vision_config.image_size)

    @property
    def config(self) -> CLIPConfig:
        return self.clip.config

    @property
    def context_length(self) -> int:
        """The text context, from the config (``clip_context_length``)."""
        return clip_context_length(self.clip.config)

    @property
    def keep_positions(self) -> int | None:
        """Leading position rows kept from CLIP (None: not a Long-CLIP; 0: linearly stretched)."""
        return keep_positions_of(self.clip.config)

    @property
    def tokenizer(self) -> LongCLIPTokenizer:
        """CLIP's tokenizer at this model's context length (follows the table if it is stretched later)."""
        return get_tokenizer(self.context_length)

    def towers(self) -> dict[str, list[nn.Module]]:
        clip = self.clip
        return {"vision": [clip.vision_model, clip.visual_projection], "text": [clip.text_model, clip.text_projection]}

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

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """Project token ids (``[N, L]``, padded after the end token) to text features ``[N, embed_dim]``.

        CLIP pools its end token, so the mask is not needed (it is checked for shape when given). The batch is cut
        to its longest text before the transformer runs: the text tower is causal and pools the end token, so
        positions after it never influence the result, and skipping them is pure savings.
        """
        tokens = input_ids
        if tokens.ndim != 2:
            raise ValueError(f"expected token ids of shape [batch, length], got {tuple(tokens.shape)}")
        if attention_mask is not None and attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(tokens.shape)}")
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

    # --- building and saving -----------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint | LoadedCheckpoint) -> LongCLIPModel:
        """Build from a checkpoint's config and state dict (float32, on the CPU, in eval mode).

        The preprocessing saved beside a transformers directory is used when there is one. Also accepts what the
        compatibility ``load_clip`` returns (an already built ``CLIPModel``).

        Raises:
            CheckpointError: A tensor is missing, left over or shaped unlike the config says (named).
        """
        clip = getattr(checkpoint, "model", None)
        if clip is None:
            clip = build_clip(checkpoint.config, checkpoint.state_dict, checkpoint.path)
        transform = None
        if checkpoint.directory is not None:
            transform = ImageTransform.from_directory(checkpoint.directory, clip.config.vision_config.image_size)
        return cls(clip, transform)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | DTypeName | None = "auto",
        revision: str | None = None,
    ) -> LongCLIPModel:
        """Load a CLIP-family checkpoint, as ``longclip.load`` does (kept for compatibility).

        Args:
            name_or_path: File, directory or hub id (``BeichenZhang/LongCLIP-B``, ``openai/clip-vit-base-patch16``).
            device: Where to put the model.
            dtype: Weight dtype; ``"auto"`` (the default) as ``longclip.load``.
            revision: Hub revision, for hub ids.

        Raises:
            ValueError: The checkpoint is of another model family (load it with ``longclip.load``).
        """
        from ..api import load_model  # the one loading entry; models do not read files themselves

        return load_model(name_or_path, device=device, dtype=dtype, revision=revision, expect=cls)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write a transformers CLIP directory: safetensors weights, config, tokenizer and preprocessor files."""
        with quiet_transformers_progress():
            self.clip.save_pretrained(Path(directory))
        self.processor.save_pretrained(directory)


def build_clip(config: dict | CLIPConfig, state_dict: dict[str, torch.Tensor], where: object) -> CLIPModel:
    """A float32 ``CLIPModel`` in eval mode from a config and a state dict in transformers' layout.

    Every name and shape is checked first against the model the config describes (built on the meta device, so
    nothing is allocated), so a bad checkpoint fails with a message naming the tensor.
    """
    try:
        config = clip_config(config)
    except (ValueError, TypeError, KeyError, StrictDataclassError) as e:
        raise CheckpointError(f"{where}: the config is not a valid CLIP config: {e}") from e
    # Older transformers saved the position ids buffer; it is recomputed, never read.
    state_dict = {
        k: v.float() if v.is_floating_point() else v for k, v in state_dict.items() if not k.endswith("position_ids")
    }
    with torch.device("meta"):
        expected = CLIPModel(config).state_dict()
    check_state_dict(expected, state_dict, where)
    with quiet_transformers_progress():
        model = CLIPModel.from_pretrained(None, config=config, state_dict=state_dict, attn_implementation="sdpa")
    return model.float().eval()
