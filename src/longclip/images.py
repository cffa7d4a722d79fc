"""Robust image loading and CLIP image preprocessing.

Real-world image collections are messy: photos stored sideways with an EXIF orientation tag, PNGs with
transparent regions, 16-bit scans, CMYK JPEGs, truncated downloads, files with the wrong extension and the
occasional decompression bomb. :func:`open_image` turns any of those into a plain 8-bit RGB
:class:`PIL.Image.Image` (or raises a clear, catchable :class:`ImageLoadError`), and :class:`ImageTransform` applies
OpenAI CLIP's original preprocessing (torchvision's resize, round-half-even centre crop and normalisation, written
with PIL and torch so torchvision is not needed) with the settings of a ``transformers.CLIPImageProcessorPil``,
producing the normalised ``[3, size, size]`` tensors a CLIP vision tower expects.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from transformers import CLIPImageProcessorPil

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_PREPROCESS_SIDE",
    "MAX_RESIZED_PIXELS",
    "ImageLoadError",
    "ImageTransform",
    "open_image",
    "validate_preprocessing",
]

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS: int = 128_000_000
"""Default limit on width * height; larger images are refused before their pixel data is decoded."""

# Normalisation constants of OpenAI's CLIP (the statistics its vision towers were trained with).
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Modes whose samples do not fit in 8 bits and must be rescaled by value rather than clipped by PIL's convert().
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_HIGH_DEPTH_MODES = _SIXTEEN_BIT_MODES | {"I", "F"}

# Error labels for inputs that have no file name.
_BYTES_LABEL = "<bytes>"
_ARRAY_LABEL = "<array>"
_PIL_LABEL = "<PIL.Image>"

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray


class ImageLoadError(ValueError):
    """An image could not be opened or decoded.

    Attributes:
        path: The source of the image: a file path, or ``"<bytes>"`` / ``"<array>"`` / ``"<PIL.Image>"``.
        reason: A short, human-readable reason.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot load image {path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default exception pickling replays ``self.args`` (the formatted message) into ``__init__``, which
        # takes two arguments; this matters because DataLoader workers send exceptions across processes.
        return (type(self), (self.path, self.reason))


def open_image(source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open any image robustly and return an 8-bit RGB PIL image.

    The returned image is always a new, fully decoded object that shares nothing with ``source`` and holds no
    file handle. Conversions applied:

    * EXIF orientation is applied, so a photo stored sideways comes out upright.
    * Transparency (RGBA, LA, palette or grey/RGB with a transparent colour) is composited over white.
    * 16-bit greyscale is scaled to 8 bits (``x / 257``); 32-bit integer ("I") data is scaled by value range
      (``<= 255``: already 8-bit, ``<= 65535``: 16-bit, larger: divided by its maximum); float ("F") data is read
      as ``[0, 1]`` if its maximum is ``<= 1`` and as ``[0, 255]`` otherwise, then clipped.
    * Every other mode (1, L, P, CMYK, YCbCr, LAB, HSV, ...) goes through PIL's ``convert("RGB")``. Embedded
      ICC profiles are not applied.

    Truncated files are refused rather than padded: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left as the
    application set it (off by default).

    Args:
        source: A file path (``str`` or ``os.PathLike``), the encoded file contents (``bytes``), a PIL image, or a
            numpy array of shape HxW, HxWx1, HxWx2 (grey + alpha), HxWx3 or HxWx4 with dtype uint8, uint16
            (scaled by 1/257), bool, another integer type (scaled by value range as for mode "I") or float (as for
            mode "F").
        max_pixels: Refuse images whose width * height exceeds this. For files and bytes the check is done on the
            header, before any pixel data is decoded, so decompression bombs cost nothing.

    Returns:
        A new 8-bit RGB ``PIL.Image.Image``, upright.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ImageLoadError: The data is not an image, is corrupt or truncated, is larger than ``max_pixels``, has an
            unsupported mode, or (for arrays) has an unsupported shape or dtype.
        TypeError: ``source`` is of an unsupported type.
        ValueError: ``max_pixels`` is not a positive integer.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")

    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, max_pixels)
    if isinstance(source, Image.Image):
        label = getattr(source, "filename", "") or _PIL_LABEL
        return _decode(source, label, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        with io.BytesIO(source) as buffer:
            return _open_stream(buffer, _BYTES_LABEL, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        label = os.fsdecode(source)
        try:
            # Opening the file ourselves (instead of handing the path to PIL) gives a plain FileNotFoundError that
            # names the path, and the ``with`` guarantees the handle is closed on every path, errors included.
            handle = open(source, "rb")
        except FileNotFoundError:
            raise
        except OSError as exc:  # a directory, no permission, ...
            raise ImageLoadError(label, exc.strerror or str(exc)) from exc
        with handle:
            return _open_stream(handle, label, max_pixels)
    raise TypeError("open_image expects a path, bytes, a PIL image or a numpy array, got " + type(source).__name__)


def _open_stream(stream: io.IOBase, label: str, max_pixels: int) -> Image.Image:
    """Identify, size-check and decode an encoded image from an open binary stream."""
    try:
        with _pil_bomb_warnings(max_pixels):
            image = Image.open(stream)
    except Image.UnidentifiedImageError as exc:
        raise ImageLoadError(label, "not a recognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(label, f"refused by Pillow's decompression bomb check: {exc}") from exc
    except Exception as exc:  # broad on purpose: PIL's header parsers raise many unrelated types on corrupt data
        raise ImageLoadError(label, _short_reason(exc)) from exc
    with image:
        return _decode(image, label, max_pixels)


def _decode(image: Image.Image, label: str, max_pixels: int) -> Image.Image:
    """Size-check, decode, orient and convert an opened (possibly still lazy) PIL image to RGB."""
    # ``Image.open`` only parses the header, so this check runs before a single pixel is decompressed.
    _check_size(image, label, max_pixels)
    try:
        with _pil_bomb_warnings(max_pixels):
            # Decode now so that corrupt or truncated data fails here, with the file name, rather than at some
            # later, unrelated ``convert``/``resize`` call.
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(label, f"refused by Pillow's decompression bomb check: {exc}") from exc
    except Exception as exc:  # broad on purpose: decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageLoadError(label, _short_reason(exc)) from exc
    # Some formats (e.g. animated GIFs) only learn their final canvas size while decoding.
    _check_size(image, label, max_pixels)

    try:
        upright = ImageOps.exif_transpose(image)
    except Exception as exc:  # broad on purpose: a broken EXIF block should not cost us an otherwise good image
        logger.warning("ignoring unreadable EXIF orientation of %s: %s", label, exc)
        upright = image.copy()
    assert upright is not None  # exif_transpose only returns None when in_place=True
    return _to_rgb(upright, label)


def _check_size(image: Image.Image, label: str, max_pixels: int) -> None:
    width, height = image.size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageLoadError(
            label,
            f"{width}x{height} = {pixels} pixels exceeds the limit of {max_pixels} pixels "
            "(possible decompression bomb)",
        )


@contextlib.contextmanager
def _pil_bomb_warnings(max_pixels: int) -> Iterator[None]:
    """Locally decide what Pillow's ``DecompressionBombWarning`` means, given our own ``max_pixels``.

    Pillow warns above ``Image.MAX_IMAGE_PIXELS`` (~89 Mpx) and raises above twice that. When our limit is
    stricter, any Pillow warning implies our limit is exceeded too, so it is escalated to an error (which then
    surfaces as :class:`ImageLoadError`). When our limit is looser (the default 128 Mpx is), the caller has
    accepted such sizes and our own check on ``image.size`` is authoritative, so the warning is silenced rather
    than escalated, which would quietly lower the limit to Pillow's. The global ``Image.MAX_IMAGE_PIXELS`` is never
    modified (``warnings.catch_warnings`` does swap the process-wide filter list for the duration, though).
    """
    pil_limit = Image.MAX_IMAGE_PIXELS
    action = "error" if pil_limit is not None and max_pixels < pil_limit else "ignore"
    with warnings.catch_warnings():
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        yield


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    """Convert a decoded PIL image of any mode, owned by the caller, to 8-bit RGB (``image`` itself if already RGB)."""
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        image = _high_depth_to_8bit(image)
        mode = image.mode

    if mode == "La":
        # Premultiplied grey + alpha, which PIL cannot convert(); composited over white it is simply L + (255 - a).
        lum, alpha = (np.asarray(band, dtype=np.int16) for band in image.split())
        grey = np.clip(lum + 255 - alpha, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")

    if image.has_transparency_data:
        # A plain convert("RGB") simply drops alpha and exposes whatever colour the encoder left under
        # transparent pixels, which is often black (or garbage) and would dominate what CLIP sees. White matches
        # how documents, logos and product shots with transparent backgrounds are normally displayed.
        try:
            rgba = image.convert("RGBA")
        except ValueError as exc:
            raise ImageLoadError(label, f"cannot convert mode {mode} with transparency to RGB") from exc
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")

    if mode == "RGB":
        # No copy needed: callers only hand over images they own (exif_transpose's output, or a fromarray() image,
        # which copies RGB data). This also covers 16-bit-per-channel RGB PNGs: Pillow 13 decodes them straight to
        # 8-bit "RGB" (keeping the high byte), so there is nothing left to rescale.
        return image
    try:
        # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX, RGBa, ...
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(label, f"unsupported image mode {mode}") from exc


def _high_depth_to_8bit(image: Image.Image) -> Image.Image:
    """Scale an I;16* / I / F image to an 8-bit "L" (or "LA" when a transparent value is set) image.

    PIL's own convert() clips these to 255, which turns almost every 16-bit image white.
    """
    raw = np.asarray(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = _uint16_to_uint8(raw)
    elif image.mode == "F":
        grey = _float_to_uint8(raw)
    else:
        grey = _int_to_uint8(raw)

    transparency = image.info.get("transparency")
    if isinstance(transparency, int) and not isinstance(transparency, bool):
        # A 16-bit PNG's tRNS colour is a 16-bit value: compare it against the raw samples before they are scaled.
        alpha = np.where(raw == transparency, 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([grey, alpha]), mode="LA")
    return Image.fromarray(grey, mode="L")


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    # 65535 / 257 == 255 exactly, so the full 16-bit range maps onto the full 8-bit range.
    return np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    # Float images are usually either normalised to [0, 1] or kept on the 8-bit scale; the maximum tells them apart.
    scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    return np.rint(np.clip(values * scale, 0.0, 255.0)).astype(np.uint8)


def _int_to_uint8(values: np.ndarray) -> np.ndarray:
    # The container (int32, int64, PIL "I") says nothing about the bit depth of the data, so judge by value range.
    values = np.clip(values.astype(np.float64), 0.0, None)
    peak = float(values.max()) if values.size else 0.0
    if peak <= 255.0:
        divisor = 1.0
    elif peak <= 65535.0:
        divisor = 257.0
    else:
        logger.warning("integer image data exceeds 16 bits (max %d); scaling by its maximum", int(peak))
        divisor = peak / 255.0
    return np.rint(values / divisor).astype(np.uint8)


def _array_to_rgb(array: np.ndarray, max_pixels: int) -> Image.Image:
    """Convert an HxW / HxWxC numpy array to a new 8-bit RGB image."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageLoadError(
            _ARRAY_LABEL, f"unsupported array shape {array.shape}; expected HxW or HxWxC with C in 1..4"
        )
    height, width, channels = array.shape
    if height == 0 or width == 0:
        raise ImageLoadError(_ARRAY_LABEL, f"empty array of shape {array.shape}")
    if height * width > max_pixels:
        raise ImageLoadError(
            _ARRAY_LABEL, f"{width}x{height} = {height * width} pixels exceeds the limit of {max_pixels} pixels"
        )

    if array.dtype == np.uint8:
        data = array
    elif array.dtype == np.uint16:
        data = _uint16_to_uint8(array)
    elif array.dtype == np.bool_:
        data = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.integer):
        data = _int_to_uint8(array)
    elif np.issubdtype(array.dtype, np.floating):
        data = _float_to_uint8(array)
    else:
        raise ImageLoadError(_ARRAY_LABEL, f"unsupported array dtype {array.dtype}")

    data = np.ascontiguousarray(data)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    image = Image.fromarray(data[:, :, 0] if channels == 1 else data, mode=mode)
    return _to_rgb(image, _ARRAY_LABEL)


MAX_RESIZED_PIXELS: int = 16_000_000
"""Limit on the pixels of an image after the shortest-edge resize (before the crop).

The source pixel limit does not bound the work: a 375-byte 100000x1 PNG passes it, yet resizing its short side to
224 asks for a 224 x 22,400,000 image (15 GB). Such images are refused with :class:`ImageLoadError` instead. At 224
pixels the limit allows aspect ratios up to about 318:1.
"""

MAX_PREPROCESS_SIDE: int = 4096
"""Largest resize or crop side a preprocessing config may ask for (CLIP models use 224 to 448)."""

_RESAMPLE_FILTERS = {int(f) for f in Image.Resampling}


class ImageTransform:
    """CLIP's image preprocessing as a callable: image (anything open_image accepts) -> float tensor [3, size, size].

    Every input first goes through :func:`open_image` (orientation, transparency, bit depth, errors), then through
    the steps of OpenAI CLIP's original preprocessing (torchvision's ``Resize`` on a PIL image, ``CenterCrop``,
    ``ToTensor``, ``Normalize``), with the settings of the wrapped ``transformers.CLIPImageProcessorPil``:

    1. resize the shortest edge to ``size["shortest_edge"]`` with PIL (bicubic by default); the long edge is
       ``int(size * long / short)``, as torchvision computes it (or resize to ``size["height"] x size["width"]``);
    2. centre crop, with the offset ``round((h - crop) / 2)`` (Python's round, half to even, as torchvision does;
       transformers floors it instead, which shifts the crop by one pixel on sizes such as 640x427);
    3. divide by 255 in float32, subtract the mean and divide by the std, per channel, in float32.

    For an RGB image without an orientation tag the result equals the original pipeline's tensor exactly. The two
    deliberate differences are in :func:`open_image`: EXIF orientation is applied, and transparency is composited
    over white (the original drops the alpha channel). Instances are picklable, so they can be used inside
    ``torch.utils.data.DataLoader`` workers.

    Attributes:
        image_processor: The wrapped ``CLIPImageProcessorPil`` (or a compatible PIL-backend image processor); it
            holds the settings and is what ``save_pretrained`` writes.
    """

    def __init__(self, image_processor: CLIPImageProcessorPil) -> None:
        """Wrap an image processor.

        Args:
            image_processor: A PIL-backend CLIP image processor, e.g. from ``CLIPImageProcessorPil.from_pretrained``.
                It must produce square images: a square center crop, or a square resize when cropping is off.

        Raises:
            ValueError: A setting is invalid (see :func:`validate_preprocessing`).
        """
        self.image_processor = image_processor
        self._image_size = validate_preprocessing(image_processor)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, image_size: int) -> ImageTransform:
        """The preprocessing saved in a model directory (``preprocessor_config.json``), else ``for_size(image_size)``.

        Args:
            directory: A transformers model directory.
            image_size: The image tower's resolution. Used when the directory holds no preprocessor config, and
                otherwise checked against the config's output size.

        Raises:
            ValueError: The config cannot be read, a setting is invalid, or its output size is not ``image_size``;
                the message names the file and the field.
        """
        path = os.path.join(directory, "preprocessor_config.json")
        if not os.path.isfile(path):
            return cls.for_size(image_size)
        from transformers import CLIPImageProcessorPil

        try:
            processor = CLIPImageProcessorPil.from_pretrained(directory)
        except Exception as exc:  # broad on purpose: a hand-edited json fails in many ways inside transformers
            raise ValueError(
                f"{path}: cannot be read as a CLIP image processor config ({_short_reason(exc)})"
            ) from exc
        try:
            validate_preprocessing(processor, image_size)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return cls(processor)

    @classmethod
    def for_size(cls, image_size: int) -> ImageTransform:
        """Build the transform with OpenAI CLIP's preprocessing at a given resolution.

        Resize the shortest edge to ``image_size`` (bicubic), center-crop ``image_size`` x ``image_size``, scale
        to [0, 1] and normalise with OpenAI CLIP's mean and std.

        Args:
            image_size: Output height and width in pixels (224 for ViT-B/16 and ViT-L/14, 336 for ViT-L/14@336).

        Returns:
            A new ``ImageTransform``.

        Raises:
            ValueError: ``image_size`` is not a positive integer.
        """
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        # Imported here because importing transformers takes seconds, and open_image alone does not need it.
        from transformers import CLIPImageProcessorPil

        processor = CLIPImageProcessorPil(
            do_convert_rgb=True,
            do_resize=True,
            size={"shortest_edge": image_size},
            resample=Image.Resampling.BICUBIC,
            do_center_crop=True,
            crop_size={"height": image_size, "width": image_size},
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(_OPENAI_CLIP_MEAN),
            image_std=list(_OPENAI_CLIP_STD),
        )
        return cls(processor)

    @property
    def image_size(self) -> int:
        """Height and width of the produced images, in pixels."""
        return self._image_size

    def __call__(self, image: ImageSource) -> torch.Tensor:
        """Load and preprocess one image.

        Args:
            image: Anything :func:`open_image` accepts.

        Returns:
            A float32 tensor of shape ``[3, image_size, image_size]``.

        Raises:
            FileNotFoundError: See :func:`open_image`.
            ImageLoadError: See :func:`open_image`; also when the resized image would exceed
                :data:`MAX_RESIZED_PIXELS` (an extreme aspect ratio).
        """
        return self._tensor(open_image(image), _source_label(image))

    def batch(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """Load and preprocess several images into one batch.

        Args:
            images: A sequence of anything :func:`open_image` accepts.

        Returns:
            A float32 tensor of shape ``[N, 3, image_size, image_size]`` (``N`` may be 0).

        Raises:
            FileNotFoundError: See :func:`open_image`.
            ImageLoadError: See :meth:`__call__`.
        """
        if not images:
            return torch.empty((0, 3, self._image_size, self._image_size), dtype=torch.float32)
        return torch.stack([self(image) for image in images])

    def _tensor(self, rgb: Image.Image, label: str) -> torch.Tensor:
        processor = self.image_processor
        if processor.do_resize:
            rgb = rgb.resize(self._resized_size(rgb.size, label), Image.Resampling(int(processor.resample)))
        if processor.do_center_crop:
            rgb = _center_crop(rgb, int(processor.crop_size["height"]), int(processor.crop_size["width"]))
        pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).to(torch.float32)
        if processor.do_rescale:
            # ToTensor divides by 255; dividing (rather than multiplying by 1/255) keeps the float32 bits equal.
            factor = float(processor.rescale_factor)
            pixels = pixels / 255.0 if abs(factor - 1 / 255) < 1e-12 else pixels * factor
        if processor.do_normalize:
            mean = torch.tensor(_per_channel(processor.image_mean), dtype=torch.float32)[:, None, None]
            std = torch.tensor(_per_channel(processor.image_std), dtype=torch.float32)[:, None, None]
            pixels = (pixels - mean) / std
        return pixels.contiguous()

    def _resized_size(self, size: tuple[int, int], label: str) -> tuple[int, int]:
        """(width, height) after the resize, refusing sizes whose pixels exceed :data:`MAX_RESIZED_PIXELS`."""
        width, height = size
        target = self.image_processor.size
        if target.get("shortest_edge") is not None:
            edge = int(target["shortest_edge"])
            short, long = min(width, height), max(width, height)
            new_long = int(edge * long / short)  # torchvision's rule: truncate, not round
            new_width, new_height = (edge, new_long) if width <= height else (new_long, edge)
        else:
            new_width, new_height = int(target["width"]), int(target["height"])
        if new_width * new_height > MAX_RESIZED_PIXELS:
            raise ImageLoadError(
                label,
                f"its aspect ratio ({width}x{height}) would resize it to {new_width}x{new_height} = "
                f"{new_width * new_height} pixels, over the limit of {MAX_RESIZED_PIXELS} (MAX_RESIZED_PIXELS)",
            )
        return new_width, new_height

    def __repr__(self) -> str:
        processor_name = type(self.image_processor).__name__
        return f"{type(self).__name__}(image_size={self._image_size}, image_processor={processor_name})"


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """torchvision's CenterCrop on a PIL image: offsets rounded half to even; zero padding where the crop is larger."""
    if image.width < width or image.height < height:
        padded = Image.new("RGB", (max(width, image.width), max(height, image.height)), (0, 0, 0))
        padded.paste(image, ((padded.width - image.width) // 2, (padded.height - image.height) // 2))
        image = padded
    top = round((image.height - height) / 2)
    left = round((image.width - width) / 2)
    return image.crop((left, top, left + width, top + height))


def _source_label(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or _PIL_LABEL
    if isinstance(source, np.ndarray):
        return _ARRAY_LABEL
    return _BYTES_LABEL


def _per_channel(values: Any) -> list[float]:
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    return values * 3 if len(values) == 1 else values


def validate_preprocessing(image_processor: Any, image_size: int | None = None) -> int:
    """Check an image processor's settings and return the side of the square images it produces.

    Refuses what would give silent NaNs or exhaust memory: a mean or std that is not finite, a std of 0, sizes that
    are not positive integers up to :data:`MAX_PREPROCESS_SIDE`, an unknown resampling filter, non-square output.
    The model loader calls it with the image tower's resolution, so preprocessing that disagrees with the model is
    refused at load.

    Args:
        image_processor: A ``CLIPImageProcessorPil`` (or an object with the same attributes).
        image_size: The resolution the output must have, if known.

    Returns:
        The output side in pixels.

    Raises:
        ValueError: A setting is invalid; the message names the field and its value.
    """
    settings = image_processor
    if getattr(settings, "do_normalize", False):
        _check_mean_std(settings)
    if getattr(settings, "do_rescale", False):
        factor = getattr(settings, "rescale_factor", None)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"rescale_factor must be a positive finite number, got {factor!r}")
    resized = _checked_size(settings, "size", ("shortest_edge",)) if getattr(settings, "do_resize", False) else None
    if resized is not None:
        resample = getattr(settings, "resample", None)
        if isinstance(resample, bool) or not isinstance(resample, int) or int(resample) not in _RESAMPLE_FILTERS:
            raise ValueError(f"resample must be one of PIL's filters {sorted(_RESAMPLE_FILTERS)}, got {resample!r}")
    crop = _checked_size(settings, "crop_size", ()) if getattr(settings, "do_center_crop", False) else None
    output = crop or resized
    if output is None or "shortest_edge" in output or output["height"] != output["width"]:
        raise ValueError(
            "ImageTransform needs an image processor that outputs square images (a square crop_size with "
            f"do_center_crop, or a square size with do_resize); got {image_processor!r}"
        )
    side = output["height"]
    if image_size is not None and side != image_size:
        raise ValueError(
            f"the preprocessing produces {side}x{side} images but the model's image size is {image_size} "
            "(crop_size / size in preprocessor_config.json)"
        )
    return side


def _check_mean_std(settings: Any) -> None:
    """image_mean and image_std: three finite numbers each, std positive (it divides the pixels)."""
    for field in ("image_mean", "image_std"):
        raw = getattr(settings, field, None)
        try:
            values = _per_channel(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{field} must be 3 numbers (one per channel), got {raw!r}") from None
        if len(values) != 3 or not all(np.isfinite(values)):
            raise ValueError(f"{field} must be 3 finite numbers (one per channel), got {raw!r}")
        if field == "image_std" and not all(v > 0 for v in values):
            raise ValueError(f"image_std must be positive in every channel (it divides the pixels), got {raw!r}")


def _checked_size(settings: Any, field: str, single_keys: tuple[str, ...]) -> dict[str, int]:
    """A ``size``/``crop_size`` setting as a plain dict, each side checked to be an int in 1..MAX_PREPROCESS_SIDE."""
    raw = getattr(settings, field, None)
    found = {key: raw.get(key) for key in ("height", "width", *single_keys)} if hasattr(raw, "get") else {}
    found = {key: value for key, value in found.items() if value is not None}
    if not (set(found) == {"height", "width"} or (len(found) == 1 and set(found) <= set(single_keys))):
        expected = " or ".join([*single_keys, "height and width"])
        raise ValueError(f"{field} must give {expected}, got {raw!r}")
    for key, value in found.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 < value <= MAX_PREPROCESS_SIDE:
            raise ValueError(f"{field}[{key!r}] must be an integer from 1 to {MAX_PREPROCESS_SIDE}, got {value!r}")
    return {key: int(value) for key, value in found.items()}
