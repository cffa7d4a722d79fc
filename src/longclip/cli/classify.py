"""``longclip classify``: zero-shot classification of images against text labels."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from .common import (
    add_command,
    add_long_texts_flag,
    add_model_flags,
    check_images_exist,
    expand_images,
    load_model,
    note_long_texts,
    plural,
    positive_int,
    read_lines,
)

logger = logging.getLogger("longclip.cli")

_LABEL_DISPLAY_CHARS = 60

EPILOG = """\
examples:
  longclip classify cat.jpg --model longclip-B.pt --label "a photo of a cat" --label "a photo of a dog"
  longclip classify photos/ --model BeichenZhang/LongCLIP-L --labels-file classes.txt --top 3
  longclip classify scene.png --model longclip-B.pt --labels-file descriptions.txt --long-texts chunk --json

Probabilities are softmax(logit_scale * cosine(image, label)) over the given labels, as in CLIP's zero-shot
classification. Labels may be whole paragraphs: Long-CLIP reads 248 tokens; longer labels are truncated unless
--long-texts chunk (average of the pieces) or error is given. A directory given as IMAGE stands for the image
files in it.
"""


def register(commands: Any) -> None:
    """Add the ``classify`` subcommand."""
    parser = add_command(
        commands,
        "classify",
        help="zero-shot classification of images against text labels",
        description="Zero-shot classification: the probability of each label for each image.",
        epilog=EPILOG,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or directories of images")
    parser.add_argument(
        "--label", "-l", action="append", default=[], metavar="TEXT", help="a candidate label (repeat for more)"
    )
    parser.add_argument("--labels-file", metavar="FILE", help="file with one label per line (added after --label)")
    add_model_flags(parser)
    add_long_texts_flag(parser)
    parser.add_argument(
        "--top", type=positive_int, default=None, metavar="K", help="show the K most probable labels (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON (full labels) instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print each image's label probabilities."""
    import torch

    labels = collect_labels(args.label, args.labels_file)
    images = expand_images(args.images)
    check_images_exist(images)
    model = load_model(args)
    note_long_texts(model, labels, args.long_texts)
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


def collect_labels(given: list[str], labels_file: str | None) -> list[str]:
    """--label values then the --labels-file lines, stripped and without repeats."""
    labels = [label.strip() for label in given]
    if labels_file is not None:
        labels += read_lines(labels_file)
    if any(not label for label in labels):
        raise ValueError("a --label is empty")
    if not labels:
        raise ValueError("no labels: give at least one --label TEXT or a --labels-file")
    unique = list(dict.fromkeys(labels))
    if len(unique) < len(labels):
        logger.warning("ignoring %s", plural(len(labels) - len(unique), "repeated label"))
    if len(unique) == 1:
        logger.warning("only one label: its probability is 1 for every image; give the alternatives too")
    return unique


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."
