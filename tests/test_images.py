"""Tests for longclip.images: robust image loading and CLIP preprocessing."""

from __future__ import annotations

import contextlib
import gc
import io
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from skimage import data

from longclip.images import MAX_IMAGE_PIXELS, ImageLoadError, ImageTransform, open_image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


# --------------------------------------------------------------------------------------------------------- helpers


def as_array(image: Image.Image) -> np.ndarray:
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    return np.asarray(image)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def png_rgb16(pixels: np.ndarray) -> bytes:
    """Encode an HxWx3 uint16 array as a 16-bit RGB PNG (Pillow cannot write those itself)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def reference_clip(rgb: np.ndarray, size: int) -> np.ndarray:
    """OpenAI CLIP's preprocessing written independently with PIL + numpy, as a [3, size, size] float32 array.

    torchvision's Resize on a PIL image (short side -> size, long side int(size * long / short), PIL bicubic),
    CenterCrop (offsets int(round((h - size) / 2)), Python's round: half to even), ToTensor (float32 / 255) and
    Normalize (float32 subtract, divide).
    """
    height, width = rgb.shape[:2]
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    resized = np.asarray(Image.fromarray(rgb).resize((new_width, new_height), Image.BICUBIC))
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    crop = resized[top : top + size, left : left + size].astype(np.float32) / np.float32(255)
    mean, std = CLIP_MEAN.astype(np.float32), CLIP_STD.astype(np.float32)
    return ((crop - mean) / std).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def transform() -> ImageTransform:
    return ImageTransform.for_size(224)


@pytest.fixture
def chelsea_jpeg(tmp_path: Path) -> Path:
    return save(Image.fromarray(data.chelsea()), tmp_path / "chelsea.jpg", quality=95)


# ------------------------------------------------------------------------------------------------- real photos


def test_png_round_trip_is_exact(tmp_path: Path) -> None:
    original = data.astronaut()
    path = save(Image.fromarray(original), tmp_path / "astronaut.png")
    np.testing.assert_array_equal(as_array(open_image(path)), original)
    # str paths work as well as Path objects
    np.testing.assert_array_equal(as_array(open_image(str(path))), original)


def test_jpeg_round_trip(chelsea_jpeg: Path) -> None:
    original = data.chelsea()
    image = open_image(chelsea_jpeg)
    assert image.size == (original.shape[1], original.shape[0])
    assert np.abs(as_array(image).astype(int) - original).mean() < 3


@pytest.mark.parametrize(
    ("orientation", "rotate"),
    [
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored rotated: must be turned 90 degrees clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, rotate) -> None:
    original = data.chelsea()  # 300 x 451, not square, so a missing rotation shows in the size
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(Image.fromarray(original), tmp_path / "rotated.jpg", quality=95, exif=exif)

    upright = as_array(open_image(path))
    expected_shape = rotate(original).shape
    assert upright.shape == expected_shape
    # Against the same decoded JPEG pixels, ignoring the tag: must be exact.
    with Image.open(path) as stored:
        stored_pixels = np.asarray(stored.convert("RGB"))
    np.testing.assert_array_equal(upright, rotate(stored_pixels))
    # And close to the original photo (JPEG loss only).
    assert np.abs(upright.astype(int) - rotate(original)).mean() < 3


def test_exif_orientation_applied_to_pil_input(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(Image.fromarray(data.chelsea()), tmp_path / "rotated.jpg", exif=exif)
    with Image.open(path) as opened:
        image = open_image(opened)
        assert opened.size == (451, 300)  # the caller's image is left alone
    assert image.size == (300, 451)


# ------------------------------------------------------------------------------------------------------- modes


def test_rgba_transparent_pixels_become_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 10, 4), dtype=np.uint8)  # colour under the transparent pixels is black
    rgba[:, 5:] = (200, 100, 50, 255)  # right half opaque
    rgba[0, 0] = (0, 0, 200, 128)  # one half-transparent pixel
    path = save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "alpha.png")

    out = as_array(open_image(path)).astype(int)
    assert (out[1:, :5] == 255).all()
    assert (out[:, 5:] == (200, 100, 50)).all()
    alpha = 128 / 255
    expected = np.array([0, 0, 200]) * alpha + 255 * (1 - alpha)
    np.testing.assert_allclose(out[0, 0], expected, atol=1)


def test_la_transparent_pixels_become_white(tmp_path: Path) -> None:
    la = np.zeros((4, 6, 2), dtype=np.uint8)
    la[:, 3:] = (77, 255)
    path = save(Image.fromarray(la, mode="LA"), tmp_path / "la.png")
    out = as_array(open_image(path))
    assert (out[:, :3] == 255).all()
    assert (out[:, 3:] == 77).all()


def test_palette_with_transparent_index(tmp_path: Path) -> None:
    palette_image = Image.new("P", (6, 4), 0)
    palette_image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)  # index 0 black, index 1 green
    for x in range(3, 6):
        for y in range(4):
            palette_image.putpixel((x, y), 1)
    path = save(palette_image, tmp_path / "palette.png", transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and check.info.get("transparency") == 0

    out = as_array(open_image(path))
    assert (out[:, :3] == 255).all()
    assert (out[:, 3:] == (10, 200, 30)).all()


def test_palette_without_transparency(tmp_path: Path) -> None:
    palette_image = Image.fromarray(data.astronaut()).convert("P")
    path = save(palette_image, tmp_path / "palette.gif")
    with Image.open(path) as stored:
        expected = np.asarray(stored.convert("RGB"))
    np.testing.assert_array_equal(as_array(open_image(path)), expected)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_grayscale(tmp_path: Path, suffix: str) -> None:
    grey = data.camera()
    path = save(Image.fromarray(grey, mode="L"), tmp_path / f"grey.{suffix}")
    out = as_array(open_image(path))
    assert out.shape == (*grey.shape, 3)
    assert (out == out[:, :, :1]).all()  # R == G == B
    tolerance = 0 if suffix == "png" else 3
    assert np.abs(out[:, :, 0].astype(int) - grey).mean() <= tolerance


def test_bilevel_mode_1(tmp_path: Path) -> None:
    bits = np.zeros((5, 8), dtype=bool)
    bits[:, 4:] = True
    path = save(Image.fromarray(bits), tmp_path / "bits.png")
    out = as_array(open_image(path))
    assert (out[:, :4] == 0).all() and (out[:, 4:] == 255).all()


def test_cmyk_tiff_is_exact(tmp_path: Path) -> None:
    original = data.chelsea()
    path = save(Image.fromarray(original).convert("CMYK"), tmp_path / "cmyk.tiff")
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    # PIL's RGB -> CMYK puts everything in C, M, Y with K = 0, which converts back losslessly.
    np.testing.assert_array_equal(as_array(open_image(path)), original)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    original = data.chelsea()
    path = save(Image.fromarray(original).convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    assert np.abs(as_array(open_image(path)).astype(int) - original).mean() < 3


def test_ycbcr_pil_input() -> None:
    ycbcr = Image.fromarray(data.astronaut()).convert("YCbCr")
    np.testing.assert_array_equal(as_array(open_image(ycbcr)), np.asarray(ycbcr.convert("RGB")))


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 256).round().astype(np.uint16).reshape(64, 256)
    path = save(Image.fromarray(ramp), tmp_path / "deep.png")
    with Image.open(path) as check:
        assert check.mode == "I;16"

    out = as_array(open_image(path)).astype(int)
    expected = ramp.astype(int) // 257
    assert np.abs(out[:, :, 0] - expected).max() <= 1
    assert (out == out[:, :, :1]).all()
    # PIL's plain convert() clips at 255 and would make almost all of this white.
    assert (out == 255).mean() < 0.01
    assert 120 <= np.median(out) <= 135


def test_16bit_grayscale_png_with_transparent_value(tmp_path: Path) -> None:
    values = np.full((4, 4), 30000, dtype=np.uint16)
    values[0, :] = 1000
    path = save(Image.fromarray(values), tmp_path / "deep_trns.png", transparency=1000)
    out = as_array(open_image(path)).astype(int)
    assert (out[0] == 255).all()
    assert (np.abs(out[1:] - 30000 // 257) <= 1).all()


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_16bit_pil_modes(dtype: str) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=dtype)
    image = Image.fromarray(values)
    assert image.mode in {"I;16", "I;16B"}
    out = as_array(open_image(image))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 1, 128, 255])


def test_mode_i_is_scaled_by_value_range() -> None:
    sixteen = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.int32))
    assert sixteen.mode == "I"
    np.testing.assert_array_equal(as_array(open_image(sixteen))[0, :, 0], [0, 100, 255])
    eight = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))
    np.testing.assert_array_equal(as_array(open_image(eight))[0, :, 0], [0, 100, 255])


def test_16bit_rgb_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, size=(6, 7, 3), dtype=np.uint16)
    pixels[0, 0] = (65535, 0, 32768)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_rgb16(pixels))

    out = as_array(open_image(path)).astype(int)
    assert np.abs(out - pixels / 257).max() <= 1
    assert tuple(out[0, 0]) in {(255, 0, 128), (255, 0, 127)}


def test_float_mode_f() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    np.testing.assert_array_equal(as_array(open_image(unit))[0, :, 0], [0, 128, 255])
    # max > 1: taken as [0, 255] and clipped
    byte_scale = Image.fromarray(np.array([[-5.0, 100.4, 300.0]], dtype=np.float32))
    np.testing.assert_array_equal(as_array(open_image(byte_scale))[0, :, 0], [0, 100, 255])


# ------------------------------------------------------------------------------------------ arrays, bytes, PIL


def test_numpy_uint8_inputs() -> None:
    photo = data.astronaut()
    np.testing.assert_array_equal(as_array(open_image(photo)), photo)
    grey = data.camera()
    np.testing.assert_array_equal(as_array(open_image(grey)), np.repeat(grey[:, :, None], 3, axis=2))
    # Non-contiguous views are fine.
    np.testing.assert_array_equal(as_array(open_image(photo[::2, ::-1])), photo[::2, ::-1])
    # The result does not alias the caller's array.
    source = photo.copy()
    out = open_image(source)
    source[...] = 0
    np.testing.assert_array_equal(as_array(out), photo)


def test_numpy_rgba_is_composited_over_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[1, 1] = (10, 20, 30, 255)
    out = as_array(open_image(rgba))
    assert (out[0] == 255).all() and (out[1, 0] == 255).all()
    assert tuple(out[1, 1]) == (10, 20, 30)


def test_numpy_uint16_input() -> None:
    values = np.array([[[0, 257, 65535], [32896, 1000, 60000]]], dtype=np.uint16)
    out = as_array(open_image(values)).astype(int)
    assert np.abs(out - values.astype(int) // 257).max() <= 1
    assert tuple(out[0, 0]) == (0, 1, 255)


def test_numpy_float_inputs() -> None:
    photo = data.astronaut()
    out = as_array(open_image(photo.astype(np.float64) / 255.0))
    np.testing.assert_array_equal(out, photo)
    out = as_array(open_image(photo.astype(np.float32)))  # values above 1: [0, 255] scale
    np.testing.assert_array_equal(out, photo)


def test_numpy_bool_input() -> None:
    mask = np.array([[True, False]])
    np.testing.assert_array_equal(as_array(open_image(mask))[0, :, 0], [255, 0])


@pytest.mark.parametrize(
    "bad",
    [np.zeros((3, 4, 5), np.uint8), np.zeros((2, 3, 4, 3), np.uint8), np.zeros((0, 4, 3), np.uint8)],
)
def test_numpy_bad_shapes(bad: np.ndarray) -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        open_image(bad)
    assert excinfo.value.path == "<array>"
    assert str(excinfo.value).startswith("cannot load image <array>: ")


def test_bytes_input() -> None:
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    np.testing.assert_array_equal(as_array(open_image(buffer.getvalue())), data.astronaut())

    with pytest.raises(ImageLoadError) as excinfo:
        open_image(b"definitely not an image")
    assert excinfo.value.path == "<bytes>"
    assert "<bytes>" in str(excinfo.value)


def test_pil_input_returns_new_rgb_image() -> None:
    source = Image.fromarray(data.astronaut())
    out = open_image(source)
    assert out is not source
    out.putpixel((0, 0), (1, 2, 3))
    assert source.getpixel((0, 0)) != (1, 2, 3)


def test_unsupported_type() -> None:
    with pytest.raises(TypeError):
        open_image(12345)  # type: ignore[arg-type]


def test_invalid_max_pixels() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        open_image(data.astronaut(), max_pixels=0)


# ------------------------------------------------------------------------------------------ bombs and bad files


def test_default_pixel_limit() -> None:
    assert MAX_IMAGE_PIXELS == 128_000_000


def test_decompression_bomb_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("L", (2000, 2000)), tmp_path / "bomb.png")

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixel data was decoded before the size check")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageLoadError) as excinfo:
        open_image(path, max_pixels=1_000_000)
    message = str(excinfo.value)
    assert excinfo.value.path == str(path)
    assert str(path) in message
    assert "4000000" in message and "1000000" in message
    # The same guard works for bytes.
    with pytest.raises(ImageLoadError, match="4000000"):
        open_image(path.read_bytes(), max_pixels=1_000_000)


def test_image_within_limit_loads(tmp_path: Path) -> None:
    path = save(Image.new("L", (2000, 2000), 7), tmp_path / "big.png")
    assert open_image(path, max_pixels=4_000_000).size == (2000, 2000)


def test_pillow_bomb_error_becomes_image_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("L", (100, 100)), tmp_path / "pil_bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises above 2000 pixels
    with pytest.raises(ImageLoadError) as excinfo:
        open_image(path)
    assert str(path) in str(excinfo.value)
    assert "decompression bomb" in excinfo.value.reason


def test_pillow_bomb_warning_follows_our_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("L", (100, 100)), tmp_path / "pil_warn.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # Pillow warns above 6000 and raises above 12000
    # Our limit is stricter than Pillow's: its warning is escalated into an ImageLoadError.
    with pytest.raises(ImageLoadError, match="Pillow"):
        open_image(path, max_pixels=5000)
    # Our limit is looser: the image loads and Pillow's warning does not leak out.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert open_image(path, max_pixels=11000).size == (100, 100)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == 6000  # the global is left alone


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format=fmt)
    encoded = buffer.getvalue()
    path = tmp_path / f"truncated.{fmt.lower()}"
    path.write_bytes(encoded[: len(encoded) // 2])

    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(ImageLoadError) as excinfo:
        open_image(path)
    assert excinfo.value.path == str(path)
    assert str(path) in str(excinfo.value)
    assert "truncated" in excinfo.value.reason


def test_text_file_with_image_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a JPEG\n")
    with pytest.raises(ImageLoadError) as excinfo:
        open_image(path)
    assert excinfo.value.path == str(path)
    assert str(excinfo.value) == f"cannot load image {path}: {excinfo.value.reason}"
    assert isinstance(excinfo.value, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.png"
    with pytest.raises(FileNotFoundError) as excinfo:
        open_image(path)
    assert str(path) in str(excinfo.value)


def test_directory_is_an_image_load_error(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        open_image(tmp_path)
    assert excinfo.value.path == str(tmp_path)


def test_no_file_handles_leak(tmp_path: Path, chelsea_jpeg: Path) -> None:
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes(chelsea_jpeg.read_bytes()[:2000])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_image(chelsea_jpeg)
        for bad in (truncated, tmp_path / "missing.jpg"):
            with contextlib.suppress(ImageLoadError, FileNotFoundError):
                open_image(bad)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_image_load_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(ImageLoadError("a.png", "broken")))
    assert (error.path, error.reason, str(error)) == ("a.png", "broken", "cannot load image a.png: broken")


# ----------------------------------------------------------------------------------------------- ImageTransform


def test_for_size_settings(transform: ImageTransform) -> None:
    processor = transform.image_processor
    assert transform.image_size == 224
    assert processor.size["shortest_edge"] == 224
    assert (processor.crop_size["height"], processor.crop_size["width"]) == (224, 224)
    assert processor.resample == Image.BICUBIC
    np.testing.assert_allclose(processor.image_mean, CLIP_MEAN)
    np.testing.assert_allclose(processor.image_std, CLIP_STD)
    assert processor.do_convert_rgb and processor.do_center_crop and processor.do_normalize


def test_transform_output(transform: ImageTransform, chelsea_jpeg: Path) -> None:
    out = transform(chelsea_jpeg)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (3, 224, 224)
    assert out.dtype == torch.float32


# (height, width) cut from the top-left of chelsea (300 x 451) and the size after the shortest-edge resize.
REFERENCE_CASES = [
    ((300, 451), (224, 336)),  # chelsea as is, landscape, even margin
    ((300, 305), (224, 227)),  # odd horizontal margin of 3
    ((300, 290), (231, 224)),  # portrait, odd vertical margin of 7
]


@pytest.mark.parametrize(("shape", "resized"), REFERENCE_CASES)
def test_transform_matches_reference(
    transform: ImageTransform, shape: tuple[int, int], resized: tuple[int, int]
) -> None:
    rgb = np.ascontiguousarray(data.chelsea()[: shape[0], : shape[1]])
    assert rgb.shape[:2] == shape
    out = transform(rgb).numpy()
    np.testing.assert_array_equal(out, reference_clip(rgb, 224))


def _photo(name: str) -> np.ndarray:
    image = getattr(data, name)()
    return image if image.ndim == 3 else np.stack([image] * 3, axis=-1)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field"])
@pytest.mark.parametrize("size", [224, 336])
def test_real_photos_equal_the_original_pipeline(name: str, size: int) -> None:
    rgb = np.ascontiguousarray(_photo(name)[..., :3])
    np.testing.assert_array_equal(ImageTransform.for_size(size)(rgb).numpy(), reference_clip(rgb, size))


# (height, width): 640x427 photos (odd margin after the resize), odd margins both ways, exact halves of .5 that
# round half to even, squares and extreme but allowed aspect ratios.
ROUNDING_SHAPES = [
    (427, 640),
    (640, 427),
    (480, 640),
    (333, 500),
    (500, 333),
    (225, 226),
    (224, 227),
    (2, 3),
    (1, 7),
    (224, 224),
    (100, 101),
    (375, 500),
]


@pytest.mark.parametrize("shape", ROUNDING_SHAPES)
def test_synthetic_sizes_hit_the_crop_rounding(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ImageTransform.for_size(224)(rgb).numpy(), reference_clip(rgb, 224))


def test_640x427_is_a_rounding_case() -> None:
    # 640x427 resizes to 335x224: the margin of 111 gives round(55.5) = 56 where transformers floors to 55.
    assert int(224 * 640 / 427) == 335 and round(111 / 2) == 56 and 111 // 2 == 55


@pytest.mark.parametrize(("shape", "resized"), REFERENCE_CASES[1:])
def test_crop_offset_cases_are_discriminating(shape: tuple[int, int], resized: tuple[int, int]) -> None:
    # The odd-margin cases only pin down the crop rounding if floor (transformers) and int(round()) (torchvision,
    # i.e. OpenAI's original preprocessing) disagree on them.
    height, width = shape
    short, long = min(shape), max(shape)
    assert sorted(resized) == [224, int(224 * long / short)]
    assert (resized[0] > resized[1]) == (height > width)
    margin = max(resized) - 224
    assert margin // 2 != round(margin / 2)


def test_transform_applies_open_image(transform: ImageTransform, tmp_path: Path) -> None:
    # The processor alone knows nothing about EXIF orientation: this only matches if open_image ran first.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(Image.fromarray(data.chelsea()), tmp_path / "rotated.jpg", exif=exif)
    with Image.open(path) as stored:
        upright = np.ascontiguousarray(np.rot90(np.asarray(stored.convert("RGB")), -1))
    np.testing.assert_array_equal(transform(path).numpy(), reference_clip(upright, 224))


def test_transform_other_size() -> None:
    transform = ImageTransform.for_size(336)
    assert transform.image_size == 336
    rgb = data.astronaut()
    out = transform(rgb)
    assert out.shape == (3, 336, 336)
    np.testing.assert_array_equal(out.numpy(), reference_clip(rgb, 336))


def test_batch(transform: ImageTransform, chelsea_jpeg: Path) -> None:
    sources = [data.astronaut(), chelsea_jpeg, data.camera()]
    batch = transform.batch(sources)
    assert batch.shape == (3, 3, 224, 224)
    assert batch.dtype == torch.float32
    for row, source in zip(batch, sources, strict=True):
        torch.testing.assert_close(row, transform(source), rtol=0, atol=0)
    assert not torch.equal(batch[0], batch[1])
    assert transform.batch([]).shape == (0, 3, 224, 224)


def test_batch_propagates_load_errors(transform: ImageTransform) -> None:
    with pytest.raises(ImageLoadError):
        transform.batch([data.astronaut(), b"junk"])


def test_transform_is_picklable(transform: ImageTransform) -> None:
    clone = pickle.loads(pickle.dumps(transform))
    rgb = data.astronaut()
    torch.testing.assert_close(clone(rgb), transform(rgb), rtol=0, atol=0)


@pytest.mark.parametrize("size", [0, -3, 22.5, True])
def test_for_size_rejects_bad_sizes(size) -> None:
    with pytest.raises(ValueError, match="image_size"):
        ImageTransform.for_size(size)


def test_non_square_processor_is_rejected() -> None:
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(crop_size={"height": 224, "width": 160})
    with pytest.raises(ValueError, match="square"):
        ImageTransform(processor)
    assert ImageTransform(CLIPImageProcessorPil()).image_size == 224
