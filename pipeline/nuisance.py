"""Nuisance variation: an OK image as it could look under other light, colour, focus, noise, compression
or a slightly different placement, each within ranges the user sets, for robustness when no images of
the new condition exist. Each kind takes an image, a random generator and its range, and returns the
changed image and the parameters it drew (recorded in the augmentation manifest).

=================  ========================================================  ==============
kind               what changes                                              default range
=================  ========================================================  ==============
``illumination``   a linear light gradient of this amplitude (any            0.0 - 0.2
                   direction) and an overall gain within the same amount
``colour``         a gain per channel (white balance) within this amount     0.0 - 0.08
``blur``           a Gaussian blur of this sigma (px)                        0.3 - 1.5
``noise``          Gaussian noise of this sigma (8-bit units)                1.0 - 6.0
``jpeg``           a JPEG round trip at this quality                         50 - 90
``warp``           a rotation of up to this many degrees, a shift of up to   0.0 - 1.0
                   this many pixels, a scale within this many per cent
=================  ========================================================  ==============
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from defectscan.pipeline.errors import InvalidArgumentError

Range = tuple[float, float]
Params = dict[str, object]


class NuisanceRanges(BaseModel):
    """The range of each kind (low, high), see the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    illumination: Range = (0.0, 0.2)
    colour: Range = (0.0, 0.08)
    blur: Range = (0.3, 1.5)
    noise: Range = (1.0, 6.0)
    jpeg: Range = (50.0, 90.0)
    warp: Range = (0.0, 1.0)

    @model_validator(mode="after")
    def _ordered(self) -> NuisanceRanges:
        for name, (low, high) in self:
            if not 0 <= low <= high:
                raise ValueError(f"{name}: the range {low}:{high} must have 0 <= low <= high")
        if self.jpeg[1] > 100 or self.jpeg[0] < 1:
            raise ValueError("jpeg: qualities lie in 1..100")
        if self.illumination[1] >= 1 or self.colour[1] >= 1:
            raise ValueError("illumination and colour amounts must stay below 1")
        return self

    def changed(self, text: str) -> NuisanceRanges:
        """A copy with ``kind=low:high`` set (the CLI's ``--range``)."""
        name, _, bounds = text.partition("=")
        low, sep, high = bounds.partition(":")
        if name not in KINDS or not sep:
            raise InvalidArgumentError(
                "--range", f"{text!r}: expected KIND=LOW:HIGH, KIND one of {', '.join(KINDS)}"
            )
        try:
            values = (float(low), float(high))
        except ValueError:
            raise InvalidArgumentError("--range", f"{text!r}: LOW and HIGH are numbers") from None
        try:
            return NuisanceRanges.model_validate({**self.model_dump(), name: values})
        except ValidationError as exc:
            raise InvalidArgumentError(
                "--range", exc.errors()[0]["msg"].removeprefix("Value error, ")
            ) from None


def _illumination(
    img: NDArray[np.float32], rng: np.random.Generator, r: Range
) -> tuple[NDArray[np.float32], Params]:
    amount = float(rng.uniform(*r))
    phi = float(rng.uniform(0, 2 * math.pi))
    gain = float(rng.uniform(1 - amount, 1 + amount))
    h, w = img.shape[:2]
    xs = (np.arange(w, dtype=np.float32) / max(w, 1) - 0.5) * math.cos(phi)
    ys = (np.arange(h, dtype=np.float32) / max(h, 1) - 0.5) * math.sin(phi)
    field = gain * (1.0 + amount * 2.0 * (ys[:, None] + xs[None, :]))
    params: Params = {
        "amplitude": round(amount, 4),
        "direction_deg": round(math.degrees(phi), 2),
        "gain": round(gain, 4),
    }
    return img * field[..., None].astype(np.float32), params


def _colour(
    img: NDArray[np.float32], rng: np.random.Generator, r: Range
) -> tuple[NDArray[np.float32], Params]:
    amount = float(rng.uniform(*r))
    gains = rng.uniform(1 - amount, 1 + amount, size=3).astype(np.float32)
    return img * gains, {"gains": [round(float(g), 4) for g in gains]}


def _blur(img: NDArray[np.float32], rng: np.random.Generator, r: Range) -> tuple[NDArray[np.float32], Params]:
    sigma = float(rng.uniform(*r))
    if sigma <= 0:
        return img, {"sigma": 0.0}
    return np.asarray(cv2.GaussianBlur(img, (0, 0), sigma), np.float32), {"sigma": round(sigma, 4)}


def _noise(
    img: NDArray[np.float32], rng: np.random.Generator, r: Range
) -> tuple[NDArray[np.float32], Params]:
    sigma = float(rng.uniform(*r))
    return img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma), {
        "sigma": round(sigma, 4)
    }


def _jpeg(img: NDArray[np.float32], rng: np.random.Generator, r: Range) -> tuple[NDArray[np.float32], Params]:
    quality = round(float(rng.uniform(*r)))
    bgr = cv2.cvtColor(np.clip(np.rint(img), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InvalidArgumentError("jpeg", "the image could not be JPEG-encoded")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert decoded is not None  # what imencode just made
    back = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return back.astype(np.float32), {"quality": quality}


def _warp(img: NDArray[np.float32], rng: np.random.Generator, r: Range) -> tuple[NDArray[np.float32], Params]:
    amount = float(rng.uniform(*r))
    angle = float(rng.uniform(-amount, amount))
    dx, dy = (float(v) for v in rng.uniform(-amount, amount, size=2))
    scale = 1.0 + float(rng.uniform(-amount, amount)) / 100
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    matrix[:, 2] += np.array([dx, dy])
    warped = cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    params: Params = {
        "angle_deg": round(angle, 4),
        "shift_px": [round(dx, 3), round(dy, 3)],
        "scale": round(scale, 5),
    }
    return np.asarray(warped, np.float32), params


Kind = Callable[[NDArray[np.float32], np.random.Generator, Range], tuple[NDArray[np.float32], Params]]
KINDS: dict[str, Kind] = {
    "illumination": _illumination,
    "colour": _colour,
    "blur": _blur,
    "noise": _noise,
    "jpeg": _jpeg,
    "warp": _warp,
}


def parse_kinds(text: str) -> tuple[str, ...]:
    """``illumination,colour,...`` as a checked tuple (empty text: none)."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise InvalidArgumentError("--kinds", f"unknown kind {unknown[0]!r}: one of {', '.join(KINDS)}")
    return kinds


def vary(
    image: NDArray[np.uint8], kind: str, rng: np.random.Generator, ranges: NuisanceRanges
) -> tuple[NDArray[np.uint8], Params]:
    """``image`` changed by one nuisance ``kind`` drawn within its range, and what was drawn."""
    changed, params = KINDS[kind](image.astype(np.float32), rng, getattr(ranges, kind))
    return np.clip(np.rint(changed), 0, 255).astype(np.uint8), params
