"""``longclip serve INDEX --port 8000``: a local web page to search an index by paragraph or by image."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_command
from .index import add_runtime_flags, load_search_model


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "serve",
        help="serve a local search page for an index",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog="The page binds to 127.0.0.1 unless --host says otherwise; it only ever shows the indexed pictures.",
    )
    parser.add_argument("index", metavar="INDEX", help="index directory (longclip index)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--results", type=int, default=12, metavar="K", help="results per search (default: 12)")
    add_runtime_flags(parser, model_required=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..integrations.index import ImageIndex
    from ..integrations.serve import serve

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    index = ImageIndex.open(args.index)
    model = load_search_model(args, args.model or index.model_id)
    print(f"searching {len(index)} images at http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    serve(index, model, host=args.host, port=args.port, results=args.results)
    return 0
