"""Hostile images and preprocessing configs: bounded work, one-line errors naming the file and the field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longclip.images import MAX_RESIZED_PIXELS, ImageLoadError, ImageTransform, validate_preprocessing


def _tiny_png(path: Path, width: int, height: int) -> Path:
    Image.new("RGB", (width, height), (200, 10, 10)).save(path, optimize=True)
    return path


def _preprocess(path: Path, size: int = 224) -> tuple[int, ...]:
    return tuple(ImageTransform.for_size(size)(path).shape)


@pytest.mark.parametrize(("width", "height"), [(100_000, 1), (1, 100_000), (60_000, 3), (5, 40_000)])
def test_aspect_ratio_bombs_become_image_load_errors(tmp_path: Path, bounded, width: int, height: int) -> None:
    # A few hundred bytes whose short-side resize to 224 would need gigabytes.
    path = _tiny_png(tmp_path / "bomb.png", width, height)
    assert path.stat().st_size < 2000
    message = bounded(_preprocess, path, memory_mb=512).raised("ImageLoadError", match="aspect ratio")
    assert str(path) in message and "MAX_RESIZED_PIXELS" in message


def test_extreme_but_bounded_aspect_ratio_still_works(tmp_path: Path, bounded) -> None:
    # 300:1 resizes to 67,200 x 224 = 15 Mpx, under the bound: accepted, and within a modest memory budget.
    path = _tiny_png(tmp_path / "panorama.png", 3000, 10)
    assert int(224 * 3000 / 10) * 224 <= MAX_RESIZED_PIXELS
    assert bounded(_preprocess, path, memory_mb=768).ok() == (3, 224, 224)


def test_the_bound_scales_with_the_output_size(tmp_path: Path, bounded) -> None:
    # The same 300:1 image at 336 needs 100,800 x 336 = 34 Mpx: refused, since the work grows with the size too.
    path = _tiny_png(tmp_path / "panorama.png", 3000, 10)
    bounded(_preprocess, path, 336, memory_mb=512).raised("ImageLoadError", match="aspect ratio")


def test_skip_errors_skips_an_aspect_ratio_bomb(tmp_path: Path, bounded) -> None:
    from conftest import tiny_clip  # tests/conftest.py: this folder is a package, so its conftest is not 'conftest'

    from longclip import LongCLIPModel

    bomb = _tiny_png(tmp_path / "bomb.png", 100_000, 1)
    good = _tiny_png(tmp_path / "good.png", 40, 30)

    def embed() -> list[bool]:
        features = LongCLIPModel(tiny_clip()).embed_images([good, bomb], skip_errors=True)
        return [bool(math.isnan(row[0])) for row in features.tolist()]

    assert bounded(embed, memory_mb=1024, timeout_s=60).ok() == [False, True]


def _write_config(folder: Path, **changes) -> Path:
    ImageTransform.for_size(32).image_processor.save_pretrained(folder)
    path = folder / "preprocessor_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))  # NaN and Infinity are written as json5-style literals, as a hand edit would
    return folder


BAD_CONFIGS = [
    ({"image_std": [0.26, 0.0, 0.27]}, "image_std must be positive"),
    ({"image_std": 0}, "image_std must be positive"),
    ({"image_mean": [float("nan"), 0.4, 0.4]}, "image_mean must be 3 finite numbers"),
    ({"image_std": [0.2, float("inf"), 0.2]}, "image_std must be 3 finite numbers"),
    ({"image_mean": [0.5, 0.5]}, "image_mean must be 3 finite numbers"),
    ({"image_mean": "grey"}, "image_mean"),
    ({"size": {"shortest_edge": 100_000}}, r"size\['shortest_edge'\] must be an integer from 1 to 4096"),
    ({"crop_size": {"height": 100_000, "width": 100_000}}, r"crop_size\['height'\] must be an integer from 1"),
    ({"crop_size": {"height": 0, "width": 0}}, r"crop_size\['height'\]"),
    ({"size": {"shortest_edge": -5}}, r"size\['shortest_edge'\]"),
    ({"resample": 99}, "resample must be one of PIL's filters"),
    ({"rescale_factor": 0}, "rescale_factor must be a positive finite number"),
]


@pytest.mark.parametrize(("changes", "match"), BAD_CONFIGS)
def test_bad_preprocessing_configs_are_refused_naming_the_file_and_field(
    tmp_path: Path, bounded, changes: dict, match: str
) -> None:
    folder = _write_config(tmp_path, **changes)
    message = bounded(ImageTransform.from_directory, folder, 32, memory_mb=768).raised("ValueError", match=match)
    assert "preprocessor_config.json" in message


def test_preprocessing_must_agree_with_the_model_image_size(tmp_path: Path) -> None:
    folder = _write_config(tmp_path)
    with pytest.raises(ValueError, match=r"produces 32x32 images but the model's image size is 224"):
        ImageTransform.from_directory(folder, 224)
    assert ImageTransform.from_directory(folder, 32).image_size == 32


def test_validate_preprocessing_is_the_loaders_check() -> None:
    processor = ImageTransform.for_size(224).image_processor
    assert validate_preprocessing(processor) == 224
    assert validate_preprocessing(processor, 224) == 224
    with pytest.raises(ValueError, match="model's image size is 336"):
        validate_preprocessing(processor, 336)


def test_a_zero_std_never_reaches_the_pixels() -> None:
    from transformers import CLIPImageProcessorPil

    with pytest.raises(ValueError, match="image_std"):
        ImageTransform(CLIPImageProcessorPil(image_std=[0.0, 0.0, 0.0]))


def test_an_unreadable_config_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        ImageTransform.from_directory(tmp_path, 224)


def test_image_load_error_from_the_bound_names_arrays_too() -> None:
    with pytest.raises(ImageLoadError, match="<array>.*aspect ratio"):
        ImageTransform.for_size(224)(np.zeros((1, 90_000, 3), dtype=np.uint8))
