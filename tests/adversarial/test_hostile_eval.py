"""Hostile evaluation data: forged CIFAR pickles that declare huge sizes, images no caption refers to."""

from __future__ import annotations

import logging
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longclip.eval.datasets import load_dataset


def make_cifar(root: Path) -> Path:
    """A genuine four-image CIFAR-10 release (python version), written by pickle as the original was."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = np.arange(4 * 3072, dtype=np.int64).reshape(4, 3072).astype(np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": rows, "labels": [0, 1, 2, 1]}, protocol=4))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["airplane", "bird", "cat"]}, protocol=4))
    return root


def make_urban1k(root: Path) -> Path:
    """Urban-1k's layout: image/N.jpg beside caption/N.txt."""
    (root / "image").mkdir(parents=True)
    (root / "caption").mkdir()
    for n in (1, 2):
        Image.new("RGB", (8, 8), (n * 50, 0, 0)).save(root / "image" / f"{n}.jpg")
        (root / "caption" / f"{n}.txt").write_text(f"a long caption {n}\n", encoding="utf-8")
    return root


def _forge(root: Path, payload: bytes) -> Path:
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(payload)
    return root


def _reconstruct_with_shape(shape: tuple[int, ...]) -> bytes:
    """{"data": _reconstruct(ndarray, shape, b"b")}, written opcode by opcode: numpy itself always writes (0,)."""
    shape_opcodes = pickletools.optimize(pickle.dumps(shape, protocol=3))[2:-1]  # drop the header and STOP
    return (
        b"\x80\x03}X\x04\x00\x00\x00data"  # PROTO 3, EMPTY_DICT, the key "data"
        + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"  # two GLOBALs
        + shape_opcodes
        + b"C\x01b\x87Rs."  # SHORT_BINBYTES b"b", TUPLE3, REDUCE, SETITEM, STOP
    )


def _load_cifar10(root: Path) -> int:
    return len(load_dataset("cifar10", root).labels)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc",  # BINBYTES8 declaring a terabyte
        b"\x80\x04\x8d" + struct.pack("<Q", 1 << 38) + b"abc",  # BINUNICODE8 declaring 256 GB
        b"\x80\x02X" + struct.pack("<I", 0xFFFFFFF0) + b"abc",  # BINUNICODE declaring 4 GB
    ],
    ids=["binbytes8", "binunicode8", "binunicode"],
)
def test_declared_lengths_past_the_file_are_refused(tmp_path: Path, bounded, payload: bytes) -> None:
    root = _forge(make_cifar(tmp_path), payload)
    message = bounded(_load_cifar10, root, memory_mb=512).raised("ValueError", match="cannot be read as a CIFAR")
    assert "test_batch" in message


@pytest.mark.parametrize("shape", [(10**11,), (10**6, 10**6), (2048,)])
def test_huge_reconstruct_shapes_are_refused(tmp_path: Path, bounded, shape: tuple[int, ...]) -> None:
    root = _forge(make_cifar(tmp_path), _reconstruct_with_shape(shape))
    bounded(_load_cifar10, root, memory_mb=512).raised("ValueError", match=r"declared shape .* \(a forged pickle\)")


def test_the_forgery_helper_only_changes_the_shape(tmp_path: Path) -> None:
    # With numpy's own (0,) the same payload loads: the refusal above is about the shape and nothing else.
    blob = _reconstruct_with_shape((0,))
    assert pickle.loads(blob)["data"].shape == (0,)


def test_genuine_cifar_pickles_still_load(tmp_path: Path, bounded) -> None:
    assert bounded(_load_cifar10, make_cifar(tmp_path)).ok() == 4


def test_images_without_captions_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_urban1k(tmp_path)
    stray = root / "image" / "999.jpg"
    stray.write_bytes((root / "image" / "1.jpg").read_bytes())
    with caplog.at_level(logging.WARNING, logger="longclip.eval.datasets"):
        data = load_dataset("urban1k", root)
    assert str(stray) not in data.images and data.dropped == [str(stray)]
    assert (
        "1 image file(s)" in caplog.text and f"have no caption and are not evaluated (first: {stray})" in caplog.text
    )


def test_no_warning_when_every_image_has_a_caption(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="longclip.eval.datasets"):
        data = load_dataset("urban1k", make_urban1k(tmp_path))
    assert "no caption" not in caplog.text and data.dropped == []
