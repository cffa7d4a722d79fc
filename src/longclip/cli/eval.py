"""``longclip eval``: zero-shot retrieval and classification on local copies of the published benchmarks."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .common import add_command, add_long_texts_flag, add_model_flags, load_model, status

logger = logging.getLogger("longclip.cli")

EPILOG = """\
examples:
  longclip eval --list
  longclip eval --model longclip-B.pt --dataset urban1k=data/Urban1k --dataset coco=data/coco
  longclip eval --model longclip-L.pt -d cifar10 -d cifar100 --root data/ --output results.json --markdown results.md

Data sets are given as NAME=DIR, or as NAME with the folder in a --root: bare names take the --root values in
order, or all share a single --root. `longclip eval --list` shows each data set's expected layout. Every data set is
checked before the model is loaded. Unreadable images are left out (with their captions) and counted under
"skipped"; images a data set's files give no caption (and files that are not images) are left out with a warning
and counted as num_dropped. The table printed (and written with --markdown) gives recall and accuracy in
percent; --output writes CLIP_benchmark's keys (image_retrieval_recall@5, acc1, ...) as a JSON list;
--clip-benchmark DIR writes one file per data set and task in CLIP_benchmark's own result layout.
"""


def register(commands: Any) -> None:
    """Add the ``eval`` subcommand."""
    parser = add_command(
        commands,
        "eval",
        help="evaluate a model on retrieval and zero-shot classification benchmarks",
        description="Zero-shot retrieval (COCO, Flickr30k, Urban-1k, ShareGPT4V, DCI, DOCCI) and classification "
        "(ImageNet, CIFAR, a class folder) from local copies of the data sets in their published layouts.",
        epilog=EPILOG,
    )
    parser.add_argument("--list", action="store_true", help="list the registered data sets and their layouts")
    parser.add_argument(
        "--dataset",
        "-d",
        action="append",
        default=[],
        metavar="NAME[=DIR]",
        help="a registered data set, optionally with its folder (repeat for more)",
    )
    parser.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="folder of the next --dataset given without =DIR (one per such data set, or one shared by all)",
    )
    add_model_flags(parser, required=False, batch_size=64)
    add_long_texts_flag(parser)
    parser.add_argument("--output", "-o", metavar="FILE.json", help="write the results as a JSON list")
    parser.add_argument("--markdown", metavar="FILE.md", help="write the results as a markdown table")
    parser.add_argument(
        "--clip-benchmark",
        metavar="DIR",
        help="also write one DIR/DATASET_TASK.json per result in CLIP_benchmark's own layout "
        '({"dataset", "model", "pretrained", "task", "metrics", "language"})',
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate on every --dataset and print the table."""
    import textwrap

    from ..eval.datasets import DATASETS, load_dataset
    from ..eval.runner import evaluate_dataset, format_markdown, write_clip_benchmark, write_report

    if args.list:
        for name, spec in DATASETS.items():
            print(f"{name} ({spec.kind})")
            print(textwrap.indent(textwrap.fill(spec.layout, 96, break_on_hyphens=False), " " * 4))
        return 0
    if not args.dataset:
        raise ValueError("no data set: give --dataset NAME=DIR (or --dataset NAME --root DIR), or --list")
    if not args.model:
        raise ValueError("--model is required to evaluate (only --list works without one)")
    pairs = eval_pairs(args.dataset, args.root)
    # Read every data set first, so that a wrong folder fails before the (slow) model load.
    datasets = [load_dataset(name, root) for name, root in pairs]
    model = load_model(args)
    results = []
    for dataset in datasets:
        logger.info("evaluating on %s", dataset.name)
        results.append(
            evaluate_dataset(
                model, dataset, batch_size=args.batch_size, long_texts=args.long_texts, model_name=args.model
            )
        )
    write_report(results, args.output, args.markdown)
    written = [path for path in (args.output, args.markdown) if path is not None]
    if args.clip_benchmark is not None:
        written += write_clip_benchmark(results, args.clip_benchmark)
    print(format_markdown(results), end="")
    for path in written:
        status(args, f"wrote {path}")
    return 0


def eval_pairs(datasets: list[str], roots: list[str]) -> list[tuple[str, str]]:
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
