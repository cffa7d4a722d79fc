"""TULIP: a CLIP whose text encoder has relative positions instead of an absolute position table.

TULIP (Najdenkoska et al., "TULIP: Token-length Upgraded CLIP", 2024) removes the text tower's position table and
puts the position into every attention layer instead, so the encoder is not tied to a number of table rows:

* rotary embeddings (Su et al., "RoFormer", 2021) rotate queries and keys by their position; the rotary base
  (``rope_theta``, 10000 in TULIP) and an optional dynamic-NTK rescaling of the base toward a longer context
  ("NTK-aware scaling", bloc97 / emozilla 2023; TULIP's stage 2 uses factor 8) are config values, so training,
  inference and export compute the very same frequencies. The frequencies are never stored, always rebuilt;
* CoPE, contextual position encoding (Golovneva et al., "Contextual Position Encoding", 2024): a position is a
  running sum of sigmoid gates over the keys from ``j`` to ``i``; the logit of a fractional position interpolates
  ``q_i . e[p]`` between a learned table's neighbouring rows. TULIP adds LayerNorms on q and k and one
  ``[1, head_dim, npos_max]`` table per layer, and scales differently from the paper (``cope_formulation``):
  TULIP's code divides q . k by ``head_dim`` (``q * d^-0.5``, then ``/ sqrt(d)`` again), gates on those logits and
  takes the table logits with the scaled q, ``(q / sqrt(d)) . e[p]``; the paper uses ``q . k / sqrt(d)`` and
  ``q . e[p]``.

Everything else is CLIP's: pre-LN blocks, quick-GELU or GELU, causal attention, end-token pooling, ``ln_final`` and
the text projection; the vision tower is transformers' ``CLIPVisionModel`` unchanged. The key layout mirrors
transformers' ``CLIPModel`` without ``text_model.embeddings.position_embedding``, so a CLIP becomes a TULIP by
dropping that table (``tulip_from_clip``). Context length is a config value (248 by default; 512, 1024, ... work).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPVisionConfig, CLIPVisionModel, PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.clip.modeling_clip import CLIPMLP
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from ..errors import CheckpointError
from ..images import ImageTransform
from ..processing import LongCLIPProcessor
from ..tokenizer import (
    DEFAULT_CONTEXT_LENGTH,
    VOCAB_SIZE,
    LongCLIPTokenizer,
    clip_end_positions,
    get_tokenizer,
)
from .base import DualEncoder, check_state_dict

if TYPE_CHECKING:
    from ..checkpoints import Checkpoint

logger = logging.getLogger(__name__)

__all__ = ["TulipConfig", "TulipModel", "TulipTextConfig", "rotary_inverse_frequencies", "tulip_from_clip"]

TULIP_ROPE_THETA = 10000.0  # TULIP's rotary base
TULIP_NTK_FACTOR = 8.0  # TULIP's stage-2 dynamic-NTK factor
POSITION_ENCODINGS = ("rope", "cope")
COPE_FORMULATIONS = ("tulip", "paper")


@dataclass
class TulipTextConfig:
    """The text tower's settings (``text_config`` in ``config.json``).

    Attributes:
        context_length: The most tokens a text may have (start and end tokens included).
        position_encoding: ``"rope"`` (rotary q/k) or ``"cope"`` (contextual positions, q/k LayerNorms).
        rope_theta: Rotary base.
        rope_scaling: None, or dynamic-NTK scaling ``{"rope_type": "dynamic", "factor": F,
            "original_context_length": N}``: the base is rescaled once for ``context_length`` as transformers'
            dynamic-NTK rule does at that length, and kept fixed, so every input uses the same frequencies.
        cope_positions: Rows of CoPE's position table (``npos_max``); positions beyond are clamped.
        cope_formulation: How CoPE scales its logits: ``"tulip"`` (TULIP's code: content logits and gates on
            ``q . k / d``, table logits ``(q / sqrt(d)) . e[p]``) or ``"paper"`` (Golovneva et al.'s reference:
            ``q . k / sqrt(d)`` and ``q . e[p]``). A ``config.json`` of a CoPE model written before this field
            existed is read as ``"paper"``, the formulation it was trained with.
    """

    vocab_size: int = VOCAB_SIZE
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    context_length: int = DEFAULT_CONTEXT_LENGTH
    position_encoding: str = "rope"
    rope_theta: float = TULIP_ROPE_THETA
    rope_scaling: dict[str, Any] | None = None
    cope_positions: int = 64
    cope_formulation: str = "tulip"

    def __post_init__(self) -> None:
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding must be one of {POSITION_ENCODINGS}, got {self.position_encoding!r}")
        if self.cope_formulation not in COPE_FORMULATIONS:
            raise ValueError(f"cope_formulation must be one of {COPE_FORMULATIONS}, got {self.cope_formulation!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head width, got {self.head_dim}")
        if self.context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {self.context_length}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.cope_positions < 2:
            raise ValueError(f"cope_positions must be at least 2, got {self.cope_positions}")
        if self.rope_scaling is not None:
            scaling = dict(self.rope_scaling)
            if scaling.get("rope_type") != "dynamic":
                raise ValueError(f"rope_scaling supports rope_type 'dynamic' only, got {scaling.get('rope_type')!r}")
            if float(scaling.get("factor", 0)) < 1:
                raise ValueError(f"rope_scaling factor must be at least 1, got {scaling.get('factor')!r}")
            if int(scaling.get("original_context_length", 0)) < 2:
                raise ValueError(f"rope_scaling needs original_context_length, got {scaling!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class TulipConfig:
    """A TULIP model's config (what ``config.json`` holds, with ``model_type: "tulip"``).

    Attributes:
        text_config: The relative-position text tower.
        vision_config: transformers ``CLIPVisionConfig`` fields of the (unchanged) vision tower.
        projection_dim: Width of the shared embedding space.
        logit_scale_init_value: Initial log temperature (CLIP's 2.6592 = log(1 / 0.07)).
    """

    text_config: TulipTextConfig = field(default_factory=TulipTextConfig)
    vision_config: dict[str, Any] = field(default_factory=dict)
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    model_type: ClassVar[str] = "tulip"

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **asdict(self)}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> TulipConfig:
        """Read a ``config.json`` dict, refusing unknown text settings (a misspelt key would be silently ignored)."""
        config = dict(config)
        if config.pop("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"expected a TULIP config (model_type 'tulip'), got {config!r:.200}")
        text = dict(config.pop("text_config", {}))
        known = {f.name for f in fields(TulipTextConfig)}
        if set(text) - known:
            raise ValueError(f"unknown TULIP text settings: {sorted(set(text) - known)}")
        if text.get("position_encoding") == "cope" and "cope_formulation" not in text:
            text["cope_formulation"] = "paper"  # written before the field existed, when CoPE followed the paper
        settings = {k: v for k, v in config.items() if k in {f.name for f in fields(cls)}}
        return cls(text_config=TulipTextConfig(**text), **settings)

    def vision(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(**{k: v for k, v in self.vision_config.items() if k != "model_type"})


def rotary_inverse_frequencies(text: TulipTextConfig) -> torch.Tensor:
    """The rotary inverse frequencies ``[head_dim / 2]`` a text config describes (transformers' rope functions).

    Without scaling: ``theta ** (-2i / head_dim)``. With dynamic-NTK scaling: the base becomes
    ``theta * (factor * L / L0 - (factor - 1)) ** (d / (d - 2))`` for ``L = context_length`` and
    ``L0 = original_context_length``, fixed at that length (not recomputed per input).
    """
    scaling = text.rope_scaling
    parameters = {"rope_type": "default", "rope_theta": float(text.rope_theta)}
    original = text.context_length
    if scaling is not None:
        parameters.update(rope_type="dynamic", factor=float(scaling["factor"]))
        original = int(scaling["original_context_length"])
    hf = PretrainedConfig(
        hidden_size=text.hidden_size, num_attention_heads=text.num_attention_heads, head_dim=text.head_dim,
        max_position_embeddings=original, rope_parameters=parameters,
    )  # fmt: skip
    if scaling is None:
        inv_freq, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(hf)
    else:
        inv_freq, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf, seq_len=text.context_length)
    return inv_freq.float()


class TulipAttention(nn.Module):
    """Causal multi-head self-attention with rotary q/k, or with CoPE (q/k LayerNorms and a position table)."""

    def __init__(self, text: TulipTextConfig):
        super().__init__()
        width, self.heads, self.head_dim = text.hidden_size, text.num_attention_heads, text.head_dim
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.cope = text.position_encoding == "cope"
        if self.cope:
            # content logits (and the gates' input) q.k * score_scale; table logits (q * table_scale).e[p]
            if text.cope_formulation == "tulip":
                self.score_scale, self.table_scale = 1 / self.head_dim, self.head_dim**-0.5
            else:
                self.score_scale, self.table_scale = self.head_dim**-0.5, 1.0
            self.q_norm = nn.LayerNorm(self.head_dim, eps=text.layer_norm_eps)
            self.k_norm = nn.LayerNorm(self.head_dim, eps=text.layer_norm_eps)
            self.cope_positions = nn.Parameter(torch.zeros(1, self.head_dim, text.cope_positions))

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = (proj(x).view(n, length, self.heads, self.head_dim).transpose(1, 2) for proj in self._qkv())
        if self.cope:
            q, k = self.q_norm(q), self.k_norm(k)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.cope_bias(q, k), scale=self.score_scale)
        else:
            q, k = apply_rotary_pos_emb(q, k, cos[None], sin[None], unsqueeze_dim=1)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))

    def _qkv(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        return self.q_proj, self.k_proj, self.v_proj

    def cope_bias(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """CoPE's position logits plus the causal mask, ``[N, H, L, L]``, to add to ``q k^T * score_scale``.

        Gates ``g_ij = sigmoid(q_i . k_j * score_scale)`` (0 on future keys), position ``p_ij = sum_{t=j..i} g_it``
        clamped to the table, logit ``(q_i * table_scale) . e[p_ij]`` interpolated between the table's rows floor(p)
        and ceil(p). The scales are the config's ``cope_formulation``'s.
        """
        length = q.shape[-2]
        future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
        logits = (q @ k.transpose(-1, -2)) * self.score_scale
        gates = torch.sigmoid(logits.masked_fill(future, -math.inf))
        positions = gates.flip(-1).cumsum(-1).flip(-1).clamp(max=self.cope_positions.shape[-1] - 1)
        floor = positions.floor()
        table_logits = (q * self.table_scale) @ self.cope_positions  # [N, H, L, npos]: for every integer position
        low = table_logits.gather(-1, floor.long())
        high = table_logits.gather(-1, positions.ceil().long())
        weight = positions - floor
        return (high * weight + low * (1 - weight)).masked_fill(future, -math.inf)


class TulipBlock(nn.Module):
    """CLIP's pre-LN residual block with TULIP's attention."""

    def __init__(self, text: TulipTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(text.hidden_size, eps=text.layer_norm_eps)
        self.self_attn = TulipAttention(text)
        self.layer_norm2 = nn.LayerNorm(text.hidden_size, eps=text.layer_norm_eps)
        mlp_config = CLIPTextConfig(
            hidden_size=text.hidden_size, intermediate_size=text.intermediate_size, hidden_act=text.hidden_act
        )
        self.mlp = CLIPMLP(mlp_config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), cos, sin)
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, text: TulipTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(text.vocab_size, text.hidden_size)


class _Encoder(nn.Module):
    def __init__(self, text: TulipTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(TulipBlock(text) for _ in range(text.num_hidden_layers))


class TulipTextTransformer(nn.Module):
    """Token embedding (no position table), relative-position blocks, final LayerNorm; pools the end token."""

    def __init__(self, text: TulipTextConfig):
        super().__init__()
        self.config = text
        self.embeddings = _Embeddings(text)
        self.encoder = _Encoder(text)
        self.final_layer_norm = nn.LayerNorm(text.hidden_size, eps=text.layer_norm_eps)
        # Rebuilt from the config, never saved: checkpoints do not store frequencies.
        self.register_buffer("inv_freq", rotary_inverse_frequencies(text), persistent=False)

    def rotary(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[length, head_dim]`` for positions 0..length-1 (transformers' half-split layout)."""
        angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), self.inv_freq.float())
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, input_ids: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[N, width]`` at the end-token indices ``end`` ``[N]``."""
        x = self.embeddings.token_embedding(input_ids)
        cos = sin = None
        if self.config.position_encoding == "rope":
            cos, sin = (t.to(x.dtype) for t in self.rotary(input_ids.shape[1], input_ids.device))
        for layer in self.encoder.layers:
            x = layer(x, cos, sin)
        x = self.final_layer_norm(x)
        return x[torch.arange(x.shape[0], device=x.device), end]


class TulipModel(DualEncoder):
    """TULIP: relative-position text tower + CLIP's vision tower, projected into one space.

    Args:
        config: The model's config.
        image_transform: Preprocessing for the image tower; by default OpenAI CLIP's at its resolution.
    """

    family: ClassVar[str] = "tulip"

    def __init__(self, config: TulipConfig, image_transform: ImageTransform | None = None):
        super().__init__()
        if config.text_config.vocab_size != VOCAB_SIZE:
            raise ValueError(
                f"this TULIP has a {config.text_config.vocab_size}-token vocabulary; the tokenizer is CLIP's "
                f"{VOCAB_SIZE}"
            )
        self.config = config
        text, vision = config.text_config, config.vision()
        self.text_model = TulipTextTransformer(text)
        self.text_projection = nn.Linear(text.hidden_size, config.projection_dim, bias=False)
        self.vision_model = CLIPVisionModel(vision)
        self.visual_projection = nn.Linear(vision.hidden_size, config.projection_dim, bias=False)
        self.register_parameter("logit_scale", nn.Parameter(torch.tensor(config.logit_scale_init_value)))
        self.image_transform = image_transform or ImageTransform.for_size(vision.image_size)

    @property
    def logit_scale(self) -> torch.Tensor:  # the parameter, under the name CLIP checkpoints use
        try:
            return self._parameters["logit_scale"]
        except KeyError:  # not registered yet (register_parameter asks hasattr first)
            raise AttributeError("logit_scale") from None

    @property
    def context_length(self) -> int:
        return self.config.text_config.context_length

    @property
    def embed_dim(self) -> int:
        return self.config.projection_dim

    @property
    def tokenizer(self) -> LongCLIPTokenizer:
        """CLIP's tokenizer at this model's context length."""
        return get_tokenizer(self.context_length)

    @property
    def processor(self) -> LongCLIPProcessor:
        return LongCLIPProcessor(self.tokenizer, self.image_transform)

    def towers(self) -> dict[str, list[nn.Module]]:
        return {"vision": [self.vision_model, self.visual_projection], "text": [self.text_model, self.text_projection]}

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """Project token ids (``[N, L]``, padded after the end token) to text features ``[N, embed_dim]``.

        Pools the first end token of each row (the mask is not needed; checked for shape when given). The batch is
        cut after its longest text: attention is causal, so later positions never reach the pooled token.
        """
        end = clip_end_positions(input_ids, attention_mask, self.context_length)
        if input_ids.shape[0] == 0:
            return torch.empty(0, self.embed_dim, device=self.device, dtype=self.dtype)
        tokens = input_ids[:, : int(end.max()) + 1].to(self.device)
        features = self.text_projection(self.text_model(tokens, end.to(self.device)))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Project preprocessed images (``[N, 3, H, W]``) to image features ``[N, embed_dim]``."""
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        features = self.visual_projection(self.vision_model(pixel_values=pixels).pooler_output)
        return F.normalize(features, dim=-1) if normalize else features

    def extend_context(self, context_length: int, ntk_factor: float | None = TULIP_NTK_FACTOR) -> None:
        """Lengthen the text context in place; with ``ntk_factor``, rescale the rotary base by dynamic NTK.

        The new frequencies are fixed for ``context_length`` and recorded in the config (``rope_scaling``), so a
        saved model is read back with exactly the frequencies it was trained with.

        Raises:
            ValueError: The new context is not longer, or the model already has rotary scaling, or ``ntk_factor``
                is given for a CoPE model (it has no rotary frequencies).
        """
        text = self.config.text_config
        if context_length <= text.context_length:
            raise ValueError(f"context_length {context_length} is not longer than the current {text.context_length}")
        scaling = None
        if ntk_factor is not None:
            if text.position_encoding != "rope":
                raise ValueError("ntk_factor rescales rotary frequencies; this model uses CoPE")
            if text.rope_scaling is not None:
                raise ValueError(f"this model's rotary frequencies are already scaled ({text.rope_scaling})")
            scaling = {"rope_type": "dynamic", "factor": float(ntk_factor),
                       "original_context_length": text.context_length}  # fmt: skip
        updated = TulipTextConfig(**{**asdict(text), "context_length": context_length,
                                     "rope_scaling": scaling or text.rope_scaling})  # fmt: skip
        self.config.text_config = self.text_model.config = updated
        self.text_model.inv_freq = rotary_inverse_frequencies(updated).to(self.text_model.inv_freq.device)
        logger.info("text context extended to %d tokens (rotary scaling: %s)", context_length, updated.rope_scaling)

    # --- building and saving -----------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> TulipModel:
        """Build from a checkpoint's config and state dict (float32, CPU, eval mode); every tensor checked.

        Raises:
            CheckpointError: The config is invalid, or a tensor is missing, left over or misshapen (named).
        """
        try:
            config = TulipConfig.from_dict(checkpoint.config)
            with torch.device("meta"):
                expected = cls(config).state_dict()
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{checkpoint.path}: the config is not a valid TULIP config: {e}") from e
        state_dict = {k: v.float() if v.is_floating_point() else v for k, v in checkpoint.state_dict.items()}
        check_state_dict(expected, state_dict, checkpoint.path)
        transform = None
        if checkpoint.directory is not None:
            transform = ImageTransform.from_directory(checkpoint.directory, config.vision().image_size)
        model = cls(config, transform)
        model.load_state_dict(state_dict)
        return model.float().eval()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors``, ``config.json`` (``model_type: "tulip"``) and tokenizer/preprocessor files."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        from ..atomic import atomic_file

        with atomic_file(directory / "model.safetensors") as temporary:  # safetensors alone would write it 0600
            save_file(tensors, str(temporary), metadata={"format": "pt"})
        (directory / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        self.processor.save_pretrained(directory)


def tulip_from_clip(
    clip_model: DualEncoder,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    position_encoding: str = "rope",
    rope_theta: float = TULIP_ROPE_THETA,
    rope_scaling: dict[str, Any] | None = None,
    cope_positions: int = 64,
    cope_formulation: str = "tulip",
) -> TulipModel:
    """A TULIP with a CLIP's weights (``LongCLIPModel``): every tensor but the text position table, copied.

    CoPE's LayerNorms start as identity and its position tables at zero (no position signal until trained).

    Raises:
        ValueError: The model is not a transformers-backed CLIP.
    """
    clip = getattr(clip_model, "clip", None)
    if clip is None:
        raise ValueError(f"tulip_from_clip needs a CLIP-family model, got {type(clip_model).__name__}")
    tc = clip.config.text_config
    text = TulipTextConfig(
        vocab_size=tc.vocab_size, hidden_size=tc.hidden_size, intermediate_size=tc.intermediate_size,
        num_hidden_layers=tc.num_hidden_layers, num_attention_heads=tc.num_attention_heads, hidden_act=tc.hidden_act,
        layer_norm_eps=tc.layer_norm_eps, context_length=context_length, position_encoding=position_encoding,
        rope_theta=rope_theta, rope_scaling=rope_scaling, cope_positions=cope_positions,
        cope_formulation=cope_formulation,
    )  # fmt: skip
    config = TulipConfig(
        text_config=text,
        vision_config=clip.config.vision_config.to_dict(),
        projection_dim=clip.config.projection_dim,
        logit_scale_init_value=float(clip.logit_scale.detach()),
    )
    model = TulipModel(config, clip_model.image_transform).to(clip.dtype)
    weights = {k: v for k, v in clip.state_dict().items() if not k.startswith("text_model.embeddings.position_")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    new = {n for n in missing if n.endswith(("q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias"))}
    new |= {n for n in missing if n.endswith("cope_positions")}
    if unexpected or set(missing) - new:
        raise ValueError(f"CLIP and TULIP layouts disagree: missing {sorted(set(missing) - new)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")  # fmt: skip
    logger.info("built a %s TULIP (context %d) from a CLIP", position_encoding, context_length)
    return model.eval()
