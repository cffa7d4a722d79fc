"""``longclip index IMAGE_DIR --model M --out INDEX``: build or update a searchable index of an image folder."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .common import add_command, add_model_flags, load_model

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
    """The shared model flags (--model may also name an ONNX export) and --runtime."""
    add_model_flags(parser, required=model_required, batch_size=32)
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="inference through PyTorch or onnxruntime (auto: onnxruntime for an ONNX export)",
    )


def load_search_model(args: argparse.Namespace, model_id: str) -> Any:
    """The model ``args`` names (or ``model_id``, the index's), on the runtime asked for."""
    from ..integrations.onnx_export import is_onnx_directory, load_with_runtime

    if args.runtime == "onnx" or (args.runtime == "auto" and is_onnx_directory(model_id)):
        return load_with_runtime(model_id, runtime="onnx", device="cpu", dtype="float32")
    if args.runtime == "torch" and is_onnx_directory(model_id):
        raise ValueError(f"{model_id} is an ONNX export: run it with --runtime onnx (or auto)")
    if args.device.startswith("cuda") and "LOCAL_RANK" in os.environ and ":" not in args.device:
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"  # under torchrun each rank takes its own GPU
    return load_model(argparse.Namespace(**{**vars(args), "model": model_id}))


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "index",
        help="build or update a searchable index of an image folder",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog=_EPILOG,
    )
    parser.add_argument("image_dir", metavar="IMAGE_DIR", help="folder of images (searched recursively)")
    parser.add_argument("--out", "-o", required=True, metavar="INDEX", help="index directory (created or updated)")
    add_runtime_flags(parser, model_required=True)
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
