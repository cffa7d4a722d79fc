"""``longclip info``: a checkpoint's format, architecture, Long-CLIP position rows, size and stored dtype."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import add_command, add_layout_flag

EPILOG = """\
examples:
  longclip info longclip-B.pt
  longclip info BeichenZhang/LongCLIP-L --json
  longclip info ./my-finetuned-clip/

Shows the checkpoint format (longclip-pt: released Long-CLIP .pt; openai: OpenAI CLIP .pt; hf: transformers
directory), the architecture of both towers, the Long-CLIP kept position rows if recorded, parameter counts and
the dtype of the stored weights.
"""

_FORMATS = {
    "longclip-pt": "longclip-pt (released Long-CLIP .pt)",
    "openai": "openai (OpenAI CLIP .pt)",
    "hf": "hf (transformers directory)",
    "tulip-open_clip": "tulip-open_clip (released TULIP open_clip .pt)",
}


def register(commands: Any) -> None:
    """Add the ``info`` subcommand."""
    parser = add_command(
        commands,
        "info",
        help="show a checkpoint's format, architecture and size",
        description="Describe a checkpoint: format, architecture, Long-CLIP position rows, parameters, dtype.",
        epilog=EPILOG,
    )
    parser.add_argument("ckpt", metavar="CKPT", help=".pt file, transformers directory or hub id")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit), for hub ids")
    add_layout_flag(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the description of ``args.ckpt``."""
    from ..checkpoints import LoadedCheckpoint, read_checkpoint
    from ..models import LongCLIPModel, build_model

    source = read_checkpoint(args.ckpt, args.revision, layout=args.layout)
    model = build_model(source)
    if not isinstance(model, LongCLIPModel):
        return _describe_family(args, source, model)
    checkpoint = LoadedCheckpoint(model.clip, source.format, source.path, source.directory, source.stored_dtypes)
    config = checkpoint.model.config
    text, vision = config.text_config, config.vision_config
    counts = {"text": 0, "vision": 0, "total": 0}
    for name, parameter in checkpoint.model.named_parameters():
        counts["total"] += parameter.numel()
        if name.startswith(("text_model.", "text_projection.")):
            counts["text"] += parameter.numel()
        elif name.startswith(("vision_model.", "visual_projection.")):
            counts["vision"] += parameter.numel()
    info = {
        "path": str(checkpoint.path),
        "format": checkpoint.format,
        "text": {
            "layers": text.num_hidden_layers,
            "width": text.hidden_size,
            "heads": text.num_attention_heads,
            "mlp_width": text.intermediate_size,
            "context_length": text.max_position_embeddings,
            "vocab_size": text.vocab_size,
        },
        "vision": {
            "layers": vision.num_hidden_layers,
            "width": vision.hidden_size,
            "heads": vision.num_attention_heads,
            "mlp_width": vision.intermediate_size,
            "patch_size": vision.patch_size,
            "image_size": vision.image_size,
        },
        "embed_dim": config.projection_dim,
        "keep_rows": checkpoint.keep_rows,
        "parameters": counts,
        "stored_dtype": ", ".join(checkpoint.stored_dtypes) or None,
        "auto_dtype": _auto_dtype(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0

    t, v = info["text"], info["vision"]
    if checkpoint.keep_rows is None:
        rows = "none recorded" + (" (CLIP's 77-token context)" if t["context_length"] == 77 else "")
    elif checkpoint.keep_rows == 0:
        rows = "0 (linearly stretched position table)"
    else:
        rows = f"{checkpoint.keep_rows} (leading position rows kept from CLIP)"
    lines = [
        ("checkpoint", info["path"]),
        ("format", _FORMATS.get(checkpoint.format, checkpoint.format)),
        (
            "text tower",
            f"{t['layers']} layers, width {t['width']}, {t['heads']} heads, context {t['context_length']} tokens, "
            f"vocabulary {t['vocab_size']}",
        ),
        (
            "vision tower",
            f"{v['layers']} layers, width {v['width']}, {v['heads']} heads, patch {v['patch_size']}, "
            f"image {v['image_size']}x{v['image_size']}",
        ),
        ("embed dim", str(info["embed_dim"])),
        ("Long-CLIP kept rows", rows),
        (
            "parameters",
            f"{_count(counts['text'])} text, {_count(counts['vision'])} vision, {_count(counts['total'])} total "
            f"({counts['total']:,})",
        ),
        ("stored dtype", info["stored_dtype"] or "unknown"),
        ("dtype auto here", "{dtype} ({reason})".format(**info["auto_dtype"])),
    ]
    width = max(len(key) for key, _ in lines) + 1
    for key, value in lines:
        print(f"{key + ':':<{width}} {value}")
    return 0


def _auto_dtype() -> dict[str, str]:
    """What ``dtype="auto"`` loads this model in on this machine (its default device), and why."""
    import torch

    from ..precision import choose_dtype

    choice = choose_dtype("cuda" if torch.cuda.is_available() else "cpu")
    return {"dtype": choice.name, "reason": choice.reason}


def _describe_family(args: argparse.Namespace, source: Any, model: Any) -> int:
    """Another family's model (TULIP, ...): its family, format, context, parameters per tower and text config."""
    towers = model.towers().items()
    counts = {tower: sum(p.numel() for m in modules for p in m.parameters()) for tower, modules in towers}
    counts["total"] = sum(p.numel() for p in model.parameters())
    info = {
        "path": str(source.path),
        "format": source.format,
        "family": model.family,
        "context_length": model.context_length,
        "embed_dim": model.embed_dim,
        "text": source.config.get("text_config"),
        "parameters": counts,
        "stored_dtype": ", ".join(source.stored_dtypes) or None,
        "auto_dtype": _auto_dtype(),
    }
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    text = info["text"] if isinstance(info["text"], dict) else {}
    lines = [
        ("checkpoint", info["path"]),
        ("format", _FORMATS.get(source.format, source.format)),
        ("family", model.family),
        ("context", f"{model.context_length} tokens"),
        ("embed dim", str(model.embed_dim)),
        *((key.replace("_", " "), str(value)) for key, value in text.items() if key != "context_length"),
        ("parameters", ", ".join(f"{_count(n)} {tower}" for tower, n in counts.items()) + f" ({counts['total']:,})"),
        ("stored dtype", info["stored_dtype"] or "unknown"),
        ("dtype auto here", "{dtype} ({reason})".format(**info["auto_dtype"])),
    ]
    width = max(len(key) for key, _ in lines) + 1
    for key, value in lines:
        print(f"{key + ':':<{width}} {value}")
    return 0


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
