"""The ``longclip`` command: inspect, convert, classify, embed, fine-tune, evaluate, and the offline benchmark.

Subcommands::

    longclip convert SRC DST [--to hf|longclip-pt] [--dtype ...] [--overwrite]
    longclip classify IMAGE... --model M --label TEXT [--label TEXT ...] [--labels-file FILE] [--top K] [--json]
    longclip embed --model M (--images PATH... | --images-from FILE | --texts TEXT... | --texts-from FILE)
                   --output OUT.npy
    longclip info CKPT [--json]
    longclip train --model M --data D --output OUT [options]      (under torchrun for several processes)
    longclip eval --model M --dataset NAME[=DIR] ... [--output results.json] | --list
    longclip reproduce [--output DIR] [--quick]
    longclip index IMAGE_DIR --model M --out INDEX [--kind auto|flat|ivf|hnsw] [--rebuild]
    longclip search INDEX TEXT | --image PATH [-k K] [--json]
    longclip serve INDEX [--port 8000] [--host 127.0.0.1]
    longclip export onnx|open_clip MODEL DIR
    longclip push MODEL REPO_ID [--dry-run]

Each command group is a module of this package exposing ``register(commands)``, which adds its sub-parser and sets
``func``; :data:`COMMANDS` lists them, one line per group. The commands only parse arguments and call the library.
Expected failures (a missing file, an unreadable checkpoint or image, a bad value) print one line
``longclip: error: ...`` to stderr and exit with status 1; ``--debug`` shows the full traceback instead. Usage
errors exit with argparse's status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .common import PROG, add_output_flags, one_line, output_settings, silence_stdout

# One line per command group, in the order `longclip --help` lists them.
COMMANDS = (
    "convert",
    "classify",
    "embed",
    "info",
    "train",
    "eval",
    "reproduce",
    "index",
    "search",
    "serve",
    "export",
    "push",
    "generate",
)

_MAIN_EPILOG = """\
examples:
  longclip info BeichenZhang/LongCLIP-B
  longclip convert longclip-B.pt longclip-B-hf/
  longclip classify cat.jpg dog.jpg --model longclip-B.pt --label "a photo of a cat" --label "a photo of a dog"
  longclip embed --model longclip-B.pt --images photos/ --output photos.npy
  longclip train --model openai/clip-vit-base-patch16 --data pairs.csv --output runs/mine
  longclip eval --model longclip-B.pt --dataset urban1k=data/Urban1k
  longclip reproduce --quick

Models are given as a released Long-CLIP .pt, an OpenAI CLIP .pt, a transformers CLIP directory or a Hugging Face
hub id (BeichenZhang/LongCLIP-B, BeichenZhang/LongCLIP-L, openai/clip-vit-base-patch16, ...). Hub ids load from the
local cache when there is no network. Run `longclip COMMAND --help` for the options of each command.
"""


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``longclip`` argument parser (exposed for documentation tools and tests).

    ``argv`` is looked at only by commands whose options depend on another option (``train --method NAME`` offers
    that method's own settings); they read it as ``commands.argv``.
    """
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Long-CLIP: CLIP models that read long text (up to 248 tokens).",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_output_flags(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.argv = tuple(argv)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``longclip`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    with output_settings(args):
        try:
            return args.func(args)
        except KeyboardInterrupt:
            if args.debug:
                raise
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # Output piped into e.g. `head`, which stopped reading: not an error worth a message.
            silence_stdout()
            return 1
        except (OSError, ValueError) as e:  # FileNotFoundError, CheckpointError, ImageLoadError, HubUnavailable...
            if args.debug:
                raise
            print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
            return 1
