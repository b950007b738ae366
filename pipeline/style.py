"""A new condition's look, learned from a few of its OK images and put on the old condition's OK images.

A line gets a new camera, new lighting or a new substrate batch and the product is unchanged: the
images differ in colour, brightness, contrast, white balance, sharpness and noise, not in structure.
:func:`fit_style` measures both conditions from their OK images and :meth:`Style.apply` changes an old
image pixel by pixel, plus a blur or a sharpening and noise, so every edge stays where it was (the
structure and the aligned geometry are unchanged; tested):

1. **sharpness**: the mean gradient magnitude of each set's luminance, measured after a light blur
   that keeps sensor noise out of it; a blurrier new condition is matched with the Gaussian blur that
   brings an old image's figure to the new one's (found by bisection on the old images), a sharper one
   with an unsharp mask found the same way;
2. **colour**: each channel mapped from the old condition's distribution to the new one's. Two
   methods: ``stats`` (Reinhard's transfer: each CIELAB channel's mean and standard deviation) and
   ``histogram`` (each RGB channel's quantiles mapped onto the new ones, which also carries gamma and
   clipping); :data:`DEFAULT_METHOD` was chosen by measurement (``bench/augment.py``);
3. **noise**: the noise level of each set (the median absolute response to a 3x3 kernel that cancels
   planes, on the luminance, which edges barely move); Gaussian noise adds what the new condition has
   beyond what the blurred old image keeps.

Everything a style holds is numbers (:meth:`Style.params`, recorded in the augmentation manifest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.errors import InvalidArgumentError

Method = Literal["stats", "histogram"]
METHODS: tuple[str, ...] = ("stats", "histogram")
DEFAULT_METHOD: Method = "histogram"
QUANTILES = 257  # points of each channel's distribution the histogram method maps
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_SHARPNESS_PRESMOOTH = 1.0  # px: keeps sensor noise out of the sharpness figure


def _luma(image: NDArray[np.uint8]) -> NDArray[np.float32]:
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), np.float32)


def noise_level(image: NDArray[np.uint8]) -> float:
    """Sensor noise, as a Gaussian's sigma in 8-bit units: the median absolute response of the
    luminance to a kernel that cancels planes (robust to the edges that a mean would count)."""
    response = cv2.filter2D(_luma(image), cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
    # for white noise the kernel's response has sigma 6 * sigma; |N(0, s)| has median 0.6745 s
    return float(np.median(np.abs(response)) / (0.6745 * 6.0))


def sharpness(image: NDArray[np.uint8] | NDArray[np.float32]) -> float:
    """Mean gradient magnitude of the luminance after a light blur (higher: sharper)."""
    luma = _luma(np.asarray(image, np.uint8)) if image.dtype == np.uint8 else np.asarray(image, np.float32)
    smooth = cv2.GaussianBlur(luma, (0, 0), _SHARPNESS_PRESMOOTH)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    return float(np.mean(np.sqrt(gx * gx + gy * gy)))


def _refocused(image: NDArray[np.float32], amount: float) -> NDArray[np.float32]:
    """``amount`` > 0: a Gaussian blur of that sigma; < 0: an unsharp mask of strength ``-amount``."""
    if amount == 0:
        return image
    if amount > 0:
        return np.asarray(cv2.GaussianBlur(image, (0, 0), amount), np.float32)
    soft = cv2.GaussianBlur(image, (0, 0), 1.0)
    return np.asarray(image + (-amount) * (image - soft), np.float32)


def _focus_amount(images: Sequence[NDArray[np.uint8]], target: float) -> float:
    """The refocus (see :func:`_refocused`) that brings the images' mean sharpness to ``target``."""
    lumas = [_luma(img) for img in images]

    def mean_after(amount: float) -> float:
        return float(np.mean([sharpness(_refocused(luma, amount)) for luma in lumas]))

    now = mean_after(0.0)
    if abs(now - target) <= 0.01 * now:
        return 0.0
    lo, hi = -3.0, 4.0  # an unsharp mask of strength 3 to a blur of sigma 4 px; sharpness falls along it
    for _ in range(20):
        mid = (lo + hi) / 2
        if mean_after(mid) > target:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 4)


def _lab(image: NDArray[np.uint8] | NDArray[np.float32]) -> NDArray[np.float32]:
    return np.asarray(cv2.cvtColor(np.asarray(image, np.float32) / 255.0, cv2.COLOR_RGB2LAB), np.float32)


def _pixels(images: Sequence[NDArray[np.uint8]], limit: int = 400_000) -> NDArray[np.uint8]:
    """Up to ``limit`` pixels of the images (an even sample), ``(N, 3)``."""
    stacked = np.concatenate([img.reshape(-1, 3) for img in images])
    step = max(1, len(stacked) // limit)
    return stacked[::step]


@dataclass(frozen=True)
class Style:
    """A learned change from one condition to another (see the module docstring)."""

    method: Method
    focus: float  # > 0: blur sigma (px); < 0: unsharp strength; 0: none
    noise_sigma: float  # Gaussian noise added, 8-bit units
    source_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # LAB, stats method
    source_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    target_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    target_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source_quantiles: NDArray[np.float32] = field(default_factory=lambda: np.empty((3, 0), np.float32))
    target_quantiles: NDArray[np.float32] = field(default_factory=lambda: np.empty((3, 0), np.float32))
    figures: dict[str, float] = field(default_factory=dict)

    def apply(self, image: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
        """``image`` of the old condition, in the new one's look (same size, same structure)."""
        out = _refocused(image.astype(np.float32), self.focus)
        if self.method == "stats":
            lab = _lab(np.clip(out, 0, 255))
            mean, std = np.array(self.source_mean, np.float32), np.array(self.source_std, np.float32)
            gain = np.array(self.target_std, np.float32) / np.maximum(std, np.float32(1e-6))
            lab = np.asarray((lab - mean) * gain + np.array(self.target_mean, np.float32), np.float32)
            out = np.asarray(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), np.float32) * 255.0
        else:
            channels = [
                np.interp(out[..., c], self.source_quantiles[c], self.target_quantiles[c]) for c in range(3)
            ]
            out = np.stack(channels, axis=-1).astype(np.float32)
        if self.noise_sigma > 0:
            out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(self.noise_sigma)
        return _as_uint8(out)

    def params(self) -> dict[str, object]:
        """What the style does, as JSON-ready numbers."""
        made: dict[str, object] = {
            "method": self.method,
            "focus": self.focus,
            "noise_sigma": round(self.noise_sigma, 4),
            **{k: round(v, 4) for k, v in self.figures.items()},
        }
        if self.method == "stats":
            made |= {
                "source_lab_mean": _rounded(self.source_mean),
                "source_lab_std": _rounded(self.source_std),
                "target_lab_mean": _rounded(self.target_mean),
                "target_lab_std": _rounded(self.target_std),
            }
        return made


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), 4) for v in values]


def _check(images: Sequence[NDArray[np.uint8]], what: str) -> None:
    if not images:
        raise InvalidArgumentError(what, "no images")
    for img in images:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InvalidArgumentError(
                what, f"an image of shape {img.shape} and type {img.dtype}: RGB uint8 expected"
            )


def fit_style(
    source: Sequence[NDArray[np.uint8]], target: Sequence[NDArray[np.uint8]], method: Method = DEFAULT_METHOD
) -> Style:
    """The style that takes images like ``source`` (the old condition's OK images) to look like
    ``target`` (a few of the new condition's)."""
    _check(source, "ok")
    _check(target, "style-from")
    if method not in METHODS:
        raise InvalidArgumentError("method", f"{method!r}: one of {', '.join(METHODS)}")
    sample = list(source[:16])  # the old condition's figures come from up to 16 of its images
    sharp_s = float(np.mean([sharpness(img) for img in sample]))
    sharp_t = float(np.mean([sharpness(img) for img in target]))
    focus = _focus_amount(sample, sharp_t)
    refocused = [_as_uint8(_refocused(img.astype(np.float32), focus)) for img in sample]
    # the colour mapping is fitted on refocused old images, as it is applied after the refocus
    if method == "stats":
        lab_s = _lab(_pixels(refocused)[None]).reshape(-1, 3)
        lab_t = _lab(_pixels(target)[None]).reshape(-1, 3)
        style = Style(
            method,
            focus,
            0.0,
            source_mean=_triple(lab_s.mean(0)),
            source_std=_triple(lab_s.std(0)),
            target_mean=_triple(lab_t.mean(0)),
            target_std=_triple(lab_t.std(0)),
        )
    else:
        levels = np.linspace(0, 1, QUANTILES)
        pix_s, pix_t = _pixels(refocused).astype(np.float32), _pixels(target).astype(np.float32)
        source_q = np.stack([np.quantile(pix_s[:, c], levels) for c in range(3)]).astype(np.float32)
        target_q = np.stack([np.quantile(pix_t[:, c], levels) for c in range(3)]).astype(np.float32)
        # strictly increasing, so that np.interp maps a flat stretch of the source evenly
        source_q = np.maximum.accumulate(source_q + np.arange(QUANTILES, dtype=np.float32) * 1e-4, axis=1)
        style = Style(method, focus, 0.0, source_quantiles=source_q, target_quantiles=target_q)
    # noise: what the new condition has beyond what an old image keeps through the change
    rng = np.random.default_rng(0)
    kept = float(np.median([noise_level(style.apply(img, rng)) for img in sample]))
    noise_t = float(np.median([noise_level(img) for img in target]))
    figures = {
        "source_sharpness": sharp_s,
        "target_sharpness": sharp_t,
        "source_noise": float(np.median([noise_level(img) for img in sample])),
        "target_noise": noise_t,
    }
    return replace(style, noise_sigma=math.sqrt(max(noise_t**2 - kept**2, 0.0)), figures=figures)


def _as_uint8(image: NDArray[np.float32]) -> NDArray[np.uint8]:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _triple(values: NDArray[np.float32]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])
