"""``longclip train``: fine-tune a CLIP into a Long-CLIP (one process, or several under torchrun)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_command, status

EPILOG = """\
examples:
  # stretch OpenAI's ViT-B/16 to 248 tokens and fine-tune on ShareGPT4V, holding out ShareGPT4V-1k
  longclip train --model openai/clip-vit-base-patch16 --data share-captioner_coco_lcs_sam_1246k_1107.json \\
      --image-root data/ --output runs/longclip-b16 --val-rows 1000
  # a CSV of image,caption[,short_caption] on the CPU, with bf16 autocast
  longclip train --model longclip-B.pt --data pairs.csv --output runs/mine --batch-size 16 --precision bf16
  # 8 GPUs; webdataset shards streamed
  torchrun --nproc_per_node 8 -m longclip.cli train --model openai/clip-vit-large-patch14 \\
      --data "shards/train-{0000..0999}.tar" --samples-per-epoch 1200000 --output runs/longclip-l14
  # continue an interrupted run where it stopped
  longclip train ... --output runs/mine --resume auto

OUTPUT receives config.json, metrics.jsonl, checkpoints/step-*/ (every --save-every steps) and, when the run is
complete, model/ (a transformers directory `longclip.load` reads) and longclip.pt with --save-pt.
"""


def register(commands: Any) -> None:
    """Add the ``train`` subcommand."""
    parser = add_command(
        commands,
        "train",
        help="fine-tune a CLIP into a Long-CLIP (or continue one) on image / long-caption pairs",
        description="Fine-tune with Long-CLIP's recipe: knowledge-preserving stretching to 248 positions, then "
        "long captions matched with image features and short captions with their principal components. "
        "Runs on one device as it is, on many under torchrun.",
        epilog=EPILOG,
    )
    add_train_flags(parser)
    parser.set_defaults(func=run)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One option per ``TrainConfig`` field, with its default and help text (the defaults live only there)."""
    import dataclasses
    import typing

    from ..train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        required = field.name in ("model", "data", "output")
        kind = hints[field.name]
        help_text = field.metadata["help"] + (
            "" if required or field.default is None else f" (default: {field.default})"
        )
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        convert = base if base in (int, float) else str
        choices = field.metadata.get("choices")
        parser.add_argument(
            flag, type=convert, default=field.default, required=required, choices=choices, help=help_text
        )


def run(args: argparse.Namespace) -> int:
    """Train with the settings given on the command line."""
    import dataclasses

    from ..train import TrainConfig, train

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    summary = train(config)
    if summary["finished"]:
        status(args, f"trained {summary['step']} steps; model written to {summary.get('model', config.output)}")
    else:
        status(args, f"stopped after step {summary['step']} of {summary['total_steps']}; continue with --resume auto")
    return 0
