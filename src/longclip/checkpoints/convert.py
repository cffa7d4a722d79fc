"""Pure converters between checkpoint layouts, in the spirit of timm's ``checkpoint_filter_fn``.

Layouts:

* ``openai``: OpenAI CLIP's module tree (``transformer.resblocks.0.attn.in_proj_weight``, ``visual.conv1.weight``,
  ``text_projection`` stored as ``[width, embed]``...). OpenAI's ``.pt`` files and the released Long-CLIP ``.pt``
  files use it; Long-CLIP adds ``positional_embedding_res`` (and sometimes ``mask1``/``mask2``).
* ``hf``: transformers' ``CLIPModel`` (``text_model.encoder.layers.0.self_attn.q_proj.weight``...).

The architecture is read from tensor shapes, never from a table of known models. Heads are not visible in shapes;
like OpenAI's ``build_model`` we use one head per 64 channels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from transformers import CLIPConfig

from ..positions import (
    LONGCLIP_KEEP_POSITIONS,
    fold_positional_tables,
    keep_positions_from_mask,
    unfold_positional_tables,
)
from ..tokenizer import EOT_ID, PAD_ID, SOT_ID
from .reading import CheckpointError, sample_keys

HEAD_WIDTH = 64  # OpenAI CLIP's per-head width; heads = width // 64
# Non-weight entries that OpenAI's TorchScript archives carry beside the weights.
_OPENAI_IGNORED = {"input_resolution", "context_length", "vocab_size"}
_OPENAI_BLOCK = {  # per-block names: openai -> hf (in_proj is split into q/k/v separately)
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_OPENAI_TOP = {  # openai -> hf, tensors copied as they are
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_OPENAI_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_TOWERS = {
    "transformer.resblocks.": "text_model.encoder.layers.",
    "visual.transformer.resblocks.": "vision_model.encoder.layers.",
}


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the layout of a state dict from its keys: ``"longclip-pt"``, ``"openai"`` or ``"hf"``.

    Raises:
        CheckpointError: No known layout matches; the message lists keys seen.
    """
    keys = set(state_dict)
    if {"token_embedding.weight", "positional_embedding", "text_projection"} <= keys:
        if any(k.startswith("visual.layer1.") for k in keys):
            raise CheckpointError(
                "this is an OpenAI CLIP with a ResNet image tower (keys visual.layer1.*); only ViT towers are "
                "supported, since transformers' CLIPModel has no ResNet variant"
            )
        return "longclip-pt" if "positional_embedding_res" in keys else "openai"
    if "text_model.embeddings.token_embedding.weight" in keys:
        return "hf"
    raise CheckpointError(
        "unknown checkpoint layout: not OpenAI CLIP, Long-CLIP nor transformers CLIP. "
        f"Keys seen: {sample_keys(sorted(keys))}"
    )


def _count_blocks(keys: set[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if found != set(range(len(found))):
        raise CheckpointError(f"blocks under {prefix}* are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def heads_for_width(width: int) -> int:
    return max(1, width // HEAD_WIDTH)


def _expect(tensor: torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(shape):
        raise CheckpointError(f"tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    return tensor


def config_from_openai(state_dict: Mapping[str, torch.Tensor]) -> CLIPConfig:
    """Build a transformers ``CLIPConfig`` from an OpenAI-layout state dict's shapes."""
    sd, keys = state_dict, set(state_dict)
    dims = {  # the tensors the architecture is read from, and their number of dimensions
        "visual.conv1.weight": 4,
        "visual.positional_embedding": 2,
        "token_embedding.weight": 2,
        "positional_embedding": 2,
        "visual.proj": 2,
        "text_projection": 2,
        "transformer.resblocks.0.mlp.c_fc.weight": 2,
        "visual.transformer.resblocks.0.mlp.c_fc.weight": 2,
    }
    for required, ndim in dims.items():
        if required not in keys:
            raise CheckpointError(f"OpenAI-layout checkpoint lacks {required}; keys seen: {sample_keys(sorted(keys))}")
        if sd[required].ndim != ndim or 0 in sd[required].shape:
            raise CheckpointError(
                f"tensor {required} has shape {tuple(sd[required].shape)}; expected {ndim} non-zero sizes"
            )
    vision_width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    if grid * grid + 1 != sd["visual.positional_embedding"].shape[0]:
        raise CheckpointError(
            f"visual.positional_embedding has {sd['visual.positional_embedding'].shape[0]} rows; expected a square "
            "grid of patches plus one class token"
        )
    # The width is read from the token embedding, so a wrong ln_final (or any other tensor) is the one named.
    text_width = sd["token_embedding.weight"].shape[1]
    text_layers = _count_blocks(keys, "transformer.resblocks.")
    vision_layers = _count_blocks(keys, "visual.transformer.resblocks.")
    if not text_layers or not vision_layers:
        raise CheckpointError(f"found {text_layers} text and {vision_layers} vision transformer blocks; need both")
    text = dict(
        vocab_size=sd["token_embedding.weight"].shape[0],
        hidden_size=text_width,
        intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=text_layers,
        num_attention_heads=heads_for_width(text_width),
        max_position_embeddings=sd["positional_embedding"].shape[0],
        hidden_act="quick_gelu",  # OpenAI CLIP's activation; transformers defaults to it for CLIP too
        bos_token_id=SOT_ID,
        eos_token_id=EOT_ID,
        pad_token_id=PAD_ID,
    )
    vision = dict(
        hidden_size=vision_width,
        intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=vision_layers,
        num_attention_heads=heads_for_width(vision_width),
        image_size=patch * grid,
        patch_size=patch,
        hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=sd["text_projection"].shape[1])


def openai_to_hf(state_dict: Mapping[str, torch.Tensor]) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Convert an OpenAI CLIP or released Long-CLIP state dict to transformers' layout.

    Long-CLIP's two position tables are folded into one (rows below ``keep_positions`` from ``positional_embedding``,
    the rest from ``positional_embedding_res``; ``keep_positions`` is read from ``mask1`` when present, else 20).
    It is recorded as ``config.keep_positions`` so fine-tuning can freeze those rows again.

    Raises:
        CheckpointError: A tensor is missing, left over, or has an unexpected shape (the message names it).
    """
    config = config_from_openai(state_dict)
    tc, vc = config.text_config, config.vision_config
    remaining = {k: v for k, v in state_dict.items() if k not in _OPENAI_IGNORED}
    out: dict[str, torch.Tensor] = {}

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in remaining:
            raise CheckpointError(f"checkpoint lacks tensor {name}")
        return _expect(remaining.pop(name), shape, name)

    table = take("positional_embedding", (tc.max_position_embeddings, tc.hidden_size))
    if "positional_embedding_res" in remaining:
        trained = take("positional_embedding_res", tuple(table.shape))
        keep_positions = LONGCLIP_KEEP_POSITIONS
        if "mask1" in remaining:
            keep_positions = keep_positions_from_mask(take("mask1", (table.shape[0], 1)))
            remaining.pop("mask2", None)
        table = fold_positional_tables(table, trained, keep_positions)
        config.keep_positions = keep_positions
    out["text_model.embeddings.position_embedding.weight"] = table

    shapes = {
        "token_embedding.weight": (tc.vocab_size, tc.hidden_size),
        "ln_final.weight": (tc.hidden_size,),
        "ln_final.bias": (tc.hidden_size,),
        "logit_scale": (),
        "visual.class_embedding": (vc.hidden_size,),
        "visual.conv1.weight": (vc.hidden_size, 3, vc.patch_size, vc.patch_size),
        "visual.positional_embedding": ((vc.image_size // vc.patch_size) ** 2 + 1, vc.hidden_size),
        "visual.ln_pre.weight": (vc.hidden_size,),
        "visual.ln_pre.bias": (vc.hidden_size,),
        "visual.ln_post.weight": (vc.hidden_size,),
        "visual.ln_post.bias": (vc.hidden_size,),
    }
    for src, dst in _OPENAI_TOP.items():
        out[dst] = take(src, shapes[src])
    out["text_projection.weight"] = take("text_projection", (tc.hidden_size, config.projection_dim)).T.contiguous()
    out["visual_projection.weight"] = take("visual.proj", (vc.hidden_size, config.projection_dim)).T.contiguous()

    for src_prefix, dst_prefix in _TOWERS.items():
        tower = tc if src_prefix.startswith("transformer") else vc
        width, hidden = tower.hidden_size, tower.intermediate_size
        block_shapes = {
            "attn.out_proj.weight": (width, width),
            "attn.out_proj.bias": (width,),
            "ln_1.weight": (width,),
            "ln_1.bias": (width,),
            "ln_2.weight": (width,),
            "ln_2.bias": (width,),
            "mlp.c_fc.weight": (hidden, width),
            "mlp.c_fc.bias": (hidden,),
            "mlp.c_proj.weight": (width, hidden),
            "mlp.c_proj.bias": (width,),
        }
        for i in range(tower.num_hidden_layers):
            src, dst = f"{src_prefix}{i}.", f"{dst_prefix}{i}."
            remaining.pop(f"{src}attn_mask", None)  # a constant causal mask some exports keep as an attribute
            q, k, v = take(f"{src}attn.in_proj_weight", (3 * width, width)).chunk(3)
            qb, kb, vb = take(f"{src}attn.in_proj_bias", (3 * width,)).chunk(3)
            for proj, weight, bias in (("q", q, qb), ("k", k, kb), ("v", v, vb)):
                out[f"{dst}self_attn.{proj}_proj.weight"] = weight.contiguous()
                out[f"{dst}self_attn.{proj}_proj.bias"] = bias.contiguous()
            for name, shape in block_shapes.items():
                out[dst + _OPENAI_BLOCK[name]] = take(src + name, shape)

    if remaining:
        raise CheckpointError(
            f"unexpected tensors in the checkpoint, not part of a CLIP: {sample_keys(sorted(remaining))}"
        )
    return config, out


def hf_to_openai(
    state_dict: Mapping[str, torch.Tensor], config: CLIPConfig, keep_positions: int | None = None
) -> dict[str, torch.Tensor]:
    """Convert transformers-layout CLIP weights back to OpenAI's layout.

    Args:
        state_dict: ``CLIPModel.state_dict()``.
        config: Its config (for the block counts).
        keep_positions: If given, write the released Long-CLIP format: ``positional_embedding`` and
            ``positional_embedding_res`` both hold the table (so their masked sum is the table again, whatever
            ``keep_positions`` a reader assumes), without ``mask1``/``mask2``, which the original loader does not
            accept.
    """
    sd = dict(state_dict)
    sd.pop("text_model.embeddings.position_ids", None)
    sd.pop("vision_model.embeddings.position_ids", None)
    inverse_top = {dst: src for src, dst in _OPENAI_TOP.items()}
    out: dict[str, torch.Tensor] = {}
    for dst, src in inverse_top.items():
        out[src] = sd.pop(dst)
    for src, dst in _OPENAI_TRANSPOSED.items():
        out[src] = sd.pop(dst).T.contiguous()
    table = sd.pop("text_model.embeddings.position_embedding.weight")
    if keep_positions is None:
        out["positional_embedding"] = table
    else:
        out["positional_embedding"], out["positional_embedding_res"] = unfold_positional_tables(table)
    inverse_block = {dst: src for src, dst in _OPENAI_BLOCK.items()}
    for openai_prefix, hf_prefix in _TOWERS.items():
        tower = config.text_config if openai_prefix.startswith("transformer") else config.vision_config
        for i in range(tower.num_hidden_layers):
            src, dst = f"{hf_prefix}{i}.", f"{openai_prefix}{i}."
            for kind in ("weight", "bias"):
                parts = [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
                out[f"{dst}attn.in_proj_{kind}"] = torch.cat(parts)
            for hf_name, openai_name in inverse_block.items():
                out[dst + openai_name] = sd.pop(src + hf_name)
    if sd:
        raise CheckpointError(f"tensors with no place in OpenAI's layout: {sample_keys(sorted(sd))}")
    return out
