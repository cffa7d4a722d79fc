"""``longclip train``: train with a method (``--method``; one process, or several under torchrun)."""

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
    """Add the ``train`` subcommand, with the flags of the method named by ``--method`` (default: longclip)."""
    parser = add_command(
        commands,
        "train",
        help="train on image / caption pairs with a method (default: Long-CLIP's fine-tuning recipe)",
        description="Train with a method (--method; `longclip train --method NAME --help` lists its own options). "
        "The default, longclip, is Long-CLIP's recipe: knowledge-preserving stretching to 248 positions, then long "
        "captions matched with image features and short captions with their principal components. Runs on one "
        "device as it is, on many under torchrun.",
        epilog=EPILOG,
    )
    argv = getattr(commands, "argv", ())
    if "train" in argv:  # importing the methods costs a torch import: only when training
        from ..train.options import add_train_arguments, method_from_argv

        add_train_arguments(parser, method_from_argv(argv))
    else:
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train with the settings given on the command line."""
    from ..train import train
    from ..train.options import config_from_args

    config, options = config_from_args(args)
    summary = train(config, options)
    if summary["finished"]:
        status(args, f"trained {summary['step']} steps; model written to {summary.get('model', config.output)}")
    else:
        status(args, f"stopped after step {summary['step']} of {summary['total_steps']}; continue with --resume auto")
    return 0
