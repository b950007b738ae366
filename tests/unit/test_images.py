"""Safe decoding: every bad input gets a typed error naming the file; odd modes are normalised."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from defectscan.pipeline.errors import DecodeError, EmptyFileError, TooLargeError
from defectscan.pipeline.images import decode_image, encode_png, to_gray


def _encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but whose pixel data is 16 bytes of garbage."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"\x00" * 16) + _chunk(b"IEND", b"")


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)


def test_png_round_trip_is_exact(rgb: np.ndarray) -> None:
    out = decode_image(encode_png(rgb), "a.png")
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "TIFF"])
def test_other_formats_decode_to_rgb(fmt: str) -> None:
    ys, xs = np.mgrid[0:40, 0:60]
    smooth = np.stack([xs * 4, ys * 6, (xs + ys) * 2], axis=2).astype(np.uint8)
    out = decode_image(_encode(smooth, fmt), f"a.{fmt.lower()}")
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth.astype(int)).mean() < (3 if fmt == "JPEG" else 1e-9)


def test_zero_byte_file_is_named() -> None:
    with pytest.raises(EmptyFileError) as info:
        decode_image(b"", "line3/empty.png")
    assert info.value.code == "empty_file"
    assert "line3/empty.png" in str(info.value)


def test_non_image_is_named() -> None:
    with pytest.raises(DecodeError) as info:
        decode_image(b"this is a shipping note, not a photograph\n" * 20, "notes.txt")
    assert info.value.code == "decode_error"
    assert "notes.txt" in str(info.value) and "not an image" in str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_corrupt(rgb: np.ndarray, fmt: str) -> None:
    data = _encode(np.repeat(np.repeat(rgb, 8, 0), 8, 1), fmt)
    with pytest.raises(DecodeError) as info:
        decode_image(data[: len(data) // 2], "cut.img")
    assert "cut.img" in str(info.value)


def test_huge_image_is_refused_from_its_header_alone() -> None:
    # 200k x 200k pixels claimed, no pixel data: decoding would fail, so TooLargeError proves the
    # size was judged before any decode was tried.
    with pytest.raises(TooLargeError) as info:
        decode_image(_png_header_only(200_000, 200_000), "huge.png")
    assert info.value.code == "too_large"
    assert "huge.png" in str(info.value) and "200000x200000" in str(info.value)


def test_pixel_limit_is_configurable(rgb: np.ndarray) -> None:
    data = encode_png(rgb)  # 60 x 40 = 2400 pixels
    with pytest.raises(TooLargeError):
        decode_image(data, "a.png", max_pixels=2399)
    assert decode_image(data, "a.png", max_pixels=2400).shape == (40, 60, 3)


def test_16bit_grayscale_is_scaled_to_8bit() -> None:
    values = np.arange(0, 256, dtype=np.uint16).reshape(16, 16)
    ok, png = cv2.imencode(".png", values * 257)
    assert ok
    out = decode_image(png.tobytes(), "wide.png")
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 0], values.astype(np.uint8))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_16bit_rgb_is_scaled_to_8bit(rgb: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", rgb[..., ::-1].astype(np.uint16) * 257)
    assert ok
    out = decode_image(png.tobytes(), "wide_rgb.png")
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_is_repeated_over_three_channels(rgb: np.ndarray) -> None:
    gray = rgb[..., 0]
    out = decode_image(_encode(gray, "PNG"), "gray.png")
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_is_composited_over_black() -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3] = 255
    rgba[1, 0, 3] = 0
    rgba[1, 1, 3] = 128
    out = decode_image(_encode(rgba, "PNG"), "alpha.png")
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[1, 0].tolist() == [0, 0, 0]
    assert out[1, 1].tolist() == [100, 50, 25]


def test_palette_image_is_converted(rgb: np.ndarray) -> None:
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    out = decode_image(buffer.getvalue(), "palette.png")
    np.testing.assert_array_equal(out, np.asarray(palette.convert("RGB")))


def test_gray_uses_luma_weights() -> None:
    pixel = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    np.testing.assert_allclose(to_gray(pixel)[0], [0.299 * 255, 0.587 * 255, 0.114 * 255], rtol=1e-5)
