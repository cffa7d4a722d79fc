"""What every ``longclip`` command shares: flags, output settings, model loading and small input helpers.

Command modules build their parsers with :func:`add_command` (which adds ``--debug``/``-v``/``-q`` and the help
formatter) and take ``--model``/``--device``/``--dtype``/``--layout`` from :func:`add_model_flags` (a command that
names its checkpoint positionally adds :func:`add_layout_flag`); the library does the work.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..images import IMAGE_EXTENSIONS

logger = logging.getLogger("longclip.cli")

PROG = "longclip"
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


class CommandParser(argparse.ArgumentParser):
    """A subcommand parser whose flags may depend on the command line (``train --method NAME`` adds NAME's).

    Functions given to :meth:`before_parse` run once, with the parser and the subcommand's arguments, just before
    they are parsed (``--help`` included), so a command that is not run never pays for building its flags.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._before_parse: list[Callable[[argparse.ArgumentParser, list[str]], None]] = []

    def before_parse(self, hook: Callable[[argparse.ArgumentParser, list[str]], None]) -> None:
        """Call ``hook(parser, args)`` before this parser parses ``args``."""
        self._before_parse.append(hook)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # noqa: D102
        hooks, self._before_parse = self._before_parse, []
        given = list(sys.argv[1:] if args is None else args)
        for hook in hooks:
            hook(self, given)
        return super().parse_known_args(given, namespace)


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


# What --device accepts, the same in every command: auto (CUDA when available, else the CPU) or a torch device.
DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps, xpu or xpu:N"
DEVICE_HELP = f"where to run: {DEVICE_FORMS} (default: auto, CUDA when available, else the CPU)"
_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def device_arg(value: str) -> str:
    """argparse type of --device: checked when parsing, so a typo stops before anything is loaded."""
    device = value.strip().lower()
    if not _DEVICE_PATTERN.fullmatch(device):
        raise argparse.ArgumentTypeError(f"unknown device {value!r}; expected {DEVICE_FORMS}")
    return device


def resolve_device(value: str | None) -> str:
    """The device --device names: ``auto`` (or None) is CUDA when available (under torchrun each rank its own GPU,
    ``cuda:LOCAL_RANK``), else the CPU."""
    if value in (None, "auto"):
        import torch

        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"
    return value


def add_layout_flag(parser: argparse.ArgumentParser) -> None:
    """--layout NAME: read a checkpoint file in a registered layout instead of detecting it from its keys.

    Checked when the checkpoint is read (``checkpoints.layout_named``), not here, so ``--help`` imports nothing.
    """
    parser.add_argument(
        "--layout",
        default=None,
        metavar="NAME",
        help="read a checkpoint file in this registered layout instead of detecting it from its tensor names, for "
        "files whose names fit two layouts (a TULIP stage-2 .pt that keeps CLIP's position table: tulip-open_clip); "
        "an unknown name lists the registered ones",
    )


def add_model_flags(parser: argparse.ArgumentParser, required: bool = True, batch_size: int | None = None) -> None:
    """--model, --device, --dtype, --revision, --layout and --batch-size."""
    parser.add_argument(
        "--model",
        "-m",
        required=required,
        metavar="M",
        help="checkpoint: Long-CLIP or OpenAI .pt file, transformers directory, or hub id (BeichenZhang/LongCLIP-B)",
    )
    parser.add_argument("--device", type=device_arg, default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--dtype",
        choices=("auto", *DTYPES),
        default="auto",
        help="weight dtype (default auto: bfloat16 where the hardware computes it natively, float16 on older CUDA "
        "GPUs, float32 otherwise; longclip info says which and why)",
    )
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit), for hub ids")
    add_layout_flag(parser)
    parser.add_argument(
        "--batch-size", type=positive_int, default=batch_size, metavar="N", help="inputs per forward pass"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the image tower with torch.compile: faster when embedding many images, after a first batch "
        "that compiles (a minute or more; needs a C++ compiler on the CPU)",
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
    """Logging at WARNING (INFO with -v, ERROR with -q); transformers' own warnings and progress bars silenced, and
    with -q the library's bars too (training, benchmark, embedding).

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
        with library_progress(not args.quiet):
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


# The library modules that draw tqdm bars: the training loop, the synthetic benchmark's rendering, batched embedding.
_BAR_MODULES = ("longclip.train.trainer", "longclip.data.synthetic", "longclip.models.base")


@contextlib.contextmanager
def library_progress(enabled: bool) -> Iterator[None]:
    """The library's progress bars on or off (``-q``), put back afterwards.

    The training loop builds its bar with ``tqdm(..., disable=not is_main)``; an explicit ``disable`` wins over
    tqdm's ``TQDM_DISABLE`` variable, so the bar class each module uses is swapped for one that stays off.
    """
    if enabled:
        yield
        return
    import importlib
    from functools import partial

    modules = [importlib.import_module(name) for name in _BAR_MODULES]
    saved = [module.tqdm for module in modules]
    for module, bar_class in zip(modules, saved, strict=True):
        module.tqdm = partial(_silent_tqdm, bar_class)
    try:
        yield
    finally:
        for module, bar_class in zip(modules, saved, strict=True):
            module.tqdm = bar_class


def _silent_tqdm(bar_class: Any, *args: Any, **kwargs: Any) -> Any:
    return bar_class(*args, **{**kwargs, "disable": True})


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


def is_main_process() -> bool:
    """False on every process but the first under torchrun (which sets RANK), so that one status line is printed."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def status(args: argparse.Namespace, message: str) -> None:
    """A status line for the user (what was written), unless --quiet or on a torchrun process other than rank 0."""
    if not args.quiet and is_main_process():
        print(message)


def error_message(error: BaseException) -> str | None:
    """The one-line message for an error the user can cause (bad input, a file we cannot read), else None.

    None means a bug: ``main`` then lets the traceback through.
    """
    import csv
    import pickle
    import tarfile

    from ..errors import CheckpointError
    from ..images import ImageLoadError

    if isinstance(error, (CheckpointError, ImageLoadError)):
        return one_line(error)
    if isinstance(error, pickle.UnpicklingError):
        # torch's message advises weights_only=False, i.e. running code from the file: we never do that.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f" (it refers to {found.group(1)})" if found else ""
        return (
            f"cannot read the file as a checkpoint: it is not a plain tensor pickle{what}; longclip loads weights "
            "only and never runs code stored in a file (convert it to safetensors with the tool that wrote it)"
        )
    if isinstance(error, tarfile.ReadError):
        return f"cannot read a tar shard: {one_line(error)}"
    if isinstance(error, csv.Error):
        return f"malformed CSV: {one_line(error)}"
    if isinstance(error, RecursionError):
        return "the input is nested too deeply to read (Python's recursion limit was reached)"
    if isinstance(error, MemoryError):
        return "out of memory; try a smaller --batch-size or fewer inputs at once"
    if type(error).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
        return f"out of GPU memory; try a smaller --batch-size ({one_line(error).split('.')[0]})"
    if type(error).__name__ == "SafetensorError":
        return f"cannot read a safetensors file: {one_line(error)}"
    if type(error).__name__ == "TrainingError":
        return f"training stopped: {one_line(error)}"
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text: {one_line(error)}"
    if isinstance(error, ValueError) and type(error).__name__ == "JSONDecodeError":
        return f"invalid JSON: {one_line(error)}"
    if isinstance(error, PermissionError):
        return f"permission denied: {error.filename}" if error.filename else one_line(error)
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.strerror}: {error.filename}"
    if isinstance(error, (OSError, ValueError)):
        return one_line(error)
    return None


def plural(n: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- model and inputs ------------------------------------------------------------------------------------------------


def load_model(args: argparse.Namespace) -> Any:
    """The model named by --model (read in --layout, if given) on --device in --dtype, through ``longclip.load``."""
    import torch

    from ..api import load

    device = torch.device(resolve_device(args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    logger.info("loading %s on %s", args.model, device)
    model, _ = load(args.model, device=device, dtype=args.dtype, revision=args.revision, layout=args.layout)
    if getattr(args, "compile", False):
        model.compile_towers(("vision",))
    return model


def note_long_texts(model: Any, texts: list[str], mode: str) -> None:
    """Warn when texts will be truncated (the default), since the end of a long label then does not count."""
    if mode != "truncate":
        return
    long = sum(len(ids) > model.context_length for ids in model.tokenizer.encode(texts))  # the protocol's own
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
