"""Export a CLIP-family model as an open_clip local directory: ``open_clip_config.json`` + weights.

The result loads with ``open_clip.create_model_and_transforms("local-dir:DIR")`` (open_clip >= 2.30, where
``factory.py`` reads ``open_clip_config.json``'s ``model_cfg`` and ``preprocess_cfg`` and picks
``open_clip_model.safetensors`` first among the weight files) and ``open_clip.get_tokenizer("local-dir:DIR")``,
whose CLIP tokenizer takes ``text_cfg.context_length`` (248 for Long-CLIP).

open_clip's built-in ``CLIP`` class names its tensors as OpenAI's CLIP does (``visual.conv1.weight``,
``transformer.resblocks.0.attn.in_proj_weight``, ``text_projection``, ...; its causal ``attn_mask`` is a
non-persistent buffer), so the weights are ``checkpoints.convert.hf_to_openai``'s output. Its config fields are
those of ``CLIPVisionCfg`` / ``CLIPTextCfg`` in open_clip's ``model.py``: vision heads are ``width // head_width``,
MLP widths ``width * mlp_ratio``, and ``quick_gelu`` applies to both towers.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
_ACTIVATIONS = {"quick_gelu": True, "gelu": False}
_OPEN_CLIP_LAYER_NORM_EPS = 1e-5  # open_clip's LayerNorm is torch's default


def _clip_of(model: Any):
    """The transformers ``CLIPModel`` inside a CLIP-family model, or a clear error."""
    from transformers import CLIPModel

    clip = getattr(model, "clip", model)
    if not isinstance(clip, CLIPModel):
        family = getattr(model, "family", type(model).__name__)
        raise ValueError(
            f"open_clip export takes a CLIP-family model (a transformers CLIPModel inside); {family} has another "
            "text encoder, which open_clip's built-in CLIP cannot hold"
        )
    return clip


def open_clip_config(model: Any) -> dict[str, Any]:
    """The ``open_clip_config.json`` content for ``model``: ``model_cfg`` and ``preprocess_cfg``.

    Raises:
        ValueError: The model uses something open_clip's built-in CLIP cannot express (an activation other than
            GELU / quick GELU, differing activations in the towers, layer-norm epsilon other than 1e-5).
    """
    config = _clip_of(model).config
    text, vision = config.text_config, config.vision_config
    activations = {text.hidden_act, vision.hidden_act}
    if len(activations) != 1 or not activations <= set(_ACTIVATIONS):
        raise ValueError(
            f"open_clip's CLIP uses one activation (gelu or quick_gelu) in both towers; this model has text "
            f"{text.hidden_act!r} and vision {vision.hidden_act!r}"
        )
    for name, tower in (("text", text), ("vision", vision)):
        if abs(tower.layer_norm_eps - _OPEN_CLIP_LAYER_NORM_EPS) > 1e-12:
            raise ValueError(f"the {name} tower's layer_norm_eps is {tower.layer_norm_eps}; open_clip uses 1e-5")
        if tower.hidden_size % tower.num_attention_heads:
            raise ValueError(f"the {name} tower's width {tower.hidden_size} is not divisible by its heads")
    processor = model.image_transform.image_processor
    return {
        "model_cfg": {
            "embed_dim": config.projection_dim,
            "quick_gelu": _ACTIVATIONS[text.hidden_act],
            "vision_cfg": {
                "image_size": vision.image_size,
                "layers": vision.num_hidden_layers,
                "width": vision.hidden_size,
                "head_width": vision.hidden_size // vision.num_attention_heads,
                "mlp_ratio": vision.intermediate_size / vision.hidden_size,
                "patch_size": vision.patch_size,
            },
            "text_cfg": {
                "context_length": text.max_position_embeddings,
                "vocab_size": text.vocab_size,
                "width": text.hidden_size,
                "heads": text.num_attention_heads,
                "layers": text.num_hidden_layers,
                "mlp_ratio": text.intermediate_size / text.hidden_size,
            },
        },
        "preprocess_cfg": {
            "size": model.image_transform.image_size,
            "mode": "RGB",
            "mean": [float(v) for v in processor.image_mean],
            "std": [float(v) for v in processor.image_std],
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


def open_clip_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The model's weights in open_clip's (= OpenAI's) key layout, contiguous, on the CPU."""
    from ..checkpoints.convert import hf_to_openai

    clip = _clip_of(model)
    state = hf_to_openai({k: v.detach().cpu() for k, v in clip.state_dict().items()}, clip.config)
    state.pop("positional_embedding_res", None)
    return {k: v.contiguous() for k, v in state.items()}


def export_open_clip(model: Any, directory: str | os.PathLike) -> Path:
    """Write ``open_clip_config.json`` and ``open_clip_model.safetensors`` for ``open_clip``'s ``local-dir:``.

    Args:
        model: A CLIP-family model (``longclip.load``).
        directory: The output directory (created).
    """
    from safetensors.torch import save_file

    from ..atomic import atomic_file

    config = open_clip_config(model)  # validates before anything is written
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(directory / WEIGHTS_FILE) as temporary:  # safetensors alone would write it 0600
        save_file(open_clip_state_dict(model), str(temporary), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    logger.info("wrote an open_clip directory to %s (load it with 'local-dir:%s')", directory, directory)
    return directory
