"""TULIP's released checkpoints (hub ``mderakhshani/TULIP``): open_clip layout -> the ``tulip`` family's layout.

The released files are open_clip training checkpoints, ``{"state_dict": ...}`` with DDP's ``module.`` prefix
(``reading.read_state_dict`` unwraps both, weights only). Their keys are OpenAI CLIP's: ``token_embedding.weight``,
``transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj}``, ``ln_final``, ``text_projection``, ``logit_scale``, ``visual.*``, and in stage-2 files CLIP's unused
text position table ``positional_embedding`` (TULIP's script swaps the text modules of an open_clip ``CLIP``), which
is dropped. Stage-1 files of TULIP's distillation script hold the text tower only and are not read.
The rotary frequencies are not stored: the config records TULIP's base (10000) and the model rebuilds them. The
CoPE variant (TULIP's ``AttentionCoPE``) adds per layer ``attn.q_ln``, ``attn.k_ln`` (LayerNorms over a head) and
``attn.cope.pos_emb`` (``[1, head_dim, npos_max]``), read as ``self_attn.q_norm``, ``k_norm``, ``cope_positions``
with ``cope_formulation: "tulip"`` (TULIP's scaling of the logits, see ``longclip.models.tulip``).

TULIP's text tower (``TextTransformerRoPE`` / ``TextTransformerCoPE`` in its ``open_clip``) is built with open_clip's
default activation, exact GELU, not OpenAI CLIP's quick-GELU (its weights start from OpenAI CLIP's, then train
under GELU); the vision tower stays OpenAI CLIP's, quick-GELU.

TULIP's rotary embedding pairs a head's channels as interleaved neighbours, ``(0, 1), (2, 3), ...`` (complex numbers
``x[2i] + i x[2i+1]`` rotated by ``position * theta^(-2i/d)``); ours, transformers' ``rotate_half``, pairs channel
``i`` with ``i + d/2`` at the same frequency. The conversion therefore reorders the q and k rows (weights and biases)
of every head to ``[0, 2, 4, ..., d-2, 1, 3, ..., d-1]``: rotating the reordered projections half-split gives exactly
TULIP's rotated q and k, reordered the same way, so every q . k, and so the attention, is unchanged.

The shared part is converted by the OpenAI converter (``convert.openai_to_hf``), given a placeholder position table
that is dropped again, so both layouts are read by one piece of code and every shape is checked there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from ..tokenizer import DEFAULT_CONTEXT_LENGTH
from .convert import openai_to_hf
from .reading import CheckpointError

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

TULIP_ROPE_THETA = 10000.0
_COPE_PARTS = {  # open_clip name in a block -> our name in a layer
    "attn.q_ln.weight": "self_attn.q_norm.weight",
    "attn.q_ln.bias": "self_attn.q_norm.bias",
    "attn.k_ln.weight": "self_attn.k_norm.weight",
    "attn.k_ln.bias": "self_attn.k_norm.bias",
    "attn.cope.pos_emb": "self_attn.cope_positions",
}
_POSITION_TABLE = "text_model.embeddings.position_embedding.weight"


def is_tulip_open_clip(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """open_clip CLIP keys with a text transformer, and CoPE's tensors or no text position table.

    TULIP's stage-2 script swaps the text modules of an open_clip ``CLIP``, so its files keep CLIP's unused 77-row
    ``positional_embedding``. A CoPE file is TULIP's whatever else it holds; a rotary one with that table has
    exactly OpenAI CLIP's key names and is read as a CLIP unless the layout is named (``layout="tulip-open_clip"``).
    """
    keys = set(state_dict)
    clip = {"token_embedding.weight", "text_projection", "transformer.resblocks.0.attn.in_proj_weight"} <= keys
    if not clip or "visual.class_embedding" not in keys:
        return False
    return "positional_embedding" not in keys or any(_cope_part(name) for name in keys)


def _cope_part(name: str) -> str | None:
    """The CoPE part a key names (``attn.q_ln.weight``...) in a text block, or None."""
    if name.startswith("transformer.resblocks."):
        return next((part for part in _COPE_PARTS if name.endswith("." + part)), None)
    return None


def convert_tulip_open_clip(
    state_dict: Mapping[str, torch.Tensor], context_length: int = DEFAULT_CONTEXT_LENGTH
) -> tuple[dict, StateDict]:
    """A released TULIP state dict -> (``tulip`` config dict, state dict in ``TulipModel``'s layout).

    A text position table (``positional_embedding``, kept unused in stage-2 files) is dropped, and that is logged.

    Raises:
        CheckpointError: A tensor is missing, left over or misshapen (the message names it), or only some layers
            carry CoPE's tensors.
    """
    remaining = dict(state_dict)
    table = remaining.pop("positional_embedding", None)
    if table is not None:
        logger.info(
            "dropped the text position table positional_embedding %s: TULIP's text tower has relative positions "
            "(open_clip's CLIP keeps the unused table in TULIP's stage-2 files)",
            tuple(table.shape),
        )
    cope: dict[int, dict[str, torch.Tensor]] = {}
    for name in list(remaining):
        part = _cope_part(name)
        layer = name[len("transformer.resblocks.") : -len(part) - 1] if part else ""
        if layer.isdigit():
            cope.setdefault(int(layer), {})[part] = remaining.pop(name)
    width = _shape(remaining, "token_embedding.weight", 2)[1]
    # The OpenAI converter needs a position table to read the text tower's context; TULIP has none.
    remaining["positional_embedding"] = torch.zeros(2, width)
    config, converted = openai_to_hf(remaining)
    converted.pop(_POSITION_TABLE)
    tc = config.text_config
    heads, layers = tc.num_attention_heads, tc.num_hidden_layers
    head_dim = tc.hidden_size // heads

    text = {
        "vocab_size": tc.vocab_size, "hidden_size": tc.hidden_size, "intermediate_size": tc.intermediate_size,
        "num_hidden_layers": layers, "num_attention_heads": heads, "hidden_act": "gelu",
        "layer_norm_eps": tc.layer_norm_eps, "context_length": context_length, "position_encoding": "rope",
        "rope_theta": TULIP_ROPE_THETA, "rope_scaling": None, "cope_formulation": "tulip",
    }  # fmt: skip
    if cope:
        if sorted(cope) != list(range(layers)) or any(len(parts) != len(_COPE_PARTS) for parts in cope.values()):
            raise CheckpointError(
                f"CoPE tensors ({', '.join(_COPE_PARTS)}) must be present in each of the {layers} text layers; "
                f"found them for layers {sorted(cope)} with parts {sorted({p for v in cope.values() for p in v})}"
            )
        npos = _shape(cope[0], "attn.cope.pos_emb", 3)[2]
        for layer, parts in cope.items():
            for part, tensor in parts.items():
                want = (1, head_dim, npos) if part.endswith("pos_emb") else (head_dim,)
                if tuple(tensor.shape) != want:
                    raise CheckpointError(
                        f"tensor transformer.resblocks.{layer}.{part} has shape {tuple(tensor.shape)}, expected {want}"
                    )
                converted[f"text_model.encoder.layers.{layer}.{_COPE_PARTS[part]}"] = tensor
        text.update(position_encoding="cope", cope_positions=npos)
    else:
        for layer in range(layers):
            for proj in ("q_proj", "k_proj"):
                for kind in ("weight", "bias"):
                    name = f"text_model.encoder.layers.{layer}.self_attn.{proj}.{kind}"
                    converted[name] = interleaved_to_half(converted[name], heads)
    # Everything else already has our names: the tulip layout is transformers' CLIP layout minus the table.
    vision = config.vision_config.to_dict()
    tulip = {
        "model_type": "tulip",
        "text_config": text,
        "vision_config": vision,
        "projection_dim": config.projection_dim,
    }
    return tulip, converted


def interleaved_to_half(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder a projection's output rows (``[heads * d, ...]``) from interleaved rotary pairs to half-split pairs.

    Within each head the new order is ``[0, 2, ..., d-2, 1, 3, ..., d-1]``: the pair ``(2i, 2i+1)`` that TULIP rotates
    together becomes ``(i, i + d/2)``, the pair ``rotate_half`` rotates together at the same frequency.
    """
    head_dim = rows.shape[0] // heads
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    index = (torch.arange(heads)[:, None] * head_dim + order).reshape(-1)
    return rows[index].contiguous()


def _shape(tensors: Mapping[str, torch.Tensor], name: str, ndim: int) -> tuple[int, ...]:
    if name not in tensors:
        raise CheckpointError(f"checkpoint lacks tensor {name}")
    shape = tuple(tensors[name].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"tensor {name} has shape {shape}, expected {ndim} dimensions")
    return shape
