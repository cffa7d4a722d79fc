"""``longclip convert``: rewrite a checkpoint as a transformers directory or the released Long-CLIP .pt."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import DTYPES, add_command, add_layout_flag, status

EPILOG = """\
examples:
  # released Long-CLIP checkpoint -> transformers directory (CLIPModel.from_pretrained reads it)
  longclip convert longclip-B.pt longclip-B-hf/
  # the same in half precision
  longclip convert longclip-B.pt longclip-B-hf16/ --dtype float16
  # transformers directory -> the released .pt format, for tools that only read that
  longclip convert longclip-B-hf/ longclip-B-again.pt --to longclip-pt

SRC may be any format `longclip info` reads, including a hub id. DST must not exist or be empty unless
--overwrite is given (files of the same name are then replaced; other files in a DST directory are left alone).
"""


def register(commands: Any) -> None:
    """Add the ``convert`` subcommand."""
    parser = add_command(
        commands,
        "convert",
        help="convert a checkpoint to a transformers directory or the released Long-CLIP .pt",
        description="Load a CLIP / Long-CLIP checkpoint in any supported format and write it as a transformers "
        "directory (default) or as a released-format Long-CLIP .pt file.",
        epilog=EPILOG,
    )
    parser.add_argument("src", metavar="SRC", help="checkpoint to read: .pt file, transformers directory or hub id")
    parser.add_argument("dst", metavar="DST", help="output: a directory (--to hf) or a file (--to longclip-pt)")
    parser.add_argument(
        "--to",
        choices=("hf", "longclip-pt"),
        default="hf",
        help="output format: hf, a transformers directory (default); longclip-pt, the released .pt layout",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit), for hub ids")
    parser.add_argument("--overwrite", action="store_true", help="write even if DST exists and is not empty")
    add_layout_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` to ``args.dst``."""
    import torch

    from ..checkpoints import LoadedCheckpoint, read_checkpoint, save_longclip_pt
    from ..models import LongCLIPModel, build_model

    dst = Path(args.dst).expanduser()
    check_destination(dst, to_file=args.to == "longclip-pt", overwrite=args.overwrite)
    source = read_checkpoint(args.src, args.revision, layout=args.layout)
    model = build_model(source)
    dtype = getattr(torch, args.dtype)
    if not isinstance(model, LongCLIPModel):  # another family (TULIP, ...): its own save_pretrained
        if args.to == "longclip-pt":
            raise ValueError(f"{args.src} is a {model.family!r} model; --to longclip-pt writes CLIP's layout only")
        model.to(dtype).save_pretrained(dst)
        parameters = sum(p.numel() for p in model.parameters())
        status(
            args,
            f"wrote {model.family} directory {dst} from {source.format} checkpoint {source.path} "
            f"({args.dtype}, {parameters:,} parameters, text context {model.context_length})",
        )
        return 0
    checkpoint = LoadedCheckpoint(model.clip, source.format, source.path, source.directory, source.stored_dtypes)
    clip = checkpoint.model.to(dtype)
    context = clip.config.text_config.max_position_embeddings
    if args.to == "longclip-pt":
        dst.parent.mkdir(parents=True, exist_ok=True)
        save_longclip_pt(clip, dst)
        what = "Long-CLIP .pt file"
    else:
        LongCLIPModel.from_checkpoint(checkpoint).save_pretrained(dst)
        what = "transformers directory"
    parameters = sum(p.numel() for p in clip.parameters())
    status(
        args,
        f"wrote {what} {dst} from {checkpoint.format} checkpoint {checkpoint.path} "
        f"({args.dtype}, {parameters:,} parameters, text context {context})",
    )
    return 0


def check_destination(dst: Path, to_file: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing, non-empty destination unless asked to."""
    if to_file:
        if dst.is_dir():
            raise IsADirectoryError(f"{dst} is a directory; --to longclip-pt writes a single file")
        if dst.exists() and dst.stat().st_size > 0 and not overwrite:
            raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
        return
    if dst.exists() and not dst.is_dir():
        raise NotADirectoryError(f"{dst} is a file; --to hf writes a directory (use --to longclip-pt for a .pt file)")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} is not empty; pass --overwrite to write into it")
