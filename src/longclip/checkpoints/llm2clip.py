"""The released LLM2CLIP checkpoints' layout (``microsoft/LLM2CLIP-Openai-B-16``, ``-L-14-224``, ``-L-14-336``).

Huang et al., 2024 (LLM2CLIP) release a CLIP whose text side is an adapter over a language model's embeddings. The
CLIP file is a transformers ``CLIPModel``-like state dict (``vision_model.*``, ``visual_projection.weight``,
``logit_scale``) plus ``text_adapter.adaptor.{i}.ln`` / ``.fn.{0,3}`` (residual blocks), ``adaptor.{n}`` (LayerNorm)
and ``adaptor.{n+1}`` (Linear). These names are the LLM2CLIP family's own (``longclip.models.llm2clip``), so the
conversion only reads the sizes from the shapes and drops CLIP's text tower if one is stored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch

from .convert import heads_for_width
from .layouts import Layout, register_layout
from .reading import CheckpointError

logger = logging.getLogger(__name__)

MODEL_TYPE = "llm2clip"


RELEASED_ADAPTER_KEY = "text_adapter.adaptor.0.ln.weight"


def is_released_llm2clip(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict looks like a released LLM2CLIP CLIP checkpoint (CLIP vision keys plus the adapter)."""
    return RELEASED_ADAPTER_KEY in state_dict and "vision_model.embeddings.patch_embedding.weight" in state_dict


def convert_released(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """Config and family key layout of a released LLM2CLIP checkpoint (``microsoft/LLM2CLIP-Openai-*``).

    Those hold a transformers ``CLIPModel``-like state dict (``vision_model.*``, ``visual_projection.weight``,
    ``logit_scale``) and the adapter (``text_adapter.adaptor.{i}.ln`` / ``.fn.{0,3}``, then a LayerNorm and a
    Linear); CLIP's own text tower, if stored, is dropped. Sizes are read from the shapes; the vision tower uses
    OpenAI's conventions (64-wide heads, quick GELU). The language model is a separate checkpoint.

    Raises:
        CheckpointError: A tensor the layout needs is missing or misshapen (named).
    """

    def need(key: str, ndim: int) -> torch.Tensor:
        if key not in state_dict:
            raise CheckpointError(f"a released LLM2CLIP checkpoint needs the tensor {key}, which is missing")
        tensor = state_dict[key]
        if tensor.ndim != ndim:
            raise CheckpointError(f"{key} has shape {tuple(tensor.shape)}, expected {ndim} dimensions")
        return tensor

    patch = need("vision_model.embeddings.patch_embedding.weight", 4)
    positions = need("vision_model.embeddings.position_embedding.weight", 2).shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointError(f"the vision position table has {positions} rows, not a square grid plus one")
    width = patch.shape[0]
    layers = _count(state_dict, "vision_model.encoder.layers.")
    projection = need("visual_projection.weight", 2)
    vision_config = {
        "hidden_size": width,
        "intermediate_size": need("vision_model.encoder.layers.0.mlp.fc1.weight", 2).shape[0],
        "num_hidden_layers": layers,
        "num_attention_heads": heads_for_width(width),
        "patch_size": patch.shape[-1],
        "image_size": patch.shape[-1] * grid,
        "projection_dim": projection.shape[0],
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    blocks = _count(state_dict, "text_adapter.adaptor.", require=".ln.weight")
    dim = need(RELEASED_ADAPTER_KEY, 1).shape[0]
    hidden = need("text_adapter.adaptor.0.fn.0.weight", 2).shape[0]
    if hidden % dim:
        raise CheckpointError(f"the adapter's hidden width {hidden} is not a multiple of its width {dim}")
    out_key = f"text_adapter.adaptor.{blocks + 1}.weight"
    adapter = {
        "input_dim": dim,
        "output_dim": need(out_key, 2).shape[0],
        "num_blocks": blocks,
        "expansion": hidden // dim,
    }
    config = {"model_type": MODEL_TYPE, "vision_config": vision_config, "adapter": adapter, "language_model": None}
    kept = ("vision_model.", "visual_projection.", "text_adapter.")
    converted = {k: v for k, v in state_dict.items() if k.startswith(kept) and not k.endswith("position_ids")}
    converted["logit_scale"] = state_dict.get("logit_scale", torch.tensor(math.log(1 / 0.07))).reshape(())
    dropped = sorted(k for k in state_dict if not k.startswith(kept) and k != "logit_scale")
    if dropped:
        logger.info("released LLM2CLIP checkpoint: dropping %d tensors of CLIP's text tower", len(dropped))
    return config, converted


def _count(state_dict: Mapping[str, torch.Tensor], prefix: str, require: str = "") -> int:
    """How many consecutive numbered submodules ``prefix{i}`` (having ``require``) a state dict holds."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") and k.endswith(require) for k in state_dict):
        n += 1
    return n


register_layout(Layout("llm2clip-released", "llm2clip", is_released_llm2clip, convert_released))
