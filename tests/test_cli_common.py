"""The CLI's shared pieces: one set of image suffixes, flag validation, the one-line error boundary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from longclip.cli.common import expand_images
from longclip.eval.datasets import load_dataset
from longclip.images import IMAGE_EXTENSIONS


def _image(path: Path) -> None:
    Image.fromarray(np.full((8, 8, 3), 120, dtype=np.uint8)).save(path)


def test_one_set_of_image_suffixes_for_embed_eval_and_shards(tmp_path):
    import longclip.cli.common
    import longclip.data.webdataset as shards
    import longclip.eval.datasets

    assert longclip.cli.common.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert longclip.eval.datasets.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert set(shards._IMAGE_KEYS) == {suffix[1:] for suffix in IMAGE_EXTENSIONS}
    # .gif was missing from eval's own set, .ppm from the CLI's: both are now images everywhere.
    for name in ("a.gif", "b.ppm", "c.jpg"):
        _image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [Path(p).name for p in expand_images([str(tmp_path)])] == ["a.gif", "b.ppm", "c.jpg"]
    for cls in ("cats", "dogs"):
        (tmp_path / "classes" / cls).mkdir(parents=True)
    _image(tmp_path / "classes" / "cats" / "x.gif")
    _image(tmp_path / "classes" / "dogs" / "y.ppm")
    dataset = load_dataset("folder", tmp_path / "classes")
    assert [Path(p).name for p in dataset.images] == ["x.gif", "y.ppm"]
