"""A corpus of awkward inputs, generated: odd but valid images (which must be inspected) and broken
files (which must get their error codes), under awkward names. Shared by the local ``inspect`` test and
the distributed fault suite."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

from defectscan.pipeline.images import encode_png
from defectscan.pipeline.synth import SheetSpec, generate_sheet

SPEC = SheetSpec(width=1000, height=420, rows=1, cols=2)
VALID = "valid"


@dataclass(frozen=True)
class Case:
    name: str  # the input's relative key; non-UTF-8 bytes as surrogates (os.fsdecode)
    data: bytes
    expect: str  # VALID, or the error code
    local_only: bool = False  # names S3 cannot hold


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _jpeg_header_claiming(width: int, height: int) -> bytes:
    """The start of a baseline JPEG whose frame header claims ``width`` x ``height``."""
    small = _save(Image.new("L", (8, 8)), "JPEG")
    sof = small.index(b"\xff\xc0")
    return small[: sof + 5] + struct.pack(">HH", height, width) + small[sof + 9 :]


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (the data would inflate to gigabytes)."""
    small = encode_png(np.zeros((4, 4, 3), np.uint8))
    ihdr = small.index(b"IHDR")
    body = struct.pack(">II", width, height) + small[ihdr + 12 : ihdr + 17]
    import zlib

    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return small[: ihdr + 4] + body + crc + small[ihdr + 21 :]


def corpus(seed: int = 5) -> list[Case]:
    """At least 30 inputs: the odd but valid ones hold a sheet with two instances of the template."""
    sheet = generate_sheet(seed, 0, 0.0, SPEC).image
    rgb = Image.fromarray(sheet)
    gray = rgb.convert("L")
    png = encode_png(sheet)
    wide = (sheet.astype(np.uint16) * 257).astype(">u2")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored pixels are turned the other way
    turned = rgb.transpose(Image.Transpose.ROTATE_90)
    pages = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    cases = [
        Case("plain.png", png, VALID),
        Case("rgb16.png", _png16(wide), VALID),
        Case("gray16.png", _save(Image.fromarray(np.asarray(gray, np.uint16) * 257), "PNG"), VALID),
        Case("gray.png", _save(gray, "PNG"), VALID),
        Case("palette.png", _save(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), VALID),
        Case("rgba.png", _save(rgb.convert("RGBA"), "PNG"), VALID),
        Case("cmyk.jpg", _save(rgb.convert("CMYK"), "JPEG", quality=95), VALID),
        Case("pages.tif", _save(pages[0], "TIFF", save_all=True, append_images=pages[1:]), VALID),
        Case("progressive.jpg", _save(rgb, "JPEG", quality=95, progressive=True), VALID),
        Case("phone-rotated.jpg", _save(turned, "JPEG", quality=95, exif=exif), VALID),
        Case("picture.bmp", _save(rgb, "BMP"), VALID),
        Case("UPPER.PNG", png, VALID),
        Case("Upper.JPG", _save(rgb, "JPEG", quality=95), VALID),
        Case("png-named.jpg", png, VALID),
        Case("café ß 日本語.png", png, VALID),
        Case("back\\slash.png", png, VALID),
        Case("query?hash#percent%20.png", png, VALID),
        Case("new\nline.png", png, VALID),
        Case("-leading dash.png", png, VALID),
        Case("x" * 251 + ".png", png, VALID),  # 255 bytes: the file system's longest name
        Case("deep/" * 12 + "nested.png", png, VALID),
        Case("not-utf8-\udcff\udcfe.png", png, VALID, local_only=True),
        Case("zero-bytes.png", b"", "empty_file"),
        Case("truncated.png", png[: len(png) // 2], "decode_error"),
        Case("truncated.jpg", _save(rgb, "JPEG")[:2000], "decode_error"),
        Case("random.png", np.random.default_rng(seed).bytes(5000), "decode_error"),
        Case("text.png", b"this is a text file, not a picture\n" * 20, "decode_error"),
        Case("bomb.png", _png_claiming(60_000, 60_000), "too_large"),
        Case("bomb.jpg", _jpeg_header_claiming(60_000, 60_000), "too_large"),
        Case("tiny.png", encode_png(sheet[:40, :60]), "too_small"),
        Case("._plain.png", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64), "decode_error"),
    ]
    return cases


def _png16(wide: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow writes 48-bit RGB only through this raw mode)."""
    height, width, _ = wide.shape
    image = Image.frombytes("RGB", (width, height), wide.tobytes(), "raw", "RGB;16B")
    return _save(image, "PNG")
