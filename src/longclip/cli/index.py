"""``longclip index IMAGE_DIR --model M --out INDEX``: build or update a searchable index of an image folder."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

DTYPES = ("auto", "float32", "float16", "bfloat16")
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")  # longclip.integrations.index.INDEX_KINDS (not imported: fast --help)
RUNTIMES = ("auto", "torch", "onnx")

_EPILOG = """\
examples:
  longclip index ~/Pictures --model BeichenZhang/LongCLIP-B --out ~/pictures.index
  longclip index ~/Pictures --model BeichenZhang/LongCLIP-B --out ~/pictures.index     # again: only new files
  torchrun --nproc_per_node 4 $(which longclip) index photos/ --model M --out photos.index --device cuda

Re-running updates the index: new and changed files are embedded, deleted ones dropped, the rest kept. A run that
is interrupted (Ctrl-C, a crash, a kill) resumes from its last saved part; the index on disk is always either the
previous complete one or the new complete one.
"""


def add_runtime_flags(parser: argparse.ArgumentParser, model_required: bool) -> None:
    """--model / --device / --dtype / --runtime for the search commands (the index remembers its model)."""
    help_model = "checkpoint (.pt, directory, hub id) or an ONNX export"
    if not model_required:
        help_model += " (default: the model that built the index)"
    parser.add_argument("--model", "-m", required=model_required, default=None, metavar="M", help=help_model)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda (default: cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="weight dtype (default: as longclip.load, auto)")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="inference through PyTorch or onnxruntime (auto: onnxruntime for an ONNX export)",
    )


def load_search_model(args: argparse.Namespace, model_id: str) -> Any:
    """The model ``args`` names (or ``model_id``), on the runtime asked for."""
    from ..integrations.onnx_export import load_with_runtime

    device = args.device
    if device.startswith("cuda") and "LOCAL_RANK" in os.environ and ":" not in device:
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # under torchrun each rank takes its own GPU
    return load_with_runtime(model_id, runtime=args.runtime, device=device, dtype=args.dtype)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "index",
        help="build or update a searchable index of an image folder",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image_dir", metavar="IMAGE_DIR", help="folder of images (searched recursively)")
    parser.add_argument("--out", "-o", required=True, metavar="INDEX", help="index directory (created or updated)")
    add_runtime_flags(parser, model_required=True)
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass")
    parser.add_argument(
        "--kind",
        choices=INDEX_KINDS,
        default="auto",
        help="faiss index: flat (exact), ivf, hnsw, or auto: exact below 100,000 images, IVF above",
    )
    parser.add_argument("--rebuild", action="store_true", help="re-embed everything (e.g. with another model)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..integrations.index import build_index

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not os.path.isdir(args.image_dir):
        raise FileNotFoundError(f"image folder {args.image_dir} does not exist or is not a directory")
    model = load_search_model(args, args.model)
    model_id = os.path.abspath(args.model) if os.path.exists(args.model) else args.model
    report = build_index(
        args.image_dir,
        args.out,
        model,
        model_id,
        batch_size=args.batch_size,
        kind=args.kind,
        rebuild=args.rebuild,
        progress=not getattr(args, "quiet", False),
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.json:
        print(json.dumps({**report.__dict__, "index": str(args.out)}, indent=2))
        return 0
    print(
        f"{args.out}: {report.total} images ({report.kind} index); {report.added} added, {report.updated} changed, "
        f"{report.removed} removed, {report.kept} kept" + (f", {report.resumed} resumed" if report.resumed else "")
    )
    if report.skipped:
        print(f"{len(report.skipped)} unreadable files skipped:")
        for entry in report.skipped:
            print(f"  {entry['path']}: {entry['reason']}")
    return 0
