"""What every ``longclip`` command shares: flags, output settings, model loading and small input helpers.

Command modules build their parsers with :func:`add_command` (which adds ``--debug``/``-v``/``-q`` and the help
formatter) and take ``--model``/``--device``/``--dtype`` from :func:`add_model_flags`; the library does the work.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("longclip.cli")

PROG = "longclip"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DTYPES = ("float32", "float16", "bfloat16")
LONG_TEXT_MODES = ("truncate", "chunk", "error")
FORMATTER = argparse.RawDescriptionHelpFormatter


# --- parsers ---------------------------------------------------------------------------------------------------------


def add_output_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--debug, -v and -q: accepted both before and after the subcommand.

    The subcommand copies default to SUPPRESS, so that ``longclip --debug info X`` is not undone by the subcommand
    parser writing its own ``debug=False`` over the main parser's value.
    """
    default = argparse.SUPPRESS if suppress else False
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show full tracebacks instead of one-line error messages"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log progress information (INFO level)"
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="print only results and errors: no progress bars, warnings or status lines",
    )


_SHARED = argparse.ArgumentParser(add_help=False)
add_output_flags(_SHARED, suppress=True)


def add_command(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser with the shared output flags and the help formatter that keeps the examples' layout."""
    return commands.add_parser(name, parents=[_SHARED], formatter_class=FORMATTER, **kwargs)


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def add_model_flags(parser: argparse.ArgumentParser, required: bool = True, batch_size: int | None = None) -> None:
    """--model, --device, --dtype, --revision and --batch-size."""
    parser.add_argument(
        "--model",
        "-m",
        required=required,
        metavar="M",
        help="checkpoint: Long-CLIP or OpenAI .pt file, transformers directory, or hub id (BeichenZhang/LongCLIP-B)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="weight dtype (default: float32 on the CPU, float16 on CUDA)",
    )
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit), for hub ids")
    parser.add_argument(
        "--batch-size", type=positive_int, default=batch_size, metavar="N", help="inputs per forward pass"
    )


def add_long_texts_flag(parser: argparse.ArgumentParser) -> None:
    """--long-texts truncate|chunk|error."""
    parser.add_argument(
        "--long-texts",
        choices=LONG_TEXT_MODES,
        default="truncate",
        help="texts longer than the model's context: truncate them (default), embed them in chunks and average, "
        "or stop with an error",
    )


# --- output ----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def output_settings(args: argparse.Namespace) -> Iterator[None]:
    """Logging at WARNING (INFO with -v, ERROR with -q); transformers' own warnings and progress bars silenced.

    Everything is put back afterwards, so calling ``main`` from Python (tests, notebooks) leaves no global trace.
    """
    import huggingface_hub
    import transformers

    hf_logging = transformers.utils.logging
    level = logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    root, package = logging.getLogger(), logging.getLogger("longclip")
    saved_root = (root.level, list(root.handlers))
    saved_package_level = package.level
    saved_verbosity, saved_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    saved_hub_bars = huggingface_hub.utils.are_progress_bars_disabled()

    logging.basicConfig(level=level, format=f"{PROG}: %(levelname)s: %(message)s")  # no-op if already configured
    package.setLevel(level)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.quiet:
        huggingface_hub.utils.disable_progress_bars()
    try:
        yield
    finally:
        package.setLevel(saved_package_level)
        for handler in [h for h in root.handlers if h not in saved_root[1]]:
            root.removeHandler(handler)
        root.setLevel(saved_root[0])
        hf_logging.set_verbosity(saved_verbosity)
        if saved_bars:
            hf_logging.enable_progress_bar()
        if not saved_hub_bars:
            huggingface_hub.utils.enable_progress_bars()


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its class name when it has none)."""
    message = " ".join(str(error).split())
    return message or type(error).__name__


def silence_stdout() -> None:
    """Point stdout at /dev/null (after a broken pipe, so that Python's exit flush does not complain)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        pass


def status(args: argparse.Namespace, message: str) -> None:
    """A status line for the user (what was written), unless --quiet."""
    if not args.quiet:
        print(message)


def plural(n: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- model and inputs ------------------------------------------------------------------------------------------------


def load_model(args: argparse.Namespace) -> Any:
    """The model named by --model on --device in --dtype, through ``longclip.load``."""
    import torch

    from ..api import load

    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ValueError(f"--device {args.device!r} is not a torch device: {one_line(e)}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    logger.info("loading %s on %s", args.model, device)
    model, _ = load(args.model, device=device, dtype=args.dtype, revision=args.revision)
    return model


def note_long_texts(model: Any, texts: list[str], mode: str) -> None:
    """Warn when texts will be truncated (the default), since the end of a long label then does not count."""
    if mode != "truncate":
        return
    long = sum(n > model.context_length for n in model.tokenizer.count_tokens(texts))
    if long:
        logger.warning(
            "%d of %d texts are longer than the model's %d-token context and were truncated "
            "(--long-texts chunk reads them whole)",
            long,
            len(texts),
            model.context_length,
        )


def read_lines(path: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file, stripped."""
    with open(Path(path).expanduser(), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def expand_images(paths: Sequence[str]) -> list[str]:
    """Paths as given, with each directory replaced by the image files in it (sorted, non-recursive)."""
    images: list[str] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.is_dir():
            images.append(str(path))
            continue
        found = sorted(
            p
            for p in path.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
        if not found:
            raise FileNotFoundError(
                f"{given} is a directory without image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        images.extend(str(p) for p in found)
    return images


def check_images_exist(paths: Sequence[str]) -> None:
    """Fail before loading the model when an image file is missing."""
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such image file: {path}")
