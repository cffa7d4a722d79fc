"""``longclip train``: train with a method (``--method``; one process, or several under torchrun)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import DEVICE_HELP, add_command, device_arg, is_main_process, positive_int, status

_POSITIVE = ("save_every", "log_every")

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
    """Add the ``train`` subcommand; the flags of the chosen ``--method`` are added when it parses."""
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
    # Importing the methods costs a torch import: done only when `train` is what is being parsed.
    parser.before_parse(add_method_flags)
    parser.set_defaults(func=run)


def add_method_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """The common training settings and those of the ``--method`` in ``argv`` (the defaults live in the library)."""
    from ..train.options import add_train_arguments, method_from_argv

    try:
        add_train_arguments(parser, method_from_argv(argv))
    except ValueError as e:  # an unknown --method: a usage error, named with the known ones
        parser.error(str(e))
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        if action.dest == "device":  # one rule in every command, checked when parsing
            action.type, action.default, action.help = device_arg, "auto", DEVICE_HELP
        elif action.dest in _POSITIVE:  # steps between saves / logs: 0 would divide by zero deep in the loop
            action.type = positive_int


def run(args: argparse.Namespace) -> int:
    """Train with the settings given on the command line."""
    from ..train import train
    from ..train.options import config_from_args

    if args.quiet:  # -q silences the progress bar too
        args.progress = False
    if args.device == "auto":
        args.device = None  # the trainer's own rule is the same: CUDA when available (one device per torchrun rank)
    config, options = config_from_args(args)
    summary = train(config, options)
    if summary["finished"]:
        status(args, f"trained {summary['step']} steps; model written to {summary.get('model', config.output)}")
    else:
        status(args, f"stopped after step {summary['step']} of {summary['total_steps']}; continue with --resume auto")
    recall = validation_recall(summary)
    if recall and is_main_process() and not args.quiet:
        print("validation: " + ", ".join(f"{name} {100 * value:.1f}%" for name, value in recall.items()))
    return 0


def validation_recall(summary: dict[str, Any]) -> dict[str, float]:
    """The validation R@1 values of a training summary (``val/..._recall@1`` keys, or a ``validation`` dict)."""
    found = {key.removeprefix("val/"): value for key, value in summary.items() if key.startswith("val/")}
    found.update(summary.get("validation") or {})
    return {name: float(value) for name, value in found.items() if name.endswith("recall@1")}
