"""``longclip embed``: image or text features into a .npy file with a JSON description beside it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import (
    add_command,
    add_long_texts_flag,
    add_model_flags,
    check_images_exist,
    expand_images,
    load_model,
    note_long_texts,
    one_line,
    plural,
    read_lines,
    status,
)

EPILOG = """\
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


def register(commands: Any) -> None:
    """Add the ``embed`` subcommand."""
    parser = add_command(
        commands,
        "embed",
        help="embed images or texts into a .npy file",
        description="Compute image or text features and save them as a float32 .npy file with a JSON description.",
        epilog=EPILOG,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", metavar="PATH", help="image files or directories of images")
    source.add_argument("--images-from", metavar="FILE", help="file with one image path per line")
    source.add_argument("--texts", nargs="+", metavar="TEXT", help="texts to embed")
    source.add_argument("--texts-from", metavar="FILE", help="file with one text per line")
    add_model_flags(parser)
    parser.add_argument(
        "--output", "-o", required=True, metavar="OUT.npy", help="features file; OUT.json is written beside it"
    )
    parser.add_argument("--no-normalize", action="store_true", help="keep raw features (default: L2-normalized)")
    parser.add_argument(
        "--skip-errors",
        action="store_true",
        help="images that cannot be read get NaN rows and are listed in OUT.json, instead of stopping the run",
    )
    add_long_texts_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Embed the inputs and write OUT.npy and OUT.json."""
    import numpy as np

    output = Path(args.output).expanduser()
    if output.suffix != ".npy":
        output = output.with_name(output.name + ".npy")
    metadata_path = output.with_suffix(".json")
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a directory; give a file name such as {output / 'feats.npy'}")

    kind = "images" if args.images is not None or args.images_from is not None else "texts"
    if kind == "images":
        items = expand_images(args.images) if args.images is not None else read_lines(args.images_from)
        if not items:
            raise ValueError(f"{args.images_from} lists no images")
        if not args.skip_errors:
            check_images_exist(items)
    else:
        items = list(args.texts) if args.texts is not None else read_lines(args.texts_from)
        if not items:
            raise ValueError(f"{args.texts_from} holds no texts")

    model = load_model(args)
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
        note_long_texts(model, items, args.long_texts)
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
    note = f", {plural(len(skipped), 'unreadable image')} skipped (NaN rows)" if skipped else ""
    status(
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
            reason = one_line(e)
        else:  # it loads now: the NaN row came from the model, not the file
            continue
        skipped.append({"index": index, "path": items[index], "error": reason})
    return skipped
