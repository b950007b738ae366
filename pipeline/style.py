"""A new condition's look, learned from a few of its OK images and put on the old condition's OK images.

A line gets a new camera, new lighting or a new substrate batch and the product is unchanged: the
images differ in lighting, colour, brightness, contrast, white balance, sharpness and noise, not in
structure. :func:`fit_style` measures both conditions from their OK images and :meth:`Style.apply`
changes an old image by a smooth lighting field, a blur or a sharpening, a per-pixel colour map and
noise, so every edge stays where it was (the structure and the aligned geometry are unchanged; tested).
In the order they are applied:

1. **lighting**: each image's light falls off across it (a plane in log luminance over the image's
   normalised coordinates, fitted to the image blurred and shrunk against the old condition's mean
   image, so the product's own pattern cancels). Each generated image gets the slopes and the level of
   one of the new images, less the old images' mean: a new light that falls off more steeply, or
   lights some parts more than others, is carried;
2. **sharpness** (:func:`sharpness`): on the strongest tenth of the edges, the gradient magnitude
   after a light blur over the same after a blur twice as wide, which a gain, a tone curve, a colour
   cast, a light gradient and noise leave alone. A blurrier new condition is matched with the Gaussian
   blur that brings the old images' figure, after the colour map, to the new one's, a sharper one with
   an unsharp mask, each found by bisection;
3. **colour**: each channel mapped from the old condition's distribution to the new one's. Two
   methods: ``stats`` (Reinhard's transfer: each CIELAB channel's mean and standard deviation) and
   ``histogram`` (each RGB channel's quantiles mapped onto the new ones, which also carries gamma and
   clipping); :data:`DEFAULT_METHOD` was chosen by measurement (``bench/augment.py``);
4. **noise** (:func:`noise_level`, at two scales): Gaussian noise with a grain (a blur of 0 to 1 px:
   noise in a cut crop is no longer white) whose strength brings the old images' level, after the
   steps above, to the new one's at the coarser scale, the grain chosen to match best at the finer
   one, and as much of it common to the channels as the new condition's noise has
   (:func:`noise_shared`).

Everything a style holds is numbers (:meth:`Style.params`, recorded in the augmentation manifest).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

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
_FIELD_SIZE = 32  # px: the lighting field is fitted on images shrunk to this square
_FIELD_SMOOTH = 3.0  # px at that size: the product's detail is blurred away
_FIELD_DARK = 8.0  # grey levels added before the logarithm, so dark print does not dominate
_SAMPLE = 16  # the old condition's figures come from up to this many of its images


def _luma(image: NDArray[np.uint8]) -> NDArray[np.float32]:
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), np.float32)


def _gradient(luma: NDArray[np.float32], smooth: float) -> NDArray[np.float32]:
    """The gradient magnitude of ``luma`` after a Gaussian blur of ``smooth`` px."""
    blurred = cv2.GaussianBlur(luma, (0, 0), smooth)
    return np.hypot(cv2.Sobel(blurred, cv2.CV_32F, 1, 0), cv2.Sobel(blurred, cv2.CV_32F, 0, 1))


def _flat_response(image: NDArray[np.uint8] | NDArray[np.float32], scale: int) -> NDArray[np.float32]:
    """Each channel's response to a kernel that cancels planes, over the flatter half of the image at
    ``scale`` (1: the pixels; 2: the image halved), ``(N, 3)``."""
    x = np.asarray(image, np.float32)
    if scale > 1:
        x = np.asarray(
            cv2.resize(x, (x.shape[1] // scale, x.shape[0] // scale), interpolation=cv2.INTER_AREA),
            np.float32,
        )
    response = cv2.filter2D(x, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
    edges = _gradient(np.asarray(x.mean(axis=2), np.float32), 2.0)[1:-1, 1:-1]
    return np.asarray(response[edges <= np.median(edges)], np.float32)


def noise_level(image: NDArray[np.uint8] | NDArray[np.float32], scale: int = 1) -> float:
    """Sensor noise, in 8-bit units, at ``scale`` (1: the pixels; 2: the image halved, which sees noise
    that cutting and resizing spread over neighbouring pixels): the mean absolute response of each
    channel to a kernel that cancels planes, over the flatter half of the image (edges stay out of it),
    scaled to a Gaussian's sigma for white noise."""
    # for white noise the kernel's response has sigma 6 * sigma; E|N(0, s)| = 0.7979 s
    return float(np.abs(_flat_response(image, scale)).mean() / (0.7979 * 6.0))


def noise_shared(image: NDArray[np.uint8] | NDArray[np.float32]) -> float:
    """The share of the noise the colour channels have in common, 0 (independent) to 1 (grey images, or
    noise added after the colour was made): the mean correlation of their responses over the flatter
    half of the image."""
    response = _flat_response(image, 1)
    spread = response.std(axis=0)
    if (spread < 1e-6).any():
        return 1.0
    corr = np.asarray(np.corrcoef(response.T), np.float64)
    return float(np.clip((corr[0, 1] + corr[0, 2] + corr[1, 2]) / 3.0, 0.0, 1.0))


def sharpness(image: NDArray[np.uint8] | NDArray[np.float32]) -> float:
    """How sharp the edges are, whatever their contrast and the noise: on the strongest tenth of the
    edges, the luminance's mean gradient magnitude after a light blur over the same after a blur twice
    as wide. A gain or a tone curve scales both; a softer lens lowers the first more (higher: sharper)."""
    luma = _luma(_as_uint8(image)) if image.ndim == 3 else np.asarray(image, np.float32)
    fine, coarse = _gradient(luma, _SHARPNESS_PRESMOOTH), _gradient(luma, 2 * _SHARPNESS_PRESMOOTH)
    edges = coarse >= np.quantile(coarse, 0.9)
    return float(fine[edges].mean() / max(float(coarse[edges].mean()), 1e-6))


def _refocused(image: NDArray[np.float32], amount: float) -> NDArray[np.float32]:
    """``amount`` > 0: a Gaussian blur of that sigma; < 0: an unsharp mask of strength ``-amount``."""
    if amount == 0:
        return image
    if amount > 0:
        return np.asarray(cv2.GaussianBlur(image, (0, 0), amount), np.float32)
    soft = cv2.GaussianBlur(image, (0, 0), 1.0)
    return np.asarray(image + (-amount) * (image - soft), np.float32)


def _bisect(figure: Callable[[float], float], target: float, lo: float, hi: float, rising: bool) -> float:
    """The argument in ``[lo, hi]`` at which the monotone ``figure`` meets ``target``."""
    for _ in range(14):
        mid = (lo + hi) / 2
        if (figure(mid) < target) == rising:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 4)


def _field_image(image: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The log luminance of ``image`` blurred and shrunk to the lighting field's square."""
    small = cv2.resize(_luma(image), (_FIELD_SIZE, _FIELD_SIZE), interpolation=cv2.INTER_AREA)
    return np.log(cv2.GaussianBlur(small, (0, 0), _FIELD_SMOOTH) + _FIELD_DARK)


_AXIS = (np.arange(_FIELD_SIZE, dtype=np.float32) + 0.5) / _FIELD_SIZE - 0.5
_GRID_X, _GRID_Y = np.meshgrid(_AXIS, _AXIS)
_PLANE = np.stack([_GRID_X.ravel(), _GRID_Y.ravel(), np.ones(_GRID_X.size, np.float32)], axis=1)


def _light(image: NDArray[np.uint8], reference: NDArray[np.float32]) -> tuple[float, float, float]:
    """The light on ``image`` relative to ``reference`` (a :func:`_field_image`): the change of log
    luminance from the left edge to the right, from the top to the bottom, and its mean."""
    ratio = (_field_image(image) - reference).ravel()
    (sx, sy, level), *_ = np.linalg.lstsq(_PLANE, ratio, rcond=None)
    return float(sx), float(sy), float(level)


def _lit(image: NDArray[np.float32], light: tuple[float, ...]) -> NDArray[np.float32]:
    """``image`` under a light changed by ``light`` (see :func:`_light`)."""
    if not any(light):
        return image
    h, w = image.shape[:2]
    x = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    y = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    gain = np.exp(light[2] + light[0] * x[None, :] + light[1] * y[:, None]).astype(np.float32)
    return np.asarray(image * gain[..., None], np.float32)


def _lab(image: NDArray[np.uint8] | NDArray[np.float32]) -> NDArray[np.float32]:
    return np.asarray(cv2.cvtColor(np.asarray(image, np.float32) / 255.0, cv2.COLOR_RGB2LAB), np.float32)


def _pixels(images: Sequence[NDArray[Any]], limit: int = 400_000) -> NDArray[Any]:
    """Up to ``limit`` pixels of the images (an even sample), ``(N, 3)``."""
    stacked = np.concatenate([img.reshape(-1, 3) for img in images])
    step = max(1, len(stacked) // limit)
    return stacked[::step]


@dataclass(frozen=True)
class Style:
    """A learned change from one condition to another (see the module docstring)."""

    method: Method
    focus: float = 0.0  # > 0: blur sigma (px); < 0: unsharp strength; 0: none
    noise_sigma: float = 0.0  # Gaussian noise added, 8-bit units
    noise_grain: float = 0.0  # px: the added noise's blur (0: white); cut and resized images have grain
    noise_shared: float = 0.0  # the share of the added noise common to the channels (1: grey noise)
    lighting: tuple[tuple[float, float, float], ...] = ()  # lights put on old images, one drawn per image
    source_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # LAB, stats method
    source_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    target_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    target_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source_quantiles: NDArray[np.float32] = field(default_factory=lambda: np.empty((3, 0), np.float32))
    target_quantiles: NDArray[np.float32] = field(default_factory=lambda: np.empty((3, 0), np.float32))
    figures: dict[str, float] = field(default_factory=dict)

    def apply(self, image: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
        """``image`` of the old condition, in the new one's look (same size, same structure)."""
        light = self.lighting[int(rng.integers(len(self.lighting)))] if self.lighting else (0.0, 0.0, 0.0)
        out = self._toned(_refocused(_lit(image.astype(np.float32), light), self.focus))
        return _as_uint8(out + _noise(out.shape, self.noise_sigma, self.noise_grain, self.noise_shared, rng))

    def _toned(self, image: NDArray[np.float32]) -> NDArray[np.float32]:
        """The colour map (step 3) of an image in float grey levels."""
        if self.method == "stats":
            lab = _lab(np.clip(image, 0, 255))
            mean, std = np.array(self.source_mean, np.float32), np.array(self.source_std, np.float32)
            gain = np.array(self.target_std, np.float32) / np.maximum(std, np.float32(1e-6))
            lab = np.asarray((lab - mean) * gain + np.array(self.target_mean, np.float32), np.float32)
            return np.asarray(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), np.float32) * 255.0
        if self.source_quantiles.shape[1] == 0:
            return image
        channels = [
            np.interp(image[..., c], self.source_quantiles[c], self.target_quantiles[c]) for c in range(3)
        ]
        return np.stack(channels, axis=-1).astype(np.float32)

    def _toned_with(
        self, sources: Sequence[NDArray[np.float32]], target: Sequence[NDArray[np.uint8]]
    ) -> Style:
        """This style with its colour map fitted from ``sources`` (old images after lighting and refocus)
        to ``target``."""
        if self.method == "stats":
            lab_s = _lab(_pixels([np.clip(s, 0, 255) for s in sources])[None]).reshape(-1, 3)
            lab_t = _lab(_pixels(target)[None]).reshape(-1, 3)
            return replace(
                self,
                source_mean=_triple(lab_s.mean(0)),
                source_std=_triple(lab_s.std(0)),
                target_mean=_triple(lab_t.mean(0)),
                target_std=_triple(lab_t.std(0)),
            )
        levels = np.linspace(0, 1, QUANTILES)
        pix_s, pix_t = _pixels(sources).astype(np.float32), _pixels(target).astype(np.float32)
        source_q = np.stack([np.quantile(pix_s[:, c], levels) for c in range(3)]).astype(np.float32)
        target_q = np.stack([np.quantile(pix_t[:, c], levels) for c in range(3)]).astype(np.float32)
        for c in range(3):  # a level many source pixels share (a flat background) maps to one level
            _, group = np.unique(np.round(source_q[c], 3), return_inverse=True)
            sums = np.bincount(group, weights=target_q[c]) / np.bincount(group)
            target_q[c] = sums[group]
        # strictly increasing, so that np.interp is defined
        source_q = np.maximum.accumulate(source_q + np.arange(QUANTILES, dtype=np.float32) * 1e-4, axis=1)
        return replace(self, source_quantiles=source_q, target_quantiles=target_q)

    def params(self) -> dict[str, object]:
        """What the style does, as JSON-ready numbers."""
        made: dict[str, object] = {
            "method": self.method,
            "focus": self.focus,
            "noise_sigma": round(self.noise_sigma, 4),
            "noise_grain": self.noise_grain,
            "noise_shared": round(self.noise_shared, 4),
            "lighting": [_rounded(s) for s in self.lighting],
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
    sample = [source[int(i)] for i in np.linspace(0, len(source) - 1, min(_SAMPLE, len(source))).round()]
    # 1. lighting: each set's light against the old condition's mean image; the new images' slopes
    # less the old ones' mean, and their levels less their own mean (the colour map carries that)
    reference = np.mean([_field_image(img) for img in sample], axis=0)
    old = np.mean([_light(img, reference) for img in sample], axis=0)
    new = np.array([_light(img, reference) for img in target])
    shift = np.array([old[0], old[1], new[:, 2].mean()])
    lighting = tuple(_triple(np.round(light - shift, 4)) for light in new)
    style = Style(method, lighting=lighting)
    lit = [_lit(img.astype(np.float32), lighting[k % len(lighting)]) for k, img in enumerate(sample)]

    # 2 and 3. sharpness after the colour map; the map refitted on the refocused images
    sharp_t = float(np.mean([sharpness(img) for img in target]))

    toned = style._toned_with(lit, target)
    for _ in range(2):  # the map depends on the blur and the blur's figure on the map: twice settles both
        focus = _focus(lit, toned, sharp_t)
        toned = replace(toned, focus=focus)._toned_with([_refocused(img, focus) for img in lit], target)
    style = toned

    # 4. noise: the grain and sigma that bring the restyled images' levels at both scales to the new ones
    sigma, grain, shared = _noise_fit(style, sample, target)
    figures = {
        "source_sharpness": float(np.mean([sharpness(img) for img in sample])),
        "target_sharpness": sharp_t,
        "source_noise": float(np.median([noise_level(img) for img in sample])),
        "target_noise": float(np.median([noise_level(img) for img in target])),
    }
    return replace(style, noise_sigma=sigma, noise_grain=grain, noise_shared=shared, figures=figures)


def _focus(lit: Sequence[NDArray[np.float32]], toned: Style, target: float) -> float:
    """The refocus (see :func:`_refocused`) that brings the mean sharpness of ``lit`` images, colour
    mapped by ``toned``, to ``target``."""

    def after(amount: float) -> float:
        return float(np.mean([sharpness(toned._toned(_refocused(img, amount))) for img in lit]))

    now = after(0.0)
    if abs(now - target) <= 0.01 * now:
        return 0.0
    # from an unsharp mask of strength 3 to a blur of sigma 4 px, sharpness falls
    return _bisect(after, target, -3.0, 4.0, rising=False)


def _noise(
    shape: tuple[int, ...], sigma: float, grain: float, shared: float, rng: np.random.Generator
) -> NDArray[np.float32] | float:
    """Gaussian noise of standard deviation ``sigma`` in each channel, a share ``shared`` of its variance
    common to the channels, blurred by ``grain`` px (and rescaled)."""
    if sigma <= 0:
        return 0.0
    own = rng.standard_normal(shape, dtype=np.float32)
    common = rng.standard_normal((*shape[:2], 1), dtype=np.float32)
    noise = np.float32(math.sqrt(1.0 - shared)) * own + np.float32(math.sqrt(shared)) * common
    if grain > 0:
        noise = np.asarray(cv2.GaussianBlur(noise, (0, 0), grain), np.float32)
        noise /= np.float32(max(float(noise.std()), 1e-6))
    return noise * np.float32(sigma)


_GRAINS = (0.0, 0.35, 0.5, 0.6, 0.7, 0.85, 1.0)  # px: the noise blurs tried
_NOISE_WINDOW = 256  # px: noise is measured on each image's centre, at most this square


def _noise_fit(
    style: Style, sample: Sequence[NDArray[np.uint8]], target: Sequence[NDArray[np.uint8]]
) -> tuple[float, float, float]:
    """``(sigma, grain, shared)`` of the noise that brings ``sample``, restyled by ``style``, to the noise
    level of ``target`` at scale 2 (what a model of resized crops sees), with the grain whose level at
    scale 1 comes nearest the target's, and the target's share of noise common to the channels."""

    def window(img: NDArray[np.uint8]) -> NDArray[np.uint8]:
        h, w = img.shape[:2]
        top, left = max(0, (h - _NOISE_WINDOW) // 2), max(0, (w - _NOISE_WINDOW) // 2)
        return img[top : top + _NOISE_WINDOW, left : left + _NOISE_WINDOW]

    rng = np.random.default_rng(0)
    base = [style.apply(window(img), rng).astype(np.float32) for img in sample]
    shared = float(np.median([noise_shared(window(img)) for img in target]))
    fine_t = float(np.median([noise_level(window(img)) for img in target]))
    coarse_t = float(np.median([noise_level(window(img), 2) for img in target]))

    def noisy(sigma: float, grain: float) -> list[NDArray[np.uint8]]:
        rng = np.random.default_rng(1)
        return [_as_uint8(img + _noise(img.shape, sigma, grain, shared, rng)) for img in base]

    def coarse(sigma: float, grain: float) -> float:
        return float(np.median([noise_level(img, 2) for img in noisy(sigma, grain)]))

    if coarse(0.0, 0.0) >= coarse_t:
        return 0.0, 0.0, shared
    best: tuple[float, float, float] = (float("inf"), 0.0, 0.0)
    for grain in _GRAINS:
        sigma = _bisect(lambda s: coarse(s, grain), coarse_t, 0.0, 6.0 * coarse_t + 2.0, rising=True)  # noqa: B023
        miss = abs(float(np.median([noise_level(img) for img in noisy(sigma, grain)])) - fine_t)
        best = min(best, (miss, sigma, grain))
    return best[1], best[2], shared


def _as_uint8(image: NDArray[np.float32] | NDArray[np.uint8]) -> NDArray[np.uint8]:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _triple(values: NDArray[np.float32]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])
