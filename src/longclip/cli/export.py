"""``longclip export FORMAT MODEL DIR``: write a model in another tool's format.

Formats are sub-commands. Each is a function that takes the formats' sub-parsers object, adds its parser (with
``common.add_command``) and sets ``func``; ``FORMATS`` lists them as ``"module:function"`` (imported when the
parser is built), one line per format.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from .common import add_command, add_layout_flag

FORMATS = (
    "longclip.cli.export:add_onnx",
    "longclip.cli.export:add_open_clip",
    "longclip.cli.generate:register_export_text_encoder",
)


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "export",
        help="export a model to ONNX, open_clip, ...",
        description="Write a model in another tool's format.",
    )
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for entry in FORMATS:
        module, function = entry.split(":")
        getattr(importlib.import_module(module), function)(formats)


def add_onnx(formats: Any) -> None:
    parser = add_command(
        formats,
        "onnx",
        help="text and vision towers as ONNX models, with tokenizer and preprocessing files",
        description="Export the text and vision towers as ONNX (dynamic batch and sequence axes), check "
        "onnxruntime against PyTorch, and write the tokenizer and preprocessing files. The directory loads with "
        "longclip.integrations.onnx_export.load_onnx and works as --model for index/search/serve.",
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint: .pt file, directory or hub id")
    parser.add_argument("directory", metavar="DIR", help="output directory")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    add_layout_flag(parser)
    parser.set_defaults(func=run_onnx)


def run_onnx(args: argparse.Namespace) -> int:
    from ..api import load
    from ..integrations.onnx_export import export_onnx

    model, _ = load(args.model, dtype="float32", layout=args.layout)
    directory = export_onnx(model, args.directory, opset=args.opset)
    print(f"wrote {directory}: text.onnx, vision.onnx (onnxruntime matches PyTorch within 1e-4)")
    return 0


def add_open_clip(formats: Any) -> None:
    parser = add_command(
        formats,
        "open_clip",
        help="open_clip_config.json + weights that open_clip loads with 'local-dir:DIR'",
        description="Write open_clip_config.json and open_clip_model.safetensors, for "
        "open_clip.create_model_and_transforms('local-dir:DIR') and open_clip.get_tokenizer('local-dir:DIR').",
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint of the CLIP family: .pt file, directory or hub id")
    parser.add_argument("directory", metavar="DIR", help="output directory")
    add_layout_flag(parser)
    parser.set_defaults(func=run_open_clip)


def run_open_clip(args: argparse.Namespace) -> int:
    from ..api import load
    from ..integrations.open_clip_export import export_open_clip

    model, _ = load(args.model, dtype="float32", layout=args.layout)
    directory = export_open_clip(model, args.directory)
    print(f"wrote {directory}: open_clip_config.json, open_clip_model.safetensors (load with 'local-dir:{directory}')")
    return 0
