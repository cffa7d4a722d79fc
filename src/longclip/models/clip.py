"""Long-CLIP: a transformers ``CLIPModel`` whose text tower has a stretched (248-row) position table.

For inference a Long-CLIP model *is* a standard ``CLIPModel`` with ``max_position_embeddings=248``; this wrapper
adds what the original code offered (``encode_text`` / ``encode_image`` / logits from ``model(image, text)``), the
tokenizer and preprocessing that belong to the weights, and fast batch helpers. ``save_pretrained`` writes a plain
transformers directory (safetensors, config, tokenizer and preprocessor files) that ``CLIPModel.from_pretrained``
reads without this package.
"""

from __future__ import annotations

import logging
import math
import os
import re
from types import SimpleNamespace
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import CLIPConfig, CLIPModel

from ..atomic import atomic_directory
from ..errors import CheckpointError
from ..images import ImageTransform
from ..positions import keep_positions_of, stretch_clip
from ..processing import LongCLIPProcessor
from ..tokenizer import VOCAB_SIZE, LongCLIPTokenizer, clip_end_positions, get_tokenizer
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
        end = clip_end_positions(input_ids, attention_mask, self.context_length)
        if input_ids.shape[0] == 0:
            return torch.empty(0, self.embed_dim, device=self.device, dtype=self.dtype)
        tokens = input_ids[:, : int(end.max()) + 1].to(self.device)
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
            image_size = clip.config.vision_config.image_size
            try:
                transform = ImageTransform.from_directory(checkpoint.directory, image_size)
            except (ValueError, TypeError, KeyError, OSError) as e:
                raise CheckpointError(f"{checkpoint.directory}: unusable preprocessor_config.json: {e}") from e
            check_preprocessing(transform, image_size, checkpoint.directory)
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
        """Write a transformers CLIP directory: safetensors weights, config, tokenizer and preprocessor files.

        Everything is written to a temporary directory first and moved in once complete, so a failed save (a full
        disk) leaves the previous output whole and raises ``OSError`` saying so.
        """
        with atomic_directory(directory) as temporary, quiet_transformers_progress():
            self.clip.save_pretrained(temporary)
            self.processor.save_pretrained(temporary)


def build_clip(config: dict | CLIPConfig, state_dict: dict[str, torch.Tensor], where: object) -> CLIPModel:
    """A float32 ``CLIPModel`` in eval mode from a config and a state dict in transformers' layout.

    Every name and shape is checked first against the model the config describes (built on the meta device, so
    nothing is allocated), so a bad checkpoint fails with a message naming the tensor.
    """
    if isinstance(config, dict):
        # Checked before anything is built (100000 layers took minutes, even on meta) or validated by transformers
        # (whose checks end in ZeroDivisionError or multi-line tracebacks).
        check_clip_config(_with_defaults(config), state_dict, where)
    try:
        config = clip_config(config)
    except (ValueError, TypeError, KeyError, ZeroDivisionError, StrictDataclassError) as e:
        reason = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{where}: the config is not a valid CLIP config: {reason}") from e
    check_clip_config(config, state_dict, where)
    # Older transformers saved the position ids buffer; it is recomputed, never read.
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}
    with torch.device("meta"):
        expected = CLIPModel(config).state_dict()
    check_state_dict(expected, state_dict, where)
    not_float = [
        f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in state_dict.items() if not v.is_floating_point()
    ]
    if not_float:
        raise CheckpointError(
            f"{where}: CLIP weights must be floating point; these are not (they would be cast silently): "
            f"{', '.join(not_float[:6])}{' ...' if len(not_float) > 6 else ''}"
        )
    state_dict = {k: v.float() for k, v in state_dict.items()}
    with quiet_transformers_progress():
        model = CLIPModel.from_pretrained(None, config=config, state_dict=state_dict, attn_implementation="sdpa")
    return model.float().eval()


def _with_defaults(config: dict) -> SimpleNamespace:
    """A config dict as attributes, transformers' defaults filling what it leaves out (nothing validated yet)."""
    from transformers import CLIPTextConfig, CLIPVisionConfig

    def tower(defaults: dict, given: object) -> SimpleNamespace:
        return SimpleNamespace(**{**defaults, **(given if isinstance(given, dict) else {})})

    top = {"projection_dim": 512, "logit_scale_init_value": 2.6592, **config}
    top["text_config"] = tower(_DEFAULTS.setdefault("text", CLIPTextConfig().to_dict()), config.get("text_config"))
    top["vision_config"] = tower(
        _DEFAULTS.setdefault("vision", CLIPVisionConfig().to_dict()), config.get("vision_config")
    )
    return SimpleNamespace(**top)


_DEFAULTS: dict[str, dict] = {}


def check_clip_config(
    config: CLIPConfig | SimpleNamespace, state_dict: dict[str, torch.Tensor], where: object
) -> None:
    """Check a CLIP config's numbers, and against the weights, before anything is built.

    Raises:
        CheckpointError: Naming the config field, its value and what was expected (or what the weights hold).
    """
    from transformers.activations import ACT2FN

    def fail(field: str, value: object, expected: str) -> None:
        raise CheckpointError(
            f"{where}: the config is not a valid CLIP config: field {field} is {value!r}; expected {expected}"
        )

    def weight_dim(name: str, dim: int) -> int | None:
        tensor = state_dict.get(name)
        return int(tensor.shape[dim]) if tensor is not None and tensor.ndim > dim else None

    for tower_name in ("text_config", "vision_config"):
        tower = getattr(config, tower_name)
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            value = getattr(tower, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(f"{tower_name}.{name}", value, "a positive integer")
        if tower.hidden_size % tower.num_attention_heads:
            fail(
                f"{tower_name}.num_attention_heads",
                tower.num_attention_heads,
                f"a divisor of hidden_size {tower.hidden_size}",
            )
        eps = tower.layer_norm_eps
        if not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 < eps < 1:
            fail(f"{tower_name}.layer_norm_eps", eps, "a finite number between 0 and 1")
        for name in ("attention_dropout", "dropout"):
            value = getattr(tower, name, 0.0)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                fail(f"{tower_name}.{name}", value, "a number in [0, 1)")
        if tower.hidden_act not in ACT2FN:
            fail(f"{tower_name}.hidden_act", tower.hidden_act, f"one of {', '.join(sorted(ACT2FN))}")
        prefix = "text_model" if tower_name == "text_config" else "vision_model"
        pattern = re.compile(rf"{prefix}\.encoder\.layers\.(\d+)\.")
        layers = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
        if state_dict and len(layers) != tower.num_hidden_layers:
            fail(
                f"{tower_name}.num_hidden_layers",
                tower.num_hidden_layers,
                f"{len(layers)}, the layers the weights hold",
            )
        fc1 = weight_dim(f"{prefix}.encoder.layers.0.mlp.fc1.weight", 0)
        if fc1 is not None and fc1 != tower.intermediate_size:
            fail(f"{tower_name}.intermediate_size", tower.intermediate_size, f"{fc1}, the weights' MLP width")

    text, vision = config.text_config, config.vision_config
    for field, value in (
        ("text_config.vocab_size", text.vocab_size),
        ("text_config.max_position_embeddings", text.max_position_embeddings),
        ("vision_config.patch_size", vision.patch_size),
        ("vision_config.image_size", vision.image_size),
        ("projection_dim", config.projection_dim),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            fail(field, value, "a positive integer")
    if vision.image_size % vision.patch_size:
        fail("vision_config.image_size", vision.image_size, f"a multiple of patch_size {vision.patch_size}")
    if getattr(vision, "num_channels", 3) != 3:
        fail("vision_config.num_channels", vision.num_channels, "3 (RGB)")
    scale = config.logit_scale_init_value
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        fail("logit_scale_init_value", scale, "a finite number")
    grid = (vision.image_size // vision.patch_size) ** 2 + 1
    for field, value, name, dim, what in (
        ("text_config.vocab_size", text.vocab_size, "text_model.embeddings.token_embedding.weight", 0, "rows"),
        ("text_config.hidden_size", text.hidden_size, "text_model.embeddings.token_embedding.weight", 1, "columns"),
        (
            "text_config.max_position_embeddings",
            text.max_position_embeddings,
            "text_model.embeddings.position_embedding.weight",
            0,
            "rows",
        ),
        (
            "vision_config.hidden_size",
            vision.hidden_size,
            "vision_model.embeddings.patch_embedding.weight",
            0,
            "filters",
        ),
        ("vision_config.patch_size", vision.patch_size, "vision_model.embeddings.patch_embedding.weight", 2, "pixels"),
        (
            "vision_config.image_size",
            vision.image_size,
            "vision_model.embeddings.position_embedding.weight",
            0,
            "rows",
        ),
        ("projection_dim", config.projection_dim, "text_projection.weight", 0, "rows"),
    ):
        held = weight_dim(name, dim)
        if field == "vision_config.image_size":
            if held is not None and held != grid:
                fail(field, value, f"a size that gives {held} position rows with patch_size {vision.patch_size}")
        elif held is not None and held != value:
            fail(field, value, f"{held}, as the weights' {name} has {held} {what}")


def check_preprocessing(transform: ImageTransform, image_size: int, where: object) -> None:
    """The saved preprocessing must produce the model's image size, resizing no further than twice that.

    A preprocessor ``size`` / ``crop_size`` of 100000 would make every image gigabytes before the model saw it.

    Raises:
        CheckpointError: Naming the field, its value and the model's image size.
    """
    if transform.image_size != image_size:
        raise CheckpointError(
            f"{where}: preprocessor_config.json produces {transform.image_size}-pixel images (crop_size), but the "
            f"model's image tower takes {image_size} (vision_config.image_size)"
        )
    size = getattr(transform.image_processor, "size", None) or {}
    for key in ("shortest_edge", "height", "width", "longest_edge"):
        value = size.get(key) if hasattr(size, "get") else None
        if value is not None and (not isinstance(value, int) or not 0 < value <= 2 * image_size):
            raise CheckpointError(
                f"{where}: preprocessor_config.json resizes to size.{key} = {value!r}; expected a positive size of "
                f"at most {2 * image_size}, twice the model's image size {image_size}"
            )
