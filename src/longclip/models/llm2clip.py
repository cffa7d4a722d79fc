"""LLM2CLIP: CLIP's vision tower with a language model (plus an adapter) as its text encoder.

Huang et al., 2024, "LLM2CLIP: Powerful Language Model Unlocks Richer Visual Representation": a language model,
tuned with a caption-contrastive loss and then frozen, embeds captions (LLM2Vec mean pooling); a small adapter maps
those embeddings into CLIP's space, where they are trained against CLIP's vision encoder with the CLIP loss.

The adapter is LLM2CLIP's: an optional L2 normalization, residual blocks ``x + Linear(GELU(Linear(LayerNorm(x))))``
(width ``d -> expansion * d -> d``), a LayerNorm and a Linear to CLIP's embedding width. Its module names are those
of the released checkpoints (``text_adapter.adaptor.{i}.ln`` / ``.fn.{0,3}``, then ``adaptor.{n}`` LayerNorm and
``adaptor.{n+1}`` Linear), so their weights load by name.

The family's own key layout: ``vision_model.*`` and ``visual_projection.weight`` (transformers'
``CLIPVisionModelWithProjection``), ``logit_scale``, ``text_adapter.*`` and, when the model carries its language
model, ``language_model.*`` (the transformers base model's own keys). ``config.json`` (``model_type: llm2clip``)
holds the vision config, the adapter's sizes and the language model's config, pooling and context; the tokenizer's
files sit in ``tokenizer/`` beside it, so a saved model is one self-contained directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..images import ImageTransform
from .base import DualEncoder, check_state_dict
from .language import LanguageEncoder, LanguageTokenizer

if TYPE_CHECKING:
    from ..checkpoints import Checkpoint

logger = logging.getLogger(__name__)

MODEL_TYPE = "llm2clip"
LANGUAGE_PREFIX = "language_model."
# The language model's tokenizer files sit in a subfolder: beside config.json (model_type llm2clip, unknown to
# transformers) AutoTokenizer would try to read that config.
TOKENIZER_FOLDER = "tokenizer"


@dataclass
class AdapterConfig:
    """Sizes of the text adapter.

    Attributes:
        input_dim: Width of the language model's pooled embeddings.
        output_dim: CLIP's embedding width (the vision projection's).
        num_blocks: Residual blocks (LLM2CLIP: 4).
        expansion: Hidden width of each block's MLP, as a multiple of ``input_dim`` (LLM2CLIP: 2).
        dropout: Dropout inside the blocks.
        normalize_input: L2-normalize the embeddings before the first block.
    """

    input_dim: int
    output_dim: int
    num_blocks: int = 4
    expansion: int = 2
    dropout: float = 0.0
    normalize_input: bool = False

    def __post_init__(self) -> None:
        for name in ("input_dim", "output_dim", "num_blocks", "expansion"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"adapter {name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter dropout must be in [0, 1), got {self.dropout}")


class _ResidualBlock(nn.Module):
    def __init__(self, dim: int, expansion: int, dropout: float):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fn = nn.Sequential(
            nn.Linear(dim, expansion * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(expansion * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(self.ln(x))


class TextAdapter(nn.Module):
    """LLM2CLIP's adapter from language-model embeddings ``[N, input_dim]`` to CLIP's space ``[N, output_dim]``."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        d = config.input_dim
        blocks = [_ResidualBlock(d, config.expansion, config.dropout) for _ in range(config.num_blocks)]
        self.adaptor = nn.Sequential(*blocks, nn.LayerNorm(d), nn.Linear(d, config.output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.config.input_dim:
            raise ValueError(f"the adapter takes {self.config.input_dim}-wide embeddings, got {x.shape[-1]}")
        if self.config.normalize_input:
            x = F.normalize(x, dim=-1)
        return self.adaptor(x)


class LLM2CLIPModel(DualEncoder):
    """CLIP's vision tower and projection, a text adapter and (optionally) the language model that feeds it.

    A model trained from a text-embedding cache, or a released checkpoint, may come without its language model:
    it still encodes images and cached embeddings (``encode_embeddings``); ``attach_language_model`` adds one.

    Args:
        vision: A transformers ``CLIPVisionModelWithProjection``.
        adapter: The text adapter (its output width must be the vision projection's).
        language: The pooled language model, or None.
        tokenizer: Its tokenizer, or None (together with ``language``).
        logit_scale: Initial log temperature (CLIP: ``log(1 / 0.07)``).
        image_transform: Preprocessing for the vision tower; by default OpenAI CLIP's at its resolution.
    """

    def __init__(
        self,
        vision: nn.Module,
        adapter: TextAdapter,
        language: LanguageEncoder | None = None,
        tokenizer: LanguageTokenizer | None = None,
        logit_scale: float = math.log(1 / 0.07),
        image_transform: ImageTransform | None = None,
    ):
        super().__init__()
        projection = vision.config.projection_dim
        if adapter.config.output_dim != projection:
            raise ValueError(
                f"the adapter maps to {adapter.config.output_dim} dimensions, the vision projection to {projection}"
            )
        self.vision = vision
        self.text_adapter = adapter
        self.language_model: LanguageEncoder | None = None
        self.tokenizer: LanguageTokenizer | None = None
        self._logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.image_transform = image_transform or ImageTransform.for_size(vision.config.image_size)
        if language is not None:
            self.attach_language_model(language, tokenizer)

    def attach_language_model(self, language: LanguageEncoder, tokenizer: LanguageTokenizer | None) -> None:
        """Use ``language`` (and its tokenizer) as the text tower in front of the adapter."""
        if tokenizer is None:
            raise ValueError("a language model needs its tokenizer")
        if language.hidden_size != self.text_adapter.config.input_dim:
            raise ValueError(
                f"the language model's embeddings are {language.hidden_size} wide, "
                f"the adapter takes {self.text_adapter.config.input_dim}"
            )
        self.language_model = language
        self.tokenizer = tokenizer

    @property
    def logit_scale(self) -> torch.Tensor:
        return self._logit_scale

    def towers(self) -> dict[str, list[nn.Module]]:
        """The vision tower (with its projection) and the text side (adapter, and the language model if any)."""
        text = [self.text_adapter] + ([self.language_model] if self.language_model is not None else [])
        return {"vision": [self.vision], "text": text}

    @property
    def embed_dim(self) -> int:
        return int(self.vision.config.projection_dim)

    @property
    def context_length(self) -> int:
        return self._require_language().context_length if self.tokenizer else 0

    def _require_language(self) -> LanguageTokenizer:
        if self.language_model is None or self.tokenizer is None:
            raise ValueError(
                "this LLM2CLIP model has no language model attached (it was saved or released without one); "
                "attach one with model.attach_language_model(*load_language_model(...)) or encode cached "
                "embeddings with encode_embeddings"
            )
        return self.tokenizer

    def encode_embeddings(self, embeddings: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Map pooled language-model embeddings ``[N, d]`` (e.g. from a cache) through the adapter."""
        features = self.text_adapter(embeddings.to(device=self.device, dtype=self.dtype))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """Language model, pooling, adapter: ``[N, L]`` ids (right-padded) to ``[N, embed_dim]`` features.

        Without ``attention_mask`` the real tokens are those that are not the pad id; pass the mask for a tokenizer
        whose pad id is also a real token (a decoder padding with its end token).
        """
        tokenizer = self._require_language()
        if hasattr(input_ids, "attention_mask"):  # a TextBatch
            input_ids, attention_mask = input_ids.input_ids, input_ids.attention_mask
        if input_ids.ndim != 2:
            raise ValueError(f"expected token ids of shape [batch, length], got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > tokenizer.context_length:
            raise ValueError(
                f"texts of {input_ids.shape[1]} tokens do not fit this model's context of {tokenizer.context_length}"
            )
        if attention_mask is None:
            attention_mask = (input_ids != tokenizer.pad_id).long()
        attention_mask = attention_mask.to(self.device)
        pooled = self.language_model(
            input_ids.to(self.device), attention_mask, tokenizer.pool_mask(attention_mask.long())
        )
        return self.encode_embeddings(pooled, normalize=normalize)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Project preprocessed images ``[N, 3, H, W]`` to ``[N, embed_dim]`` features."""
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        features = self.vision(pixel_values=pixels).image_embeds
        return F.normalize(features, dim=-1) if normalize else features

    # --- config, loading and saving ------------------------------------------------------------------------------

    def to_config(self) -> dict:
        """The ``config.json`` of this model (``model_type: llm2clip``)."""
        config = {
            "model_type": MODEL_TYPE,
            "vision_config": self.vision.config.to_dict(),
            "adapter": asdict(self.text_adapter.config),
            "language_model": None,
        }
        if self.language_model is not None:
            config["language_model"] = {
                "config": self.language_model.model.config.to_dict(),
                "pooling": self.language_model.pooling,
                "bidirectional": self.language_model.bidirectional and self.language_model.is_decoder,
                "context_length": self.tokenizer.context_length,
                "pool_prefix": self.tokenizer.pool_prefix,
            }
        return config

    def llm2clip_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in the family's own key layout (see the module docstring)."""
        out = {f"vision_model.{k}": v for k, v in self.vision.vision_model.state_dict().items()}
        out["visual_projection.weight"] = self.vision.visual_projection.weight
        out["logit_scale"] = self._logit_scale
        out.update({f"text_adapter.{k}": v for k, v in self.text_adapter.state_dict().items()})
        if self.language_model is not None:
            out.update({LANGUAGE_PREFIX + k: v for k, v in self.language_model.model.state_dict().items()})
        return {k: v.detach() for k, v in out.items()}

    @classmethod
    def from_config(cls, config: dict, tokenizer=None, image_transform: ImageTransform | None = None):
        """An untrained model of this config (random weights); ``tokenizer`` is the transformers tokenizer."""
        from transformers import AutoConfig, AutoModel, CLIPVisionConfig, CLIPVisionModelWithProjection

        if config.get("model_type") != MODEL_TYPE:
            raise ValueError(f"expected an {MODEL_TYPE!r} config, got model_type {config.get('model_type')!r}")
        vision_config = CLIPVisionConfig(**_without_type(config["vision_config"]))
        vision_config._attn_implementation = "sdpa"
        vision = CLIPVisionModelWithProjection(vision_config)
        adapter = TextAdapter(AdapterConfig(**config["adapter"]))
        language = wrapped = None
        lm = config.get("language_model")
        if lm:
            if tokenizer is None:
                raise ValueError("an LLM2CLIP config with a language model needs its tokenizer")
            lm_config = dict(lm["config"])
            lm_config = AutoConfig.for_model(lm_config.pop("model_type"), **_without_type(lm_config))
            language = LanguageEncoder(
                AutoModel.from_config(lm_config), pooling=lm["pooling"], bidirectional=lm["bidirectional"]
            )
            wrapped = LanguageTokenizer(tokenizer, lm["context_length"], pool_prefix=lm.get("pool_prefix", True))
        return cls(vision, adapter, language, wrapped, image_transform=image_transform)

    def load_llm2clip_state_dict(self, state_dict: dict[str, torch.Tensor], where: object = "the state dict") -> None:
        """Load weights in the family's key layout, every tensor checked by name and shape first.

        Raises:
            CheckpointError: A tensor is missing, left over or shaped unlike the config says (named).
        """
        own = self.llm2clip_state_dict()
        state_dict = {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}
        check_state_dict(own, state_dict, where)
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(state_dict[key])

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> LLM2CLIPModel:
        """Build from a checkpoint (float32, CPU); the tokenizer and preprocessing come from its directory.

        Raises:
            CheckpointError: The config is not an LLM2CLIP one, or a tensor is missing or misshapen (named).
        """
        config, state_dict = checkpoint.config, checkpoint.state_dict
        if "adapter" not in config or "vision_config" not in config:
            raise CheckpointError(
                f"{checkpoint.path}: config model_type {config.get('model_type')!r} has no LLM2CLIP adapter and "
                "vision config; a released LLM2CLIP checkpoint is read from its weights file "
                "(longclip.load('.../model.safetensors'))"
            )
        tokenizer = None
        if config.get("language_model"):
            if checkpoint.directory is None:
                raise CheckpointError(f"{checkpoint.path}: an LLM2CLIP model with a language model needs its folder")
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.directory / TOKENIZER_FOLDER))
        transform = None
        if checkpoint.directory is not None:
            transform = ImageTransform.from_directory(checkpoint.directory, config["vision_config"]["image_size"])
        try:
            model = cls.from_config(config, tokenizer, transform)
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{checkpoint.path}: not a valid LLM2CLIP config: {e}") from e
        state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
        model.load_llm2clip_state_dict(state_dict, checkpoint.path)
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json``, ``model.safetensors`` (language model included), ``tokenizer/``, preprocessor."""
        from safetensors.torch import save_file

        from ..atomic import atomic_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.cpu().contiguous() for k, v in self.llm2clip_state_dict().items()}
        with atomic_file(directory / "model.safetensors") as temporary:  # safetensors alone would write it 0600
            save_file(_untie(state), str(temporary), metadata={"format": "pt"})
        (directory / "config.json").write_text(json.dumps(self.to_config(), indent=2, default=str) + "\n")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory / TOKENIZER_FOLDER)
        self.image_transform.image_processor.save_pretrained(directory)


def _without_type(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of tensors that share memory (tied embeddings), which safetensors refuses to write twice."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        pointer = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def load_released_language_model(name_or_path: str | os.PathLike, context_length: int = 512):
    """A released caption-contrastive LM (``microsoft/LLM2CLIP-Llama-3.2-1B-Instruct-CC-Finetuned``...).

    They are Llama models that LLM2Vec runs with bidirectional attention and mean pooling over the text's own tokens
    (not the begin-of-text token) at 512 tokens; their weights use transformers' Llama key names, so no remote
    code is needed. Returns ``(LanguageEncoder, LanguageTokenizer)`` for ``LLM2CLIPModel.attach_language_model``.
    """
    from .language import load_language_model

    return load_language_model(
        name_or_path, pooling="mean", bidirectional=True, context_length=context_length, pool_prefix=False
    )
