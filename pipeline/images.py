"""Safe image decoding: size limit before decoding, strict decode, one normalised mode.

Every decoded image is an ``H x W x 3`` ``uint8`` RGB array, whatever it was stored as:

* 16-bit channels are scaled to 8 bits (``round(v / 257)``);
* grayscale and bilevel images are repeated over three channels;
* RGBA and LA are composited over black (a transparent pixel shows nothing printed);
* palette, CMYK and YCbCr images are converted to RGB;
* float images are taken as ``[0, 1]`` when their maximum is at most 1, else as ``[0, 255]``;
* multi-frame files (TIFF pages, GIF) give their first frame;
* an EXIF orientation (a phone, or a camera mounted on its side) is applied, so the array is upright as
  the image is displayed; :func:`decode_oriented` also returns the orientation it applied.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from defectscan.pipeline.errors import DecodeError, EmptyFileError, TooLargeError

DEFAULT_MAX_PIXELS = 100_000_000
"""Default pixel limit (100 megapixels); larger images are refused from their header alone."""

RGBImage = NDArray[np.uint8]

# Pillow's own decompression-bomb guard (a warning from 89 MP, an error from 179 MP) would fight the
# configurable limit below, which is checked from the header before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = None


EXIF_ORIENTATION = 0x0112


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> RGBImage:
    """Decode encoded image bytes into an upright ``H x W x 3`` uint8 RGB array.

    Args:
        data: the file's bytes (PNG, JPEG, BMP, TIFF, or anything else Pillow reads).
        name: what the bytes are (a path or storage key); every error names it.
        max_pixels: refuse images with more pixels than this, judged from the header.

    Raises:
        EmptyFileError: zero bytes.
        DecodeError: not an image, or corrupt or truncated.
        TooLargeError: width x height over ``max_pixels``.

    Example:
        >>> rgb = decode_image(encode_png(np.zeros((12, 24, 4), np.uint8)), "black.png")  # RGBA in
        >>> rgb.shape, rgb.dtype
        ((12, 24, 3), dtype('uint8'))
    """
    return decode_oriented(data, name, max_pixels)[0]


def decode_oriented(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[RGBImage, int]:
    """:func:`decode_image`, and the EXIF orientation it applied (1: none; 2-8: mirrored or turned)."""
    if not data:
        raise EmptyFileError(name, "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError(name, "not an image in a format defectscan reads (PNG, JPEG, BMP, TIFF)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DecodeError(name, f"unreadable image header ({exc})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise DecodeError(name, f"image header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise TooLargeError(
            name, f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,}"
        )
    try:
        image.load()
        orientation = _orientation(image)
        upright = ImageOps.exif_transpose(image) if orientation != 1 else image
        array = _to_rgb(upright)
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise DecodeError(name, f"corrupt or truncated image data ({exc})") from None
    return array, orientation


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag, 1 when absent or out of range."""
    try:
        value = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except (TypeError, ValueError, OSError, SyntaxError):
        return 1
    return value if 1 <= value <= 8 else 1


def _to_rgb(image: Image.Image) -> RGBImage:
    """Normalise any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode in ("RGB",):
        return np.asarray(image, dtype=np.uint8).copy()
    if mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        return np.rint(rgba[..., :3] * alpha).astype(np.uint8)
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _scale_wide(np.asarray(image))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("1", "L"):
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _scale_wide(values: np.ndarray) -> NDArray[np.uint8]:
    """Scale a 16-bit, 32-bit integer or float single-channel array to 8 bits."""
    if np.issubdtype(values.dtype, np.floating):
        finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    return np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def is_gray(rgb: RGBImage) -> bool:
    """Whether an RGB array carries no colour (its three channels equal: a grayscale image, decoded)."""
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def gray_rgb(rgb: RGBImage) -> RGBImage:
    """An RGB image as a grayscale file of it would decode: Pillow's luma (``L``) over three channels."""
    luma = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"), dtype=np.uint8)
    return np.repeat(luma[..., None], 3, axis=2)


def to_gray(rgb: RGBImage) -> NDArray[np.float32]:
    """Luma (ITU-R BT.601 weights) as float32 in [0, 255], the input of template matching."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.asarray(rgb, dtype=np.float32) @ weights


def encode_png(rgb: np.ndarray, level: int = 6) -> bytes:
    """Encode an RGB (or single-channel) uint8 array as PNG bytes, deterministically; ``level`` is
    zlib's (1 is about 6x faster than the default 6 on heatmaps, for files about 12 % larger)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(
        buffer, format="PNG", optimize=False, compress_level=level
    )
    return buffer.getvalue()
