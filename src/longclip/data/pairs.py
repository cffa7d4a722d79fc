"""Image/long-caption pairs: reading them from ShareGPT4V json or caption tables, and serving them to a DataLoader.

Long-CLIP fine-tunes on ShareGPT4V (about 1.2M images with ~100-200 word captions) and holds out its first 1,000
records as the ShareGPT4V-1k retrieval benchmark. Everything here is index-based (a list of :class:`CaptionedImage`
records plus a :class:`PairDataset`); streaming tar shards live in :mod:`longclip.data.webdataset`.

Images that are missing or cannot be decoded do not stop training: :class:`PairDataset` returns ``None`` for them
and :class:`CaptionCollator` drops them and counts them in ``num_bad``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from longclip.data.captions import first_sentence
from longclip.images import ImageLoadError
from longclip.text import TextTokenizer

__all__ = [
    "CaptionCollator",
    "CaptionedImage",
    "PairDataset",
    "read_caption_table",
    "read_pairs",
    "read_sharegpt4v",
    "split_holdout",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

_JSON_SUFFIXES = (".json",)
_TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_SUPPORTED = ", ".join((*_JSON_SUFFIXES, *_TABLE_DELIMITERS))
# Delimiters tried when a table's suffix does not say which one it uses.
_SNIFF_DELIMITERS = ",\t;|"
_SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class CaptionedImage:
    """One training pair.

    Attributes:
        image: Path of the image file, already joined with the image root.
        caption: The long caption.
        short_caption: The short caption: given by the source, or :func:`first_sentence` of ``caption``.
        hard_negative: A caption that must not match this image's captions (a ``hard_negative`` column), or None.
            Only ``--method llm2clip-text`` uses it; the other methods ignore it.
    """

    image: str
    caption: str
    short_caption: str
    hard_negative: str | None = None


def read_sharegpt4v(
    json_path: PathLike, image_root: PathLike, short_caption: Callable[[str], str] = first_sentence
) -> list[CaptionedImage]:
    """Read a ShareGPT4V caption file.

    The file is a json list of records such as ``{"id": ..., "image": "coco/train2017/x.jpg", "conversations":
    [{"from": "human", "value": "<image>\\nDescribe..."}, {"from": "gpt", "value": LONG CAPTION}]}``; the long
    caption is ``conversations[1]["value"]`` and the short caption its first sentence.

    Args:
        json_path: The json file.
        image_root: Folder the records' image paths are relative to (absolute image paths are kept).
        short_caption: The rule that makes the short caption from the long one (see ``SHORT_CAPTION_RULES``).

    Returns:
        One :class:`CaptionedImage` per record, in file order.

    Raises:
        FileNotFoundError: ``json_path`` does not exist.
        ValueError: The file is not UTF-8 or not json (or nested too deeply to parse), is not a json list, or a
            record lacks an image path or a non-empty caption (the message names the record index and what is
            missing).
    """
    json_path = Path(json_path)
    text = _read_text(json_path)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{json_path} is not valid json: {exc}") from exc
    except RecursionError as exc:  # json's parser recurses once per nesting level: [[[[...]]]] exhausts the stack
        raise ValueError(f"{json_path}: json nested too deeply to read (a ShareGPT4V file is a flat list)") from exc
    if not isinstance(records, list):
        raise ValueError(f"{json_path}: expected a json list of ShareGPT4V records, got {type(records).__name__}")

    pairs = []
    for index, record in enumerate(records):
        image, caption = _sharegpt4v_fields(record, index, json_path)
        pairs.append(CaptionedImage(os.path.join(image_root, image), caption, short_caption(caption)))
    logger.info("read %d pairs from %s", len(pairs), json_path)
    return pairs


def _sharegpt4v_fields(record: Any, index: int, json_path: Path) -> tuple[str, str]:
    """The image path and stripped long caption of one ShareGPT4V record, or a ValueError saying what is missing."""

    def fail(missing: str) -> ValueError:
        return ValueError(f"{json_path}: record {index} has no {missing}")

    if not isinstance(record, dict):
        raise ValueError(f"{json_path}: record {index} is a {type(record).__name__}, expected a json object")
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise fail('"image" path')
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or len(conversations) < 2:
        raise fail('"conversations" list with at least two turns (the caption is conversations[1]["value"])')
    answer = conversations[1]
    caption = answer.get("value") if isinstance(answer, dict) else None
    if not isinstance(caption, str) or not caption.strip():
        raise fail('caption: conversations[1]["value"] is missing or empty')
    return image, caption.strip()


def read_caption_table(
    path: PathLike, image_root: PathLike | None = None, short_caption: Callable[[str], str] = first_sentence
) -> list[CaptionedImage]:
    """Read a CSV or TSV table of image paths and captions.

    The table has a header row with the columns ``image`` and ``caption`` and optionally ``short_caption`` (an empty
    cell there, or no such column, gives the caption's first sentence) and ``hard_negative`` (a caption of another
    image that looks like this one's, for caption-contrastive tuning; when the column is there, every row needs
    one); other columns are ignored. ``.csv`` files
    are comma separated, ``.tsv`` and ``.tab`` files tab separated, and for any other suffix the delimiter is sniffed.
    Fields may be quoted, so captions can contain the delimiter, quotes and line breaks.

    Args:
        path: The table.
        image_root: Folder relative image paths are resolved against; defaults to the table's own folder.

    Returns:
        One :class:`CaptionedImage` per data row, in file order (blank lines are skipped).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PermissionError: ``path`` cannot be read.
        ValueError: The file is not UTF-8; a required column is missing (the message names the file, the column and
            the columns found); a row has more or fewer fields than the header (an unquoted delimiter), an unclosed
            or stray quote, a field over csv's size limit, or an empty image or caption cell (the message names the
            file and the line).
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    # A byte-order mark (Excel writes one) must not become part of the first column's name.
    handle = io.StringIO(_read_text(path).removeprefix("\ufeff"), newline="")
    delimiter = _TABLE_DELIMITERS.get(path.suffix.lower()) or _sniff_delimiter(handle, path)
    # strict: a stray quote is an error rather than a quietly different row (an unclosed quote would otherwise
    # swallow every following row into one caption).
    reader = csv.reader(handle, delimiter=delimiter, strict=True)
    header = [name.strip() for name in _next_row(reader, path) or []]
    missing = [name for name in ("image", "caption") if name not in header]
    if missing:
        raise ValueError(
            f"{path}: missing required column {missing[0]!r} (required: 'image', 'caption'; "
            f"optional: 'short_caption', 'hard_negative'); columns found: {header}"
        )
    image_col, caption_col = header.index("image"), header.index("caption")
    short_col = header.index("short_caption") if "short_caption" in header else None
    negative_col = header.index("hard_negative") if "hard_negative" in header else None

    pairs = []
    while (row := _next_row(reader, path)) is not None:
        if not any(cell.strip() for cell in row):
            continue
        # line_num is the physical line the row ended on, which is what an editor shows.
        where = f"{path}, line {reader.line_num}"
        if len(row) != len(header):
            # Every row must have the header's fields: one more means an unquoted delimiter inside a caption,
            # which would otherwise shift the columns silently.
            hint = "; quote fields that contain the delimiter" if len(row) > len(header) else ""
            raise ValueError(f"{where}: {len(row)} fields, but the header has {len(header)} {header}{hint}: {row}")
        image, caption = row[image_col].strip(), row[caption_col].strip()
        if not image:
            raise ValueError(f"{where}: empty 'image' cell")
        if not caption:
            raise ValueError(f"{where}: empty 'caption' cell")
        short = row[short_col].strip() if short_col is not None else ""
        negative = None
        if negative_col is not None:
            # All rows or none: a blank cell is more likely a slip than a row meant to train without one.
            negative = row[negative_col].strip()
            if not negative:
                raise ValueError(
                    f"{where}: empty 'hard_negative' cell; when the table has that column every row needs one "
                    "(drop the column to train without hard negatives)"
                )
        pairs.append(CaptionedImage(str(root / image), caption, short or short_caption(caption), negative))
    logger.info("read %d pairs from %s", len(pairs), path)
    return pairs


def _next_row(reader: Any, path: Path) -> list[str] | None:
    """The next row of a csv reader, or None at the end; csv's errors become a ValueError naming file and line."""
    start = reader.line_num + 1
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        text = str(exc)
        if "field larger than field limit" in text:
            hint = f"a field longer than {csv.field_size_limit():,} characters, usually an unclosed quote"
        elif "unexpected end of data" in text:
            hint = "a quote opened here is never closed"
        else:
            hint = "a stray quote inside an unquoted field, or text after a closing quote"
        raise ValueError(f"{path}, line {start}: malformed row ({hint}; csv says: {text})") from exc


def _read_text(path: Path) -> str:
    """A caption file's text as UTF-8, with decoding errors that name the file, the line and the byte."""
    raw = path.read_bytes()  # FileNotFoundError / PermissionError / IsADirectoryError name the path themselves
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"{path}, line {line}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}: {exc.reason}); "
            "re-save the file as UTF-8"
        ) from exc


def _sniff_delimiter(handle: Any, path: Path) -> str:
    """Guess a table's delimiter from its beginning and rewind the file."""
    sample = handle.read(_SNIFF_BYTES)
    handle.seek(0)
    try:
        return csv.Sniffer().sniff(sample, delimiters=_SNIFF_DELIMITERS).delimiter
    except csv.Error:
        # A one-column sample cannot be sniffed; the header check that follows then reports what it found.
        logger.debug("could not sniff the delimiter of %s; assuming commas", path)
        return ","


def read_pairs(
    source: PathLike, image_root: PathLike | None = None, short_caption: Callable[[str], str] = first_sentence
) -> list[CaptionedImage]:
    """Read image/caption pairs from a file, choosing the reader by its suffix.

    ``.json`` is read as ShareGPT4V (:func:`read_sharegpt4v`), ``.csv``, ``.tsv`` and ``.tab`` as a caption table
    (:func:`read_caption_table`). Webdataset tar shards are streamed instead: see
    :func:`longclip.data.webdataset_pairs`.

    Args:
        source: The caption file.
        image_root: Folder relative image paths are resolved against; defaults to the caption file's folder.
        short_caption: The rule that makes a short caption where the source gives none
            (``longclip.data.SHORT_CAPTION_RULES``: :func:`first_sentence` by default).

    Returns:
        The pairs, in file order.

    Raises:
        ValueError: The suffix is not supported, or the file is malformed (see the readers).
        FileNotFoundError: ``source`` does not exist.
    """
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in _JSON_SUFFIXES:
        return read_sharegpt4v(path, image_root if image_root is not None else path.parent, short_caption)
    if suffix in _TABLE_DELIMITERS:
        return read_caption_table(path, image_root, short_caption)
    raise ValueError(
        f"unsupported caption file {str(path)!r}: expected one of {_SUPPORTED} (ShareGPT4V json or a CSV/TSV table "
        "with 'image' and 'caption' columns); for webdataset tar shards use longclip.data.webdataset_pairs"
    )


def split_holdout(pairs: Sequence[CaptionedImage], n: int) -> tuple[list[CaptionedImage], list[CaptionedImage]]:
    """Hold out the first ``n`` pairs for validation, as ShareGPT4V-1k holds out ShareGPT4V's first 1,000 records.

    Args:
        pairs: All pairs, in file order.
        n: Number of pairs to hold out (0 gives an empty validation set).

    Returns:
        ``(validation, training)``: the first ``n`` pairs and the rest.

    Raises:
        ValueError: ``n`` is negative or larger than ``len(pairs)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if n > len(pairs):
        raise ValueError(f"cannot hold out {n} pairs from only {len(pairs)}")
    return list(pairs[:n]), list(pairs[n:])


class PairDataset(Dataset):
    """Map-style dataset over :class:`CaptionedImage` records that loads and preprocesses each image.

    Items are dicts ``{"index": int, "pixels": FloatTensor[3, H, W], "caption": str, "short_caption": str}`` (and
    ``"hard_negative": str`` for pairs that have one), or
    ``None`` when the image is missing or cannot be decoded (logged at DEBUG with the path and reason), so that one
    bad file does not stop a run; :class:`CaptionCollator` drops and counts them.
    """

    def __init__(self, pairs: Sequence[CaptionedImage], transform: Callable[[Any], torch.Tensor]) -> None:
        """Wrap pairs and a transform.

        Args:
            pairs: The records to serve.
            transform: Image path -> float tensor ``[3, H, W]``, e.g. :class:`longclip.images.ImageTransform`. It
                should raise :class:`~longclip.images.ImageLoadError` or ``FileNotFoundError`` for bad images; other
                exceptions propagate.
        """
        self.pairs = pairs
        self.transform = transform

    def __len__(self) -> int:
        """Number of pairs."""
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        """Load pair ``index``; ``None`` if its image is missing or unreadable."""
        pair = self.pairs[index]
        try:
            pixels = self.transform(pair.image)
        except (ImageLoadError, FileNotFoundError) as exc:
            logger.debug("skipping pair %d, image %s: %s", index, pair.image, exc)
            return None
        item = {"index": index, "pixels": pixels, "caption": pair.caption, "short_caption": pair.short_caption}
        if pair.hard_negative is not None:
            item["hard_negative"] = pair.hard_negative
        return item


class CaptionCollator:
    """Batch :class:`PairDataset` (or :func:`~longclip.data.webdataset_pairs`) items: drop bad ones, tokenize.

    The result is ``{"pixels": FloatTensor[B, 3, H, W], "long_ids" / "long_mask": LongTensor[B, L1], "short_ids" /
    "short_mask": LongTensor[B, L2], "indices": LongTensor[B], "num_bad": int}`` (ids padded with the tokenizer's
    ``pad_id``, masks 1 on real tokens), where ``B`` is the number of good items and
    ``num_bad`` the number of ``None`` items dropped. Captions longer than the tokenizer's context are cut by the
    tokenizer (CLIP's keeps the end token last), and each id tensor is only as wide as the batch's longest caption,
    so a batch of short captions is not padded to 248 columns.
    When every item is ``None``, ``pixels`` is ``torch.empty(0)`` (the image size is unknown), the id tensors have
    shape ``[0, 0]``, ``indices`` shape ``[0]`` and ``num_bad`` is ``len(items)``.
    """

    def __init__(self, tokenizer: TextTokenizer) -> None:
        """Use ``tokenizer`` (and its context length) for both captions.

        Args:
            tokenizer: The model's tokenizer (any ``longclip.text.TextTokenizer``), e.g. ``LongCLIPTokenizer(248)``.
        """
        self.tokenizer = tokenizer

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, Any]:
        """Collate a list of items (``None`` for bad images) into a batch.

        A ``{"bad_shard": url}`` item (a webdataset shard that could not be read) is neither a sample nor a bad
        image: its url is listed in the batch's ``bad_shards``.
        """
        bad_shards = [item["bad_shard"] for item in items if item is not None and "bad_shard" in item]
        items = [item for item in items if item is None or "bad_shard" not in item]
        good = [item for item in items if item is not None]
        num_bad = len(items) - len(good)
        if not good:
            empty_ids = torch.empty((0, 0), dtype=torch.long)
            return {
                "pixels": torch.empty(0),
                "long_ids": empty_ids,
                "long_mask": empty_ids.clone(),
                "short_ids": empty_ids.clone(),
                "short_mask": empty_ids.clone(),
                "indices": torch.empty(0, dtype=torch.long),
                "num_bad": num_bad,
                "bad_shards": bad_shards,
            }
        long_ids, long_mask = self._tokenize([item["caption"] for item in good])
        short_ids, short_mask = self._tokenize([item["short_caption"] for item in good])
        return {
            "pixels": torch.stack([item["pixels"] for item in good]),
            "long_ids": long_ids,
            "long_mask": long_mask,
            "short_ids": short_ids,
            "short_mask": short_mask,
            "indices": torch.tensor([item["index"] for item in good], dtype=torch.long),
            "num_bad": num_bad,
            "bad_shards": bad_shards,
        }

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # Only as wide as the batch's longest caption (capped at the context, cut with the tokenizer's own rule):
        # padding past it would change nothing but cost memory and transfer.
        batch = self.tokenizer.batch(texts, truncate=True)
        return batch.input_ids, batch.attention_mask
