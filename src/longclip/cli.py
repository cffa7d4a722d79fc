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

This module only parses arguments and calls the library (``longclip.load``, ``longclip.checkpoints``); the model
logic lives there. Expected failures (a missing file, an unreadable checkpoint or image, a bad value) print one line
``longclip: error: ...`` to stderr and exit with status 1; ``--debug`` shows the full traceback instead. Usage
errors exit with argparse's status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
_LABEL_DISPLAY_CHARS = 60

# --- help texts ----------------------------------------------------------------------------------------------------

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

_CONVERT_EPILOG = """\
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

_CLASSIFY_EPILOG = """\
examples:
  longclip classify cat.jpg --model longclip-B.pt --label "a photo of a cat" --label "a photo of a dog"
  longclip classify photos/ --model BeichenZhang/LongCLIP-L --labels-file classes.txt --top 3
  longclip classify scene.png --model longclip-B.pt --labels-file descriptions.txt --long-texts chunk --json

Probabilities are softmax(logit_scale * cosine(image, label)) over the given labels, as in CLIP's zero-shot
classification. Labels may be whole paragraphs: Long-CLIP reads 248 tokens; longer labels are truncated unless
--long-texts chunk (average of the pieces) or error is given. A directory given as IMAGE stands for the image
files in it.
"""

_EMBED_EPILOG = """\
examples:
  longclip embed --model longclip-B.pt --images a.jpg b.png --output feats.npy
  longclip embed --model longclip-B.pt --images photos/ --skip-errors --output photos.npy
  longclip embed --model longclip-B.pt --images-from list.txt --output feats.npy --batch-size 64
  longclip embed --model longclip-B.pt --texts-from captions.txt --long-texts chunk --output captions.npy

Writes OUT.npy (float32, one row per input, in input order) and OUT.json beside it: model, kind, count, dim,
normalized, items (the paths or texts, in row order) and skipped (images that could not be read under
--skip-errors; their rows are NaN). A directory given to --images stands for the image files in it (sorted by
name; jpg, jpeg, png, webp, bmp, gif, tif, tiff; hidden files ignored). List files hold one path or text a line
(relative paths are taken from the current directory); empty lines are ignored.
"""

_TRAIN_EPILOG = """\
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

_REPRODUCE_EPILOG = """\
examples:
  longclip reproduce                     # about 15 minutes on 2 CPU cores
  longclip reproduce --quick -o /tmp/rq  # about a minute, same steps at toy sizes

OUTPUT receives data/ (the benchmark), clip77/ (the pre-trained 77-token CLIP, reused by later runs with the same
settings and usable with --model elsewhere), one directory per fine-tuned variant, results.json, results.md and
effective_length*.png.
"""

_INFO_EPILOG = """\
examples:
  longclip info longclip-B.pt
  longclip info BeichenZhang/LongCLIP-L --json
  longclip info ./my-finetuned-clip/

Shows the checkpoint format (longclip-pt: released Long-CLIP .pt; openai: OpenAI CLIP .pt; hf: transformers
directory), the architecture of both towers, the Long-CLIP kept position rows if recorded, parameter counts and
the dtype of the stored weights.
"""


# --- argument parsing ------------------------------------------------------------------------------------------------


def _common_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Flags accepted both before and after the subcommand.

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


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        "-m",
        required=True,
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
    parser.add_argument("--batch-size", type=_positive_int, default=None, metavar="N", help="inputs per forward pass")


def _long_texts_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--long-texts",
        choices=LONG_TEXT_MODES,
        default="truncate",
        help="texts longer than the model's context: truncate them (default), embed them in chunks and average, "
        "or stop with an error",
    )


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``longclip`` argument parser (exposed for documentation tools and tests).

    ``argv`` is looked at only for ``train --method NAME``, whose own options the parser then offers.
    """
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    _common_flags(common, suppress=True)
    formatter = argparse.RawDescriptionHelpFormatter

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Long-CLIP: CLIP models that read long text (up to 248 tokens).",
        epilog=_MAIN_EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _common_flags(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    convert = commands.add_parser(
        "convert",
        parents=[common],
        help="convert a checkpoint to a transformers directory or the released Long-CLIP .pt",
        description="Load a CLIP / Long-CLIP checkpoint in any supported format and write it as a transformers "
        "directory (default) or as a released-format Long-CLIP .pt file.",
        epilog=_CONVERT_EPILOG,
        formatter_class=formatter,
    )
    convert.add_argument("src", metavar="SRC", help="checkpoint to read: .pt file, transformers directory or hub id")
    convert.add_argument("dst", metavar="DST", help="output: a directory (--to hf) or a file (--to longclip-pt)")
    convert.add_argument(
        "--to",
        choices=("hf", "longclip-pt"),
        default="hf",
        help="output format: hf, a transformers directory (default); longclip-pt, the released .pt layout",
    )
    convert.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    convert.add_argument("--revision", default=None, help="hub revision (branch, tag or commit), for hub ids")
    convert.add_argument("--overwrite", action="store_true", help="write even if DST exists and is not empty")
    convert.set_defaults(handler=_cmd_convert)

    classify = commands.add_parser(
        "classify",
        parents=[common],
        help="zero-shot classification of images against text labels",
        description="Zero-shot classification: the probability of each label for each image.",
        epilog=_CLASSIFY_EPILOG,
        formatter_class=formatter,
    )
    classify.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or directories of images")
    classify.add_argument(
        "--label", "-l", action="append", default=[], metavar="TEXT", help="a candidate label (repeat for more)"
    )
    classify.add_argument("--labels-file", metavar="FILE", help="file with one label per line (added after --label)")
    _model_flags(classify)
    _long_texts_flag(classify)
    classify.add_argument(
        "--top", type=_positive_int, default=None, metavar="K", help="show the K most probable labels (default: all)"
    )
    classify.add_argument("--json", action="store_true", help="print JSON (full labels) instead of a table")
    classify.set_defaults(handler=_cmd_classify)

    embed = commands.add_parser(
        "embed",
        parents=[common],
        help="embed images or texts into a .npy file",
        description="Compute image or text features and save them as a float32 .npy file with a JSON description.",
        epilog=_EMBED_EPILOG,
        formatter_class=formatter,
    )
    source = embed.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", metavar="PATH", help="image files or directories of images")
    source.add_argument("--images-from", metavar="FILE", help="file with one image path per line")
    source.add_argument("--texts", nargs="+", metavar="TEXT", help="texts to embed")
    source.add_argument("--texts-from", metavar="FILE", help="file with one text per line")
    _model_flags(embed)
    embed.add_argument(
        "--output", "-o", required=True, metavar="OUT.npy", help="features file; OUT.json is written beside it"
    )
    embed.add_argument("--no-normalize", action="store_true", help="keep raw features (default: L2-normalized)")
    embed.add_argument(
        "--skip-errors",
        action="store_true",
        help="images that cannot be read get NaN rows and are listed in OUT.json, instead of stopping the run",
    )
    _long_texts_flag(embed)
    embed.set_defaults(handler=_cmd_embed)

    info = commands.add_parser(
        "info",
        parents=[common],
        help="show a checkpoint's format, architecture and size",
        description="Describe a checkpoint: format, architecture, Long-CLIP position rows, parameters, dtype.",
        epilog=_INFO_EPILOG,
        formatter_class=formatter,
    )
    info.add_argument("ckpt", metavar="CKPT", help=".pt file, transformers directory or hub id")
    info.add_argument("--revision", default=None, help="hub revision (branch, tag or commit), for hub ids")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=_cmd_info)

    train = commands.add_parser(
        "train",
        parents=[common],
        help="train on image / caption pairs with a method (default: Long-CLIP's fine-tuning recipe)",
        description="Train with a method (--method; `longclip train --method NAME --help` lists its options). The "
        "default, longclip, is Long-CLIP's recipe: knowledge-preserving stretching to 248 positions, then long "
        "captions matched with image features and short captions with their principal components. Runs on one "
        "device as it is, on many under torchrun.",
        epilog=_TRAIN_EPILOG,
        formatter_class=formatter,
    )
    if "train" in argv:
        from .train.options import method_from_argv

        _train_flags(train, method_from_argv(argv))
    else:  # the method's flags matter only when training; importing the methods costs a torch import
        train.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser(
        "eval",
        parents=[common],
        help="evaluate a model on retrieval and zero-shot classification benchmarks",
        description="Zero-shot retrieval (COCO, Flickr30k, Urban-1k, ShareGPT4V, DCI, DOCCI) and classification "
        "(ImageNet, CIFAR, a class folder) from local copies of the data sets in their published layouts.",
        epilog=_EVAL_EPILOG,
        formatter_class=formatter,
    )
    evaluate.add_argument("--list", action="store_true", help="list the registered data sets and their layouts")
    evaluate.add_argument(
        "--dataset",
        "-d",
        action="append",
        default=[],
        metavar="NAME[=DIR]",
        help="a registered data set, optionally with its folder (repeat for more)",
    )
    evaluate.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="folder of the next --dataset given without =DIR (one per such data set, or one shared by all)",
    )
    evaluate.add_argument("--model", "-m", metavar="M", help="checkpoint: .pt file, transformers directory or hub id")
    evaluate.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    evaluate.add_argument(
        "--dtype", choices=DTYPES, default=None, help="weight dtype (default: float32 on the CPU, float16 on CUDA)"
    )
    evaluate.add_argument("--revision", default=None, help="hub revision (branch, tag or commit), for hub ids")
    evaluate.add_argument(
        "--batch-size", type=_positive_int, default=64, metavar="N", help="images / texts per forward pass"
    )
    _long_texts_flag(evaluate)
    evaluate.add_argument("--output", "-o", metavar="FILE.json", help="write the results as a JSON list")
    evaluate.add_argument("--markdown", metavar="FILE.md", help="write the results as a markdown table")
    evaluate.set_defaults(handler=_cmd_eval)

    reproduce = commands.add_parser(
        "reproduce",
        parents=[common],
        help="Long-CLIP's experiment in miniature, offline on a CPU (the package's main demonstration)",
        description="Generate a synthetic long-caption benchmark, pre-train a small CLIP at 77 tokens, fine-tune it "
        "with linear stretching, knowledge-preserving stretching, and Long-CLIP's primary component matching, and "
        "compare the four on long-caption retrieval, short-caption retrieval, attribute classification and the "
        "effective-length curve. Nothing is downloaded.",
        epilog=_REPRODUCE_EPILOG,
        formatter_class=formatter,
    )
    reproduce.add_argument("--output", "-o", default="runs/reproduce", help="run directory (default: %(default)s)")
    reproduce.add_argument("--quick", action="store_true", help="tiny sizes: the same pipeline in about a minute")
    reproduce.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default: 0)")
    reproduce.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    reproduce.set_defaults(handler=_cmd_reproduce)
    return parser


def _train_flags(parser: argparse.ArgumentParser, method: str = "longclip") -> None:
    """The common training settings and ``method``'s own (the defaults live in their dataclasses)."""
    from .train.options import add_train_arguments

    add_train_arguments(parser, method)


# --- entry point -----------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``longclip`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    with _output_settings(args):
        try:
            return args.handler(args)
        except KeyboardInterrupt:
            if args.debug:
                raise
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # Output piped into e.g. `head`, which stopped reading: not an error worth a message.
            _silence_stdout()
            return 1
        except (OSError, ValueError) as e:  # FileNotFoundError, CheckpointError, ImageLoadError, HubUnavailable...
            if args.debug:
                raise
            print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
            return 1


@contextlib.contextmanager
def _output_settings(args: argparse.Namespace) -> Iterator[None]:
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


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return message or type(error).__name__


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        pass


def _status(args: argparse.Namespace, message: str) -> None:
    """A status line for the user (what was written), unless --quiet."""
    if not args.quiet:
        print(message)


# --- convert ---------------------------------------------------------------------------------------------------------


def _cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from .checkpoints import load_clip, save_longclip_pt
    from .models import LongCLIPModel

    dst = Path(args.dst).expanduser()
    _check_destination(dst, to_file=args.to == "longclip-pt", overwrite=args.overwrite)
    checkpoint = load_clip(args.src, args.revision)
    dtype = getattr(torch, args.dtype)
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
    _status(
        args,
        f"wrote {what} {dst} from {checkpoint.format} checkpoint {checkpoint.path} "
        f"({args.dtype}, {parameters:,} parameters, text context {context})",
    )
    return 0


def _check_destination(dst: Path, to_file: bool, overwrite: bool) -> None:
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


# --- classify --------------------------------------------------------------------------------------------------------


def _cmd_classify(args: argparse.Namespace) -> int:
    import torch

    labels = _collect_labels(args.label, args.labels_file)
    images = _expand_images(args.images)
    _check_images_exist(images)
    model = _load_model(args)
    _note_long_texts(model, labels, args.long_texts)
    batch = {} if args.batch_size is None else {"batch_size": args.batch_size}
    progress = False if args.quiet else None
    text_features = model.embed_texts(labels, normalize=True, long_texts=args.long_texts, progress=progress, **batch)
    image_features = model.embed_images(images, normalize=True, progress=progress, **batch)
    scale = model.logit_scale.detach().float().exp().cpu()
    probabilities = (scale * image_features @ text_features.T).softmax(dim=-1)

    top = len(labels) if args.top is None else min(args.top, len(labels))
    results = []
    for image, row in zip(images, probabilities, strict=True):
        values, indices = torch.topk(row, top)
        ranked = [(labels[i], float(p)) for p, i in zip(values.tolist(), indices.tolist(), strict=True)]
        results.append((image, ranked))

    if args.json:
        document = [
            {"image": image, "predictions": [{"label": label, "probability": p} for label, p in ranked]}
            for image, ranked in results
        ]
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return 0
    for n, (image, ranked) in enumerate(results):
        if n:
            print()
        print(image)
        for label, p in ranked:
            print(f"  {100 * p:6.2f}%  {_shorten(label, _LABEL_DISPLAY_CHARS)}")
    return 0


def _collect_labels(given: list[str], labels_file: str | None) -> list[str]:
    labels = [label.strip() for label in given]
    if labels_file is not None:
        labels += _read_lines(labels_file)
    if any(not label for label in labels):
        raise ValueError("a --label is empty")
    if not labels:
        raise ValueError("no labels: give at least one --label TEXT or a --labels-file")
    unique = list(dict.fromkeys(labels))
    if len(unique) < len(labels):
        logger.warning("ignoring %s", _plural(len(labels) - len(unique), "repeated label"))
    if len(unique) == 1:
        logger.warning("only one label: its probability is 1 for every image; give the alternatives too")
    return unique


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


# --- embed -----------------------------------------------------------------------------------------------------------


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    output = Path(args.output).expanduser()
    if output.suffix != ".npy":
        output = output.with_name(output.name + ".npy")
    metadata_path = output.with_suffix(".json")
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a directory; give a file name such as {output / 'feats.npy'}")

    kind = "images" if args.images is not None or args.images_from is not None else "texts"
    if kind == "images":
        items = _expand_images(args.images) if args.images is not None else _read_lines(args.images_from)
        if not items:
            raise ValueError(f"{args.images_from} lists no images")
        if not args.skip_errors:
            _check_images_exist(items)
    else:
        items = list(args.texts) if args.texts is not None else _read_lines(args.texts_from)
        if not items:
            raise ValueError(f"{args.texts_from} holds no texts")

    model = _load_model(args)
    batch = {} if args.batch_size is None else {"batch_size": args.batch_size}
    progress = False if args.quiet else None
    normalize = not args.no_normalize
    skipped: list[dict[str, Any]] = []
    if kind == "images":
        features = model.embed_images(
            items, normalize=normalize, skip_errors=args.skip_errors, progress=progress, **batch
        )
        if args.skip_errors:
            skipped = _skipped_images(model, items, features)
    else:
        _note_long_texts(model, items, args.long_texts)
        features = model.embed_texts(
            items, normalize=normalize, long_texts=args.long_texts, progress=progress, **batch
        )

    array = features.numpy().astype(np.float32, copy=False)
    metadata: dict[str, Any] = {
        "model": args.model,
        "kind": kind,
        "count": int(array.shape[0]),
        "dim": int(array.shape[1]),
        "normalized": normalize,
        "dtype": "float32",
        "context_length": model.context_length,
    }
    if kind == "texts":
        metadata["long_texts"] = args.long_texts
    metadata["items"] = items
    metadata["skipped"] = skipped

    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, array)
    with open(metadata_path, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2, ensure_ascii=False)
        f.write("\n")
    note = f", {_plural(len(skipped), 'unreadable image')} skipped (NaN rows)" if skipped else ""
    _status(
        args, f"wrote {array.shape[0]} x {array.shape[1]} {kind[:-1]} features to {output} and {metadata_path}{note}"
    )
    return 0


def _skipped_images(model: Any, items: list[str], features: Any) -> list[dict[str, Any]]:
    """The images ``embed_images(skip_errors=True)`` left as NaN rows, with the reason each failed."""
    skipped = []
    for index in features.isnan().all(dim=1).nonzero().flatten().tolist():
        try:
            model.preprocess(items[index])
        except (OSError, ValueError) as e:
            reason = _one_line(e)
        else:  # it loads now: the NaN row came from the model, not the file
            continue
        skipped.append({"index": index, "path": items[index], "error": reason})
    return skipped


# --- info ------------------------------------------------------------------------------------------------------------


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    reproduce(args.output, quick=args.quick, seed=args.seed, device=args.device)
    print((Path(args.output) / "results.md").read_text(), end="")
    _status(args, f"results, models and plots in {args.output}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train
    from .train.options import config_from_args

    config, options = config_from_args(args)
    summary = train(config, options)
    if summary["finished"]:
        _status(args, f"trained {summary['step']} steps; model written to {summary.get('model', config.output)}")
    else:
        _status(args, f"stopped after step {summary['step']} of {summary['total_steps']}; continue with --resume auto")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .checkpoints import load_clip

    checkpoint = load_clip(args.ckpt, args.revision)
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
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0

    formats = {
        "longclip-pt": "longclip-pt (released Long-CLIP .pt)",
        "openai": "openai (OpenAI CLIP .pt)",
        "hf": "hf (transformers directory)",
    }
    t, v = info["text"], info["vision"]
    if checkpoint.keep_rows is None:
        rows = "none recorded" + (" (CLIP's 77-token context)" if t["context_length"] == 77 else "")
    elif checkpoint.keep_rows == 0:
        rows = "0 (linearly stretched position table)"
    else:
        rows = f"{checkpoint.keep_rows} (leading position rows kept from CLIP)"
    lines = [
        ("checkpoint", info["path"]),
        ("format", formats.get(checkpoint.format, checkpoint.format)),
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
    ]
    width = max(len(key) for key, _ in lines) + 1
    for key, value in lines:
        print(f"{key + ':':<{width}} {value}")
    return 0


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


# --- eval ------------------------------------------------------------------------------------------------------------

_EVAL_EPILOG = """\
examples:
  longclip eval --list
  longclip eval --model longclip-B.pt --dataset urban1k=data/Urban1k --dataset coco=data/coco
  longclip eval --model longclip-L.pt -d cifar10 -d cifar100 --root data/ --output results.json --markdown results.md

Data sets are given as NAME=DIR, or as NAME with the folder in a --root: bare names take the --root values in
order, or all share a single --root. `longclip eval --list` shows each data set's expected layout. Every data set is
checked before the model is loaded. Unreadable images are left out (with their captions) and counted under
"skipped". The table printed (and written with --markdown) gives recall and accuracy in percent; --output writes
CLIP_benchmark's keys (image_retrieval_recall@5, acc1, ...) as a JSON list.
"""


def _cmd_eval(args: argparse.Namespace) -> int:
    import textwrap

    from .eval.datasets import DATASETS, load_dataset
    from .eval.runner import evaluate_dataset, format_markdown, write_report

    if args.list:
        for name, spec in DATASETS.items():
            print(f"{name} ({spec.kind})")
            print(textwrap.indent(textwrap.fill(spec.layout, 96, break_on_hyphens=False), " " * 4))
        return 0
    if not args.dataset:
        raise ValueError("no data set: give --dataset NAME=DIR (or --dataset NAME --root DIR), or --list")
    if not args.model:
        raise ValueError("--model is required to evaluate (only --list works without one)")
    pairs = _eval_pairs(args.dataset, args.root)
    # Read every data set first, so that a wrong folder fails before the (slow) model load.
    datasets = [load_dataset(name, root) for name, root in pairs]
    model = _load_model(args)
    results = []
    for dataset in datasets:
        logger.info("evaluating on %s", dataset.name)
        results.append(
            evaluate_dataset(
                model, dataset, batch_size=args.batch_size, long_texts=args.long_texts, model_name=args.model
            )
        )
    write_report(results, args.output, args.markdown)
    print(format_markdown(results), end="")
    for path in (args.output, args.markdown):
        if path is not None:
            _status(args, f"wrote {path}")
    return 0


def _eval_pairs(datasets: list[str], roots: list[str]) -> list[tuple[str, str]]:
    """(name, folder) for each --dataset: NAME=DIR as given, bare NAMEs take the --root values in order."""
    bare = [value for value in datasets if "=" not in value]
    if roots and not bare:
        raise ValueError("--root given, but every --dataset already names its folder as NAME=DIR")
    if bare and not roots:
        raise ValueError(f"no folder for data set {bare[0]!r}: give --dataset {bare[0]}=DIR or a --root DIR")
    if len(roots) not in (1, len(bare)):
        raise ValueError(
            f"{len(bare)} data sets without =DIR but {len(roots)} --root values; give one --root per such data set "
            "(in order) or a single --root for all"
        )
    shared = iter(roots if len(roots) == len(bare) else roots * len(bare))
    pairs = []
    for value in datasets:
        name, separator, root = value.partition("=")
        if separator and not root:
            raise ValueError(f"--dataset {value!r} has an empty folder after '='")
        pairs.append((name.strip(), root if separator else next(shared)))
    return pairs


# --- shared helpers --------------------------------------------------------------------------------------------------


def _load_model(args: argparse.Namespace) -> Any:
    import torch

    from .api import load

    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ValueError(f"--device {args.device!r} is not a torch device: {_one_line(e)}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    logger.info("loading %s on %s", args.model, device)
    model, _ = load(args.model, device=device, dtype=args.dtype, revision=args.revision)
    return model


def _note_long_texts(model: Any, texts: list[str], mode: str) -> None:
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


def _read_lines(path: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file, stripped."""
    with open(Path(path).expanduser(), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _expand_images(paths: Sequence[str]) -> list[str]:
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


def _check_images_exist(paths: Sequence[str]) -> None:
    """Fail before loading the model when an image file is missing."""
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such image file: {path}")


if __name__ == "__main__":
    sys.exit(main())
