"""Shared pieces of the search, serving and export tests: a tiny saved model and a small folder of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import tiny_clip
from PIL import Image

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (240, 230, 40),
    "purple": (150, 40, 180),
    "white": (250, 250, 250),
}


def save_tiny_model(directory: Path, seed: int = 0, context: int = 248) -> Path:
    """A tiny random CLIP saved as a transformers directory that ``longclip.load`` reads."""
    tiny_clip(context, seed=seed).save_pretrained(directory)
    return directory


def make_photos(root: Path) -> dict[str, Path]:
    """Six small images in nested folders (a coloured square on a patterned background), by relative path."""
    paths = {}
    rng = np.random.default_rng(0)
    for i, (name, colour) in enumerate(COLOURS.items()):
        pixels = rng.integers(0, 80, size=(40, 48, 3), dtype=np.uint8)
        pixels[8 + i : 28 + i, 10:34] = colour
        relative = f"{'trip' if i % 2 else 'home'}/{name}.png"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        paths[relative] = path
    return paths
