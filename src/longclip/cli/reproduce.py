"""``longclip reproduce``: Long-CLIP's experiment in miniature, offline on a CPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import DEVICE_HELP, add_command, device_arg, resolve_device, status

EPILOG = """\
examples:
  longclip reproduce                     # every row: 14 min 14 s on 2 CPU cores (AMD EPYC, float32)
  longclip reproduce --quick -o /tmp/rq  # under a minute, same steps at toy sizes

OUTPUT receives data/ (the benchmark), clip77/ (the pre-trained 77-token CLIP, reused by later runs with the same
settings and usable with --model elsewhere), one directory per fine-tuned variant, results.json, results.md and
effective_length*.png.
"""


def register(commands: Any) -> None:
    """Add the ``reproduce`` subcommand."""
    parser = add_command(
        commands,
        "reproduce",
        help="Long-CLIP, TULIP and LLM2CLIP in miniature, offline on a CPU (the package's main demonstration)",
        description="Generate a synthetic long-caption benchmark, pre-train a small CLIP at 77 tokens, fine-tune it "
        "with linear stretching, knowledge-preserving stretching, and Long-CLIP's primary component matching; train "
        "TULIP's two stages from it and, where the packaged MiniLM is installed, an LLM2CLIP adapter; compare them "
        "all on long-caption retrieval, short-caption retrieval, attribute classification and the effective-length "
        "curve. Nothing is downloaded.",
        epilog=EPILOG,
    )
    parser.add_argument("--output", "-o", default="runs/reproduce", help="run directory (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the same pipeline in seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default: 0)")
    parser.add_argument("--device", type=device_arg, default="auto", help=DEVICE_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its results table."""
    from ..reproduce import reproduce

    reproduce(
        args.output, quick=args.quick, seed=args.seed, device=resolve_device(args.device), progress=not args.quiet
    )
    print((Path(args.output) / "results.md").read_text(), end="")
    seconds = json.loads((Path(args.output) / "results.json").read_text())["seconds"]
    minutes, rest = divmod(round(seconds), 60)
    took = f"{minutes} min {rest} s" if minutes else f"{rest} s"
    status(args, f"took {took}; results, models and plots in {args.output}")
    return 0
