"""Feature files: a float32 ``.npy`` and the ``.json`` that describes it, written and read as one unit.

The two files cannot be replaced in one atomic step, so the description records the SHA-256 of the ``.npy`` bytes
and its shape: each file is written to a temporary name, flushed to disk, then renamed over the old one (the
``.npy`` first). A process killed between the two renames leaves new features beside the old description, and
:func:`load_features` refuses that pair instead of returning features with the wrong items.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_features", "save_features"]


def save_features(path: str | os.PathLike, features: np.ndarray, metadata: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``features`` to ``path`` (``.npy``) and ``metadata`` plus the file's hash to ``path`` with ``.json``.

    Returns:
        The ``.npy`` and ``.json`` paths.
    """
    npy = Path(path)
    description = npy.with_suffix(".json")
    npy.parent.mkdir(parents=True, exist_ok=True)
    npy_tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
    json_tmp = description.with_name(f".{description.name}.{os.getpid()}.tmp")
    try:
        with open(npy_tmp, "wb") as f:
            np.save(f, features)
            f.flush()
            os.fsync(f.fileno())
        record = {**metadata, "shape": list(features.shape), "sha256": _sha256(npy_tmp)}
        with open(json_tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(npy_tmp, npy)
        os.replace(json_tmp, description)
    finally:
        for leftover in (npy_tmp, json_tmp):
            leftover.unlink(missing_ok=True)
    return npy, description


def load_features(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a feature file written by :func:`save_features` (``longclip embed``) and its description.

    Raises:
        FileNotFoundError: If either file is missing.
        ValueError: If the ``.npy`` is not the one the ``.json`` describes (another run's, or an interrupted write).
    """
    npy = Path(path)
    description = npy.with_suffix(".json")
    with open(description, encoding="utf-8") as f:
        metadata = json.load(f)
    digest = _sha256(npy)
    if metadata.get("sha256") != digest:
        raise ValueError(
            f"{npy} is not the file {description} describes (its SHA-256 differs): they come from different runs, "
            "or a write was interrupted; embed again"
        )
    features = np.load(npy, allow_pickle=False)
    if list(features.shape) != metadata.get("shape"):
        raise ValueError(f"{npy} has shape {list(features.shape)}, but {description} says {metadata.get('shape')}")
    return features, metadata


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
