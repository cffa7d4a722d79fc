"""Benchmark data sets, read from a local copy in the layout each one is published in.

Every loader turns a folder into one of two plain structures: a :class:`RetrievalSet` (image paths, texts, and for
each text the index of its image) or a :class:`ClassificationSet` (images, labels, class names). All of them are
registered in one table, :data:`DATASETS` (name -> kind, loader, expected layout), and loaded through
:func:`load_dataset`; the evaluation itself lives in :mod:`longclip.eval.runner` and is the same for every set.

Where each layout and protocol comes from:

* ``coco``: the COCO 2017 release (``annotations/captions_val2017.json`` + ``val2017/``), read as torchvision's
  ``CocoCaptions`` does (images sorted by id, captions in annotation order) and cut to the first 5 captions per image,
  as Long-CLIP's ``eval/retrieval/coco.py`` does: 5,000 images, 25,000 captions.
* ``flickr30k``: the *full* Flickr30k set, all 31,783 images and their 158,915 captions, which is what Long-CLIP's
  ``eval/retrieval/flickr30k.py`` evaluates (``results_20130124.token`` + ``flickr30k-images/`` from the original
  release; TULIP's ``eval/flickr30.py`` reads the same data from Kaggle's ``results.csv``). Its numbers are not
  comparable with the usual 1k-test numbers.
* ``flickr30k-1k``: Karpathy's 1,000-image test split (``dataset_flickr30k.json`` from Karpathy's
  ``caption_datasets.zip``, records with ``"split": "test"``; or CLIP_benchmark's ``flickr30k_test_karpathy.txt``),
  the protocol of the CLIP paper and CLIP_benchmark.
* ``urban1k``: Long-CLIP's Urban-1k (``image/N.jpg`` + ``caption/N.txt``; Long-CLIP's ``eval/retrieval/Urban1k.py``
  reads the first line of each caption file).
* ``sharegpt4v-1k`` / ``sharegpt4v-10k``: the first 1,000 / 10,000 records of ShareGPT4V's
  ``share-captioner_coco_lcs_sam_1246k_1107.json``, image paths relative to the ShareGPT4V ``data/`` folder, caption
  ``conversations[1]["value"]`` with line breaks replaced by spaces (Long-CLIP's ``train/sharegpt4v.py``,
  ``share4v_val_dataset``). Long-CLIP trains on records 1,000 onwards, so for Long-CLIP models only the 1k set is
  held out; records 1,000-9,999 of the 10k set were seen in training.
* ``dci``: the Densely Captioned Images release (facebookresearch/DCI: ``dci.tar.gz`` gives ``splits.json`` and
  ``annotations/``; the photos come from SA-1B ``sa_000138.tar``). Long-text retrieval over every image listed in
  ``splits.json`` (all splits, 7,805 images), caption ``short_caption + "\\n" + extra_caption``: the construction of
  LoTLIP's ``dataloaders/dci_retrieval.py`` (its caption punctuation clean-up is not copied). Papers that report
  "DCI" beside "Long-DCI" (e.g. DeBias-CLIP, SmartCLIP) showed no construction of their own in the public sources
  searched; this is the one public code gives, so their "DCI" numbers may differ.
* ``long-dci``: TULIP's Long-DCI (``open_clip/data_prep/dci_long_part.py`` + ``eval/dci_long.py``): every
  ``annotations/*.json`` in sorted file-name order, caption ``extra_caption`` alone, records whose ``extra_caption``
  is empty skipped (7,602 of 7,805 pairs remain, by third-party counts).
* ``docci``: the DOCCI release (``docci_descriptions.jsonlines`` + ``images/`` from ``docci_images.tar.gz``), the
  5,000 records with ``"split": "test"``, caption ``description``.
* ``imagenet``: ImageNet-1k validation in torchvision ``ImageFolder`` layout (``val/<wnid>/*.JPEG``), classes in
  sorted folder order as ``ImageFolder`` assigns them, with OpenAI's 1,000 class names and 80 prompt templates
  (CLIP_benchmark's ``imagenet1k-unverified``). Names and templates ship in ``longclip/assets/imagenet.json``,
  extracted from open_clip's ``zero_shot_metadata.py`` (MIT license).
* ``cifar10`` / ``cifar100``: the "python version" releases (``cifar-10-batches-py/test_batch`` +
  ``batches.meta``, ``cifar-100-python/test`` + ``meta``), read as torchvision's ``CIFAR10`` / ``CIFAR100`` do
  (``encoding="latin1"``, rows of 3,072 bytes in channel-major order), but through an unpickler that accepts only
  the numpy globals those files use and that bounds every size the file declares. Class names are kept as the
  files spell them (CIFAR-100's ``aquarium_fish``), as the original evaluation uses them; ``clean_class_names=True``
  reads ``_`` as a space.
* ``folder``: any folder with one subfolder per class (class names are folder names with ``_`` read as spaces).

A missing or malformed copy raises one ``FileNotFoundError`` / ``ValueError`` naming the data set, the root, what is
missing and the expected layout. Image files that are missing or unreadable are *not* errors here: the runner embeds
with ``skip_errors=True`` and leaves them (and, for retrieval, their texts) out, reporting how many.

Nothing is left out silently. Where a reader leaves images out (image files no caption refers to in Urban-1k, COCO
and the full Flickr30k; Karpathy test records without a sentence; Long-DCI's empty captions; files in a class folder
that are not images), it logs a warning with the count and the first path, and lists them in the data set's
``dropped``; the runner reports their number as ``num_dropped``. Splits and protocol cuts (the Karpathy test
split, DOCCI's test records, the first N ShareGPT4V records, COCO's first five captions) are what the protocol
evaluates and are described in ``protocol`` instead.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import pickle
import pickletools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from ..images import IMAGE_EXTENSIONS

__all__ = [
    "DATASETS",
    "ClassificationSet",
    "DatasetSpec",
    "RetrievalSet",
    "imagenet_metadata",
    "load_dataset",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


COCO_CAPTIONS_PER_IMAGE = 5  # Long-CLIP's coco.py keeps captions[0:5]; a few val2017 images have 6 or 7
SHAREGPT4V_JSON = "share-captioner_coco_lcs_sam_1246k_1107.json"
IMAGENET_CLASSES = 1000
CIFAR_SIDE = 32  # CIFAR rows are 3 x 32 x 32 bytes: all red, then all green, then all blue, each row-major
_FLICKR_IMAGE_DIRS = ("flickr30k-images", "flickr30k_images/flickr30k_images", "flickr30k_images")


# --- the two structures ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalSet:
    """An image-text retrieval benchmark.

    Attributes:
        name: The registered name (``"coco"``).
        protocol: What exactly is evaluated, in words (split, counts, caption rule, source of the protocol).
        images: Image file paths, one per image.
        texts: The captions.
        text_to_image: For each text, the index in ``images`` of the image it describes.
        dropped: Paths of the images the reader left out (no caption refers to them, or the protocol skips their
            caption), already reported in a warning; the runner counts them as ``num_dropped``.
    """

    name: str
    protocol: str
    images: list[str]
    texts: list[str]
    text_to_image: list[int]
    dropped: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.text_to_image):
            raise ValueError(
                f"{self.name}: {len(self.texts)} texts but {len(self.text_to_image)} text_to_image entries; "
                "expected one image index per text"
            )
        bad = [i for i in self.text_to_image if not 0 <= i < len(self.images)]
        if bad:
            raise ValueError(f"{self.name}: text_to_image index {bad[0]} is outside [0, {len(self.images)})")


@dataclass(frozen=True)
class ClassificationSet:
    """A zero-shot classification benchmark.

    Attributes:
        name: The registered name (``"cifar10"``).
        images: The images: file paths, PIL images, or ``H x W x 3`` uint8 arrays (CIFAR).
        labels: The class index of each image.
        class_names: One name per class, in label order, ready to put into prompt templates.
        protocol: What exactly is evaluated, in words.
        dropped: Paths of the files the reader left out (not image files, or outside every class folder), already
            reported in a warning; the runner counts them as ``num_dropped``.
    """

    name: str
    images: list[Any]
    labels: list[int]
    class_names: list[str]
    protocol: str = ""
    dropped: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        bad = [label for label in self.labels if not 0 <= label < len(self.class_names)]
        if bad:
            raise ValueError(f"{self.name}: label {bad[0]} is outside [0, {len(self.class_names)})")


Dataset = RetrievalSet | ClassificationSet


# --- layout checks and messages --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Root:
    """The folder a loader reads, with the data set's name and expected layout for error messages."""

    name: str
    path: Path
    layout: str

    def _message(self, what: str) -> str:
        return f"data set {self.name!r} at {self.path}: {what}. Expected layout: {self.layout}"

    def missing(self, what: str) -> FileNotFoundError:
        return FileNotFoundError(self._message(what))

    def malformed(self, what: str) -> ValueError:
        return ValueError(self._message(what))

    def find(self, *candidates: str, folder: bool = False) -> Path:
        """The first of ``candidates`` (relative paths) that exists as a file (or folder); else a missing error."""
        for candidate in candidates:
            path = self.path / candidate
            if path.is_dir() if folder else path.is_file():
                return path
        kind = "folder" if folder else "file"
        names = " or ".join(f"{c}/" if folder else c for c in candidates)
        raise self.missing(f"no {kind} {names}")

    def read_json(self, path: Path) -> Any:
        try:
            with path.open(encoding="utf-8") as handle:
                return json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self.malformed(f"{path.name} is not valid JSON ({e})") from e

    def within(self, subfolder: str) -> _Root:
        """The same data set rooted at ``subfolder`` when the given root is its parent (e.g. ``DCI/data``)."""
        nested = self.path / subfolder
        return _Root(self.name, nested, self.layout) if nested.is_dir() else self


def _field(root: _Root, record: Any, key: str, where: str, kind: type = str) -> Any:
    """``record[key]``, checked to be a ``kind`` (non-empty for strings), or a malformed error naming ``where``."""
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise root.malformed(f"{where} has no {kind.__name__} field {key!r}")
    return value


def _grouped(root: _Root, pairs: Iterator[tuple[str, str]], folder: Path) -> tuple[list[str], list[str], list[int]]:
    """Image paths, texts and text -> image indices from (image file, caption) pairs; images in first-seen order."""
    index: dict[str, int] = {}
    texts: list[str] = []
    owners: list[int] = []
    for image, caption in pairs:
        owners.append(index.setdefault(image, len(index)))
        texts.append(caption)
    if not texts:
        raise root.malformed("it lists no captions")
    return [str(folder / image) for image in index], texts, owners


# --- retrieval loaders -----------------------------------------------------------------------------------------------


def _load_coco(root: _Root) -> RetrievalSet:
    annotations = root.read_json(root.find("annotations/captions_val2017.json"))
    images_dir = root.find("val2017", folder=True)
    if not isinstance(annotations, dict) or not isinstance(annotations.get("images"), list):
        raise root.malformed('captions_val2017.json has no "images" list')
    if not isinstance(annotations.get("annotations"), list):
        raise root.malformed('captions_val2017.json has no "annotations" list')
    files = {}
    for record in annotations["images"]:
        files[_field(root, record, "id", "an images record", int)] = _field(root, record, "file_name", "an image")
    captions: dict[int, list[str]] = {image_id: [] for image_id in files}
    for record in annotations["annotations"]:
        image_id = _field(root, record, "image_id", "an annotation", int)
        if image_id not in captions:
            raise root.malformed(f"an annotation refers to image id {image_id}, which is not in the images list")
        captions[image_id].append(_field(root, record, "caption", f"an annotation of image {image_id}").strip())

    images, texts, owners = [], [], []
    for image_id in sorted(files):  # torchvision's CocoCaptions: ids = sorted(coco.imgs.keys())
        for caption in captions[image_id][:COCO_CAPTIONS_PER_IMAGE]:
            texts.append(caption)
            owners.append(len(images))
        images.append(str(images_dir / files[image_id]))
    without = [str(images_dir / files[image_id]) for image_id in sorted(files) if not captions[image_id]]
    if without:  # kept, as CocoCaptions keeps them: candidates for text->image, nothing to find for image->text
        logger.warning(
            "%s: %d image(s) listed in captions_val2017.json have no caption; they stay among the candidates for "
            "text->image retrieval but are left out of image->text recall (first: %s)",
            root.name,
            len(without),
            without[0],
        )
    unlisted = _uncaptioned(images_dir, set(files.values()))
    dropped = _report_dropped(root, unlisted, f"image file(s) in {images_dir} are not in captions_val2017.json")
    protocol = (
        f"COCO 2017 val: {len(images):,} images, the first {COCO_CAPTIONS_PER_IMAGE} captions of each "
        f"({len(texts):,} texts), as Long-CLIP eval/retrieval/coco.py"
    )
    return RetrievalSet(root.name, protocol, images, texts, owners, dropped)


def _load_flickr30k(root: _Root) -> RetrievalSet:
    captions_file = root.find("results_20130124.token", "results.csv")
    folder = root.find(*_FLICKR_IMAGE_DIRS, folder=True)
    if captions_file.suffix == ".token":
        pairs = _flickr_token_pairs(root, captions_file)
    else:
        pairs = _flickr_kaggle_pairs(root, captions_file)
    images, texts, owners = _grouped(root, pairs, folder)
    uncaptioned = _uncaptioned(folder, {Path(image).name for image in images})
    dropped = _report_dropped(root, uncaptioned, f"image file(s) in {folder} have no caption in {captions_file.name}")
    protocol = (
        f"Flickr30k full set: all {len(images):,} images, {len(texts):,} texts, from {captions_file.name}, as "
        "Long-CLIP eval/retrieval/flickr30k.py (not the 1k test split)"
    )
    return RetrievalSet(root.name, protocol, images, texts, owners, dropped)


def _flickr_token_pairs(root: _Root, path: Path) -> Iterator[tuple[str, str]]:
    """``1000092795.jpg#0<TAB>Two young guys ...`` lines of the original release."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            key, tab, caption = line.rstrip("\n").partition("\t")
            image, hash_sign, _ = key.partition("#")
            if not tab or not hash_sign or not image:
                raise root.malformed(f"{path.name} line {number} is not 'NAME.jpg#N<TAB>caption'")
            yield image, caption.strip()


def _flickr_kaggle_pairs(root: _Root, path: Path) -> Iterator[tuple[str, str]]:
    """``image_name| comment_number| comment`` rows of Kaggle's copy (the header line is skipped)."""
    with path.open(encoding="utf-8") as handle:
        header = handle.readline()
        if "image_name" not in header:
            raise root.malformed(f"{path.name} does not start with the header 'image_name| comment_number| comment'")
        for number, line in enumerate(handle, 2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("|", 2)
            if len(fields) != 3 or not fields[0].strip():
                raise root.malformed(f"{path.name} line {number} is not 'image_name| comment_number| comment'")
            yield fields[0].strip(), fields[2].strip()


def _load_flickr30k_1k(root: _Root) -> RetrievalSet:
    captions_file = root.find("dataset_flickr30k.json", "flickr30k_test_karpathy.txt")
    folder = root.find(*_FLICKR_IMAGE_DIRS, folder=True)
    without: list[str] = []  # test records with no sentence (Karpathy's json)
    if captions_file.suffix == ".json":
        pairs = _karpathy_test_pairs(root, captions_file, without)
    else:
        pairs = _clip_benchmark_pairs(root, captions_file)
    images, texts, owners = _grouped(root, pairs, folder)
    what = f'"test" record(s) of {captions_file.name} have no sentence'
    dropped = _report_dropped(root, [str(folder / name) for name in without], what)
    protocol = (
        f"Flickr30k Karpathy test split: {len(images):,} images, {len(texts):,} texts, from {captions_file.name} "
        "(the CLIP paper and CLIP_benchmark protocol)"
    )
    return RetrievalSet(root.name, protocol, images, texts, owners, dropped)


def _karpathy_test_pairs(root: _Root, path: Path, without: list[str]) -> Iterator[tuple[str, str]]:
    """Records with ``"split": "test"`` of Karpathy's ``{"images": [{"filename", "split", "sentences": [...]}]}``.

    The file names of test records with an empty ``sentences`` list are appended to ``without``.
    """
    document = root.read_json(path)
    records = document.get("images") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise root.malformed(f'{path.name} has no "images" list')
    for record in records:
        if _field(root, record, "split", "an images record") != "test":
            continue
        filename = _field(root, record, "filename", "an images record")
        sentences = _field(root, record, "sentences", f"image {filename}", list)
        if not sentences:
            without.append(filename)
        for sentence in sentences:
            yield filename, _field(root, sentence, "raw", f"a sentence of image {filename}").strip()


def _clip_benchmark_pairs(root: _Root, path: Path) -> Iterator[tuple[str, str]]:
    """CLIP_benchmark's ``flickr30k_test_karpathy.txt``: a header line, then ``NAME.jpg,caption`` lines."""
    with path.open(encoding="utf-8") as handle:
        handle.readline()
        for number, line in enumerate(handle, 2):
            if not line.strip():
                continue
            image, separator, caption = line.strip().partition(".jpg,")
            if not separator:
                raise root.malformed(f"{path.name} line {number} is not 'NAME.jpg,caption'")
            yield image + ".jpg", caption.strip()


def _load_urban1k(root: _Root) -> RetrievalSet:
    caption_dir = root.find("caption", folder=True)
    image_dir = root.find("image", folder=True)
    files = sorted((p for p in caption_dir.glob("*.txt") if not p.name.startswith(".")), key=_natural_key)
    if not files:
        raise root.missing("caption/ holds no .txt files")
    images, texts = [], []
    for file in files:
        lines = file.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0].strip():
            raise root.malformed(f"caption/{file.name} is empty or starts with an empty line")
        texts.append(lines[0].strip())  # Long-CLIP's Urban1k.py: f.readlines()[0]
        images.append(str(image_dir / f"{file.stem}.jpg"))
    uncaptioned = _uncaptioned(image_dir, {Path(image).name for image in images})
    dropped = _report_dropped(root, uncaptioned, f"image file(s) in {image_dir} have no caption")
    protocol = f"Urban-1k: {len(images):,} images, one long caption each (first line of caption/N.txt), as Long-CLIP"
    return RetrievalSet(root.name, protocol, images, texts, list(range(len(texts))), dropped)


def _uncaptioned(image_dir: Path, listed: set[str]) -> list[str]:
    """Image files in ``image_dir`` whose names are not in ``listed`` (no caption refers to them), as paths."""
    return sorted(
        str(p)
        for p in image_dir.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.name not in listed
    )


def _report_dropped(root: _Root, dropped: list[str], what: str) -> list[str]:
    """Warn that ``dropped`` (paths) are left out, with their count and the first, and return them.

    ``what`` completes "N ..." in the message, e.g. ``"image file(s) in image/ have no caption"``.
    """
    if dropped:
        logger.warning("%s: %d %s and are not evaluated (first: %s)", root.name, len(dropped), what, dropped[0])
    return dropped


def _natural_key(path: Path) -> tuple[Any, ...]:
    """Sort ``2.txt`` before ``10.txt``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem))


def _load_sharegpt4v(root: _Root, rows: int) -> RetrievalSet:
    path = root.find(SHAREGPT4V_JSON, f"sharegpt4v/{SHAREGPT4V_JSON}")
    records = root.read_json(path)
    if not isinstance(records, list):
        raise root.malformed(f"{path.name} is not a JSON list of records")
    if len(records) < rows:
        raise root.malformed(f"{path.name} has {len(records):,} records; this benchmark takes the first {rows:,}")
    images, texts = [], []
    for index, record in enumerate(records[:rows]):
        image = _field(root, record, "image", f"record {index}")
        conversations = _field(root, record, "conversations", f"record {index}", list)
        if len(conversations) < 2:
            raise root.malformed(f'record {index} has no caption (conversations[1]["value"])')
        caption = _field(root, conversations[1], "value", f"record {index} conversations[1]")
        images.append(str(root.path / image))
        texts.append(caption.replace("\n", " ").strip())  # Long-CLIP's share4v_val_dataset
    protocol = (
        f"ShareGPT4V: the first {rows:,} records of {path.name}, one long caption each, as Long-CLIP "
        "(Long-CLIP trains on records 1,000 onwards)"
    )
    return RetrievalSet(root.name, protocol, images, texts, list(range(rows)))


def _dci_annotation(root: _Root, annotations: Path, name: str) -> dict[str, Any]:
    path = annotations / name
    if not path.is_file():
        raise root.missing(f"annotations/{name} (listed in splits.json) does not exist")
    record = root.read_json(path)
    _field(root, record, "image", f"annotations/{name}")
    for key in ("short_caption", "extra_caption"):
        if not isinstance(record.get(key), str):
            raise root.malformed(f"annotations/{name} has no string field {key!r}")
    return record


def _load_dci(root: _Root) -> RetrievalSet:
    root = root.within("densely_captioned_images")
    splits = root.read_json(root.find("splits.json"))
    annotations = root.find("annotations", folder=True)
    photos = root.find("photos", folder=True)
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise root.malformed('splits.json is not {"train": [...], "valid": [...], "test": [...]}')
    images, texts = [], []
    for names in splits.values():  # every split, in file order, as LoTLIP's dci_retrieval_dataset
        for name in names:
            record = _dci_annotation(root, annotations, str(name))
            images.append(str(photos / record["image"]))
            texts.append(f"{record['short_caption'].strip()}\n{record['extra_caption'].strip()}".strip())
    if not texts:
        raise root.malformed("splits.json lists no annotation files")
    protocol = (
        f"DCI: all {len(images):,} images of splits.json, caption short_caption + extra_caption "
        "(LoTLIP dataloaders/dci_retrieval.py)"
    )
    return RetrievalSet(root.name, protocol, images, texts, list(range(len(texts))))


def _load_long_dci(root: _Root) -> RetrievalSet:
    root = root.within("densely_captioned_images")
    annotations = root.find("annotations", folder=True)
    photos = root.find("photos", folder=True)
    files = sorted(p.name for p in annotations.glob("*.json"))
    if not files:
        raise root.missing("annotations/ holds no .json files")
    images, texts, empty = [], [], []
    for name in files:
        record = _dci_annotation(root, annotations, name)
        if len(record["extra_caption"]) == 0:  # TULIP dci_long_part.py skips exactly these
            empty.append(str(photos / record["image"]))
            continue
        images.append(str(photos / record["image"]))
        texts.append(record["extra_caption"].strip())
    if not texts:
        raise root.malformed("no annotation has a non-empty extra_caption")
    protocol = (
        f"Long-DCI: {len(images):,} of {len(files):,} DCI annotations (sorted), caption extra_caption, empty ones "
        "skipped (TULIP open_clip/data_prep/dci_long_part.py)"
    )
    what = "annotation(s) have an empty extra_caption (skipped, as TULIP's Long-DCI does)"
    dropped = _report_dropped(root, empty, what)
    return RetrievalSet(root.name, protocol, images, texts, list(range(len(texts))), dropped)


def _load_docci(root: _Root) -> RetrievalSet:
    path = root.find("docci_descriptions.jsonlines")
    folder = root.find("images", folder=True)
    images, texts, total = [], [], 0
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise root.malformed(f"{path.name} line {number} is not JSON ({e})") from e
            total += 1
            if _field(root, record, "split", f"{path.name} line {number}") != "test":
                continue
            images.append(str(folder / _field(root, record, "image_file", f"{path.name} line {number}")))
            texts.append(_field(root, record, "description", f"{path.name} line {number}").strip())
    if not texts:
        raise root.malformed(f'{path.name} has no record with "split": "test" (of {total:,} records)')
    protocol = f"DOCCI test split: {len(images):,} images, one description each (of {total:,} records)"
    return RetrievalSet(root.name, protocol, images, texts, list(range(len(texts))))


# --- classification loaders ------------------------------------------------------------------------------------------


def imagenet_metadata() -> tuple[list[str], list[str]]:
    """OpenAI's 1,000 ImageNet class names (in wnid order) and 80 prompt templates (with ``{}``), as new lists.

    Shipped in ``longclip/assets/imagenet.json``, extracted from open_clip's ``zero_shot_metadata.py``
    (``IMAGENET_CLASSNAMES``, ``OPENAI_IMAGENET_TEMPLATES``), which took them from OpenAI CLIP's ImageNet notebook.
    """
    names, templates = _imagenet_json()
    return list(names), list(templates)


@lru_cache(maxsize=1)
def _imagenet_json() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files("longclip.assets").joinpath("imagenet.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return tuple(data["classnames"]), tuple(data["templates"])


def _class_folders(root: _Root, folder: Path) -> tuple[list[str], list[str], list[int], list[str]]:
    """ImageFolder's reading: class folders in sorted order, images found recursively (sorted) in each.

    Returns the class names, the images, their labels and the files left out (reported in a warning): files in a
    class folder without an image extension, and files beside the class folders. Hidden files are not counted.
    """
    entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    classes = [entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    if not classes:
        raise root.missing(f"{folder} has no class subfolders")
    outside = [entry.path for entry in entries if entry.is_file() and not entry.name.startswith(".")]
    images, labels, empty, other = [], [], [], []
    for label, name in enumerate(classes):
        found = []
        for directory, _subdirs, files in sorted(os.walk(folder / name, followlinks=True)):
            for file in sorted(files):
                if file.startswith("."):
                    continue
                is_image = os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS
                (found if is_image else other).append(os.path.join(directory, file))
        if not found:
            empty.append(name)
        images.extend(found)
        labels.extend([label] * len(found))
    if empty:
        raise root.malformed(
            f"{len(empty)} class folder(s) hold no image ({', '.join(sorted(IMAGE_EXTENSIONS))}): {empty[:5]}"
        )
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    dropped = _report_dropped(root, other, f"file(s) in the class folders of {folder} are not images ({extensions})")
    dropped += _report_dropped(root, outside, f"file(s) in {folder} lie outside every class folder")
    return classes, images, labels, dropped


def _load_imagenet(root: _Root) -> ClassificationSet:
    folder = root.path / "val"
    if not folder.is_dir():
        raise root.missing("no folder val/")
    wnids, images, labels, dropped = _class_folders(root, folder)
    if len(wnids) != IMAGENET_CLASSES:
        raise root.malformed(f"val/ has {len(wnids)} class folders, expected {IMAGENET_CLASSES}")
    class_names, _ = imagenet_metadata()
    protocol = (
        f"ImageNet-1k val: {len(images):,} images, {IMAGENET_CLASSES} classes in sorted wnid order, OpenAI class "
        "names (CLIP_benchmark imagenet1k-unverified)"
    )
    return ClassificationSet(root.name, images, labels, class_names, protocol, dropped)


def _load_folder(root: _Root) -> ClassificationSet:
    classes, images, labels, dropped = _class_folders(root, root.path)
    names = [name.replace("_", " ") for name in classes]
    protocol = f"image folder {root.path.name}: {len(images):,} images, {len(names)} classes (folder names)"
    return ClassificationSet(root.name, images, labels, names, protocol, dropped)


_MAX_RECONSTRUCT_ELEMENTS = 1024  # numpy pickles rebuild an array as _reconstruct(ndarray, (0,), b"b") + setstate


def _bounded_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct``, refusing the huge empty arrays a forged pickle declares to exhaust memory.

    numpy always writes ``(0,)`` here and restores the real shape from bytes the pickle holds, so a larger shape can
    only come from a forged file.
    """
    dims = shape if isinstance(shape, tuple) else (shape,)
    if (
        not all(isinstance(d, int) and 0 <= d for d in dims)
        or int(np.prod(dims, dtype=object)) > _MAX_RECONSTRUCT_ELEMENTS
    ):
        raise pickle.UnpicklingError(f"refusing a numpy array of declared shape {shape!r} (a forged pickle)")
    return _NUMPY_RECONSTRUCT(subtype, shape, dtype)


_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, and refuses every other global.

    The CIFAR pickles need exactly these globals to rebuild their ``data`` arrays; anything else (``os.system``,
    ``builtins.eval``, ...) would be a pickle that runs code, and is refused before it is resolved. Sizes are
    bounded too: :func:`_read_cifar_pickle` checks every length the opcodes declare against the file before
    unpickling, and ``_reconstruct`` refuses declared shapes numpy never writes.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _bounded_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _bounded_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load the global {module}.{name}: only numpy arrays may appear in a CIFAR pickle"
            ) from None


def _read_cifar_pickle(root: _Root, path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
        # pickletools reads each declared length from the bytes at hand, so a header claiming terabytes fails here
        # as "expected N bytes" instead of making the unpickler allocate them (MemoryError).
        for _ in pickletools.genops(raw):
            pass
        data = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise root.malformed(f"{path.name} cannot be read as a CIFAR pickle ({e})") from e
    except (MemoryError, RecursionError) as e:  # a last resort: whatever slipped past the checks above
        raise root.malformed(f"{path.name} cannot be read as a CIFAR pickle ({type(e).__name__})") from e
    if not isinstance(data, dict):
        raise root.malformed(f"{path.name} holds a {type(data).__name__}, expected a dict")
    # Python 2 pickles read with encoding="latin1" have str keys; re-saved ones may have bytes keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


def _load_cifar(root: _Root, folder: str, test: str, meta: str, labels_key: str, names_key: str) -> ClassificationSet:
    root = root.within(folder)
    test_path, meta_path = root.find(test), root.find(meta)
    batch, metadata = _read_cifar_pickle(root, test_path), _read_cifar_pickle(root, meta_path)
    names = metadata.get(names_key)
    if not isinstance(names, list) or not names:
        raise root.malformed(f"{meta} has no list {names_key!r}")
    # Kept as the file spells them ("aquarium_fish"), as torchvision's ``classes`` and so the original evaluation
    # give them to the prompt templates; load_dataset(clean_class_names=True) reads "_" as a space.
    names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    pixels, labels = batch.get("data"), batch.get(labels_key)
    row = 3 * CIFAR_SIDE * CIFAR_SIDE
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != row:
        found = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise root.malformed(f"{test} has no uint8 'data' array of shape [N, {row}] (found {found})")
    if not isinstance(labels, list | np.ndarray) or len(labels) != len(pixels):
        raise root.malformed(f"{test} has no {labels_key!r} list with one label per row of 'data'")
    # Each row: 1024 red, 1024 green, 1024 blue bytes, each plane row-major; to H x W x 3 as torchvision does.
    images = pixels.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    labels = [int(label) for label in labels]
    if any(not 0 <= label < len(names) for label in labels):
        raise root.malformed(f"{test} has a label outside [0, {len(names)})")
    protocol = f"{folder}/{test}: {len(labels):,} images of {CIFAR_SIDE}x{CIFAR_SIDE}, {len(names)} classes"
    return ClassificationSet(root.name, list(np.ascontiguousarray(images)), labels, names, protocol)


# --- the table -------------------------------------------------------------------------------------------------------


class DatasetSpec(NamedTuple):
    """One registered data set: its kind, how to read it, and the layout its root folder must have."""

    kind: Literal["retrieval", "classification"]
    loader: Callable[[_Root], Dataset]
    layout: str


_FLICKR_IMAGES = "images in flickr30k-images/ (or Kaggle's flickr30k_images/)"
_DCI_LAYOUT = (
    "densely_captioned_images/ (or ROOT itself) holding splits.json, annotations/*.json (from dci.tar.gz) and "
    "photos/ (the SA-1B sa_000138.tar images)"
)

DATASETS: dict[str, DatasetSpec] = {
    "coco": DatasetSpec(
        "retrieval", _load_coco, "annotations/captions_val2017.json and val2017/*.jpg (COCO 2017 val)"
    ),
    "flickr30k": DatasetSpec(
        "retrieval",
        _load_flickr30k,
        f"results_20130124.token ('NAME.jpg#N<TAB>caption', original release) or Kaggle's results.csv, and "
        f"{_FLICKR_IMAGES}; evaluates all 31,783 images",
    ),
    "flickr30k-1k": DatasetSpec(
        "retrieval",
        _load_flickr30k_1k,
        f"dataset_flickr30k.json (Karpathy splits; the 'test' records) or CLIP_benchmark's "
        f"flickr30k_test_karpathy.txt, and {_FLICKR_IMAGES}",
    ),
    "urban1k": DatasetSpec("retrieval", _load_urban1k, "image/N.jpg and caption/N.txt (Long-CLIP's Urban-1k)"),
    "sharegpt4v-1k": DatasetSpec(
        "retrieval",
        lambda root: _load_sharegpt4v(root, 1_000),
        f"{SHAREGPT4V_JSON} (or sharegpt4v/{SHAREGPT4V_JSON}) with at least 1,000 records, its image paths "
        "(coco/train2017/..., sam/images/..., llava/...) relative to ROOT (ShareGPT4V's data/ folder)",
    ),
    "sharegpt4v-10k": DatasetSpec(
        "retrieval",
        lambda root: _load_sharegpt4v(root, 10_000),
        f"{SHAREGPT4V_JSON} (or sharegpt4v/{SHAREGPT4V_JSON}) with at least 10,000 records, its image paths "
        "relative to ROOT (ShareGPT4V's data/ folder)",
    ),
    "dci": DatasetSpec("retrieval", _load_dci, _DCI_LAYOUT),
    "long-dci": DatasetSpec("retrieval", _load_long_dci, _DCI_LAYOUT),
    "docci": DatasetSpec(
        "retrieval", _load_docci, "docci_descriptions.jsonlines and images/ (from docci_images.tar.gz)"
    ),
    "imagenet": DatasetSpec(
        "classification",
        _load_imagenet,
        "val/<wnid>/*.JPEG: 1000 class folders named by WordNet id (torchvision ImageFolder layout)",
    ),
    "cifar10": DatasetSpec(
        "classification",
        lambda root: _load_cifar(root, "cifar-10-batches-py", "test_batch", "batches.meta", "labels", "label_names"),
        "cifar-10-batches-py/test_batch and batches.meta (the python version), or that folder itself",
    ),
    "cifar100": DatasetSpec(
        "classification",
        lambda root: _load_cifar(root, "cifar-100-python", "test", "meta", "fine_labels", "fine_label_names"),
        "cifar-100-python/test and meta (the python version), or that folder itself",
    ),
    "folder": DatasetSpec(
        "classification",
        _load_folder,
        "one subfolder per class holding its images (class name = folder name, '_' read as a space)",
    ),
}


def load_dataset(name: str, root: PathLike, *, clean_class_names: bool = False) -> Dataset:
    """Read the registered data set ``name`` from its local copy at ``root``.

    Args:
        name: A key of :data:`DATASETS` (``"coco"``, ``"urban1k"``, ``"cifar10"``, ...).
        root: The folder holding the data set in its published layout (``DATASETS[name].layout``).
        clean_class_names: Read ``_`` in class names as a space (CIFAR-100's ``"aquarium_fish"`` becomes
            ``"aquarium fish"``). Off by default: the original Long-CLIP evaluation, through torchvision, puts the
            names into the prompts as the files spell them, so the papers' numbers use the underscored names.

    Returns:
        A :class:`RetrievalSet` or :class:`ClassificationSet`.

    Raises:
        ValueError: ``name`` is not registered, or a file of the data set is malformed (the message names the data
            set, the root, the problem and the expected layout).
        FileNotFoundError: ``root``, a file or folder the layout requires, or every image the set lists, is missing.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise ValueError(f"unknown data set {name!r}; registered: {', '.join(DATASETS)}")
    path = Path(root).expanduser()
    context = _Root(name, path, spec.layout)
    if not path.is_dir():
        raise context.missing(f"{path} is not a directory")
    dataset = spec.loader(context)
    if clean_class_names and isinstance(dataset, ClassificationSet):
        dataset = dataclasses.replace(dataset, class_names=[n.replace("_", " ") for n in dataset.class_names])
    if isinstance(dataset, RetrievalSet):
        _check_image_files(context, dataset.images)
    logger.info("%s: %s", name, dataset.protocol)
    return dataset


def _check_image_files(root: _Root, images: Sequence[str]) -> None:
    """Fail if no listed image exists (a wrong root); warn if some are missing (they are skipped later)."""
    missing = [path for path in images if not os.path.isfile(path)]
    if len(missing) == len(images):
        raise root.missing(f"none of the {len(images):,} images it lists exists (first: {missing[0]})")
    if missing:
        logger.warning(
            "%s: %d of %d images are missing (first: %s); they and their texts will be left out",
            root.name,
            len(missing),
            len(images),
            missing[0],
        )
