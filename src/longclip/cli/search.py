"""``longclip search INDEX "a paragraph" -k 10``: the images of an index that best match a text or an image."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import add_command
from .index import add_runtime_flags, load_search_model

_EPILOG = """\
examples:
  longclip search pictures.index "a red bicycle leaning against a blue door, a cat asleep on the step" -k 5
  longclip search pictures.index --image holiday/beach.jpg -k 20 --json

Texts longer than the model's context are read whole, in chunks whose embeddings are averaged.
"""


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "search",
        help="search an index with a text or an image",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog=_EPILOG,
    )
    parser.add_argument("index", metavar="INDEX", help="index directory (longclip index)")
    parser.add_argument("query", nargs="?", metavar="TEXT", help="a description of the picture, of any length")
    parser.add_argument("--image", metavar="PATH", help="search by an image instead of a text")
    parser.add_argument("-k", "--top", dest="k", type=int, default=10, metavar="K", help="results (default: 10)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_runtime_flags(parser, model_required=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..integrations.index import ImageIndex, format_hits

    if (args.query is None) == (args.image is None):
        raise ValueError("give either a TEXT to search for or --image PATH, one of the two")
    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    index = ImageIndex.open(args.index)
    model_id = args.model or index.model_id
    model = load_search_model(args, model_id)
    index.check_model(model, model_id)
    if args.query is not None:
        hits = index.search_text(model, args.query, k=args.k, check=False)
    else:
        hits = index.search_image(model, args.image, k=args.k, check=False)
    if args.json:
        print(json.dumps(format_hits(hits), indent=2))
        return 0
    for hit in hits:
        print(f"{hit.rank:>3}  {hit.score:.4f}  {hit.file}")
    return 0
