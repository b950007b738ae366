"""Synthetic defects planted on OK crops, with exact masks: the yardstick a model is configured by when
no real defect images exist (``train --auto``).

A defect goes where the product is, never on the open background: :func:`placement` reads the
product's footprint from its reference image (the mean aligned OK crop) through the region map. A
print (a sharp-edged foreground on a substrate) gives the print, its text and a band of substrate
around it as wide as 3 % of the crop's shorter side (extra print lands next to print, not anywhere on
the sheet). A surface with no printed structure (a texture, a tile: no sharp Otsu boundary in the
reference) gives the whole crop less a 4 % border.

==================  ==================================================================================
kind                what is planted (``strength`` in [0, 1] grows its size and contrast)
==================  ==================================================================================
``crack``           a thin line, 1-3 px wide, that wanders (its direction jitters at every step), from
                    a point on the print; darker than a bright neighbourhood, brighter than a dark one
``stain``           an irregular, soft-edged blob of another colour and lightness (contamination, ink);
                    on a grey image it stays grey
``missing_print``   a blob of print replaced by substrate cut from elsewhere in the crop (on a surface
                    with no print: a blob cut and pasted from elsewhere, CutPaste)
``extra_print``     a blob of print pasted onto the substrate next to the print (on a surface with no
                    print: a blob cut from elsewhere, turned a quarter)
``texture``         a foreign texture under an irregular noise mask, blended in (DRAEM-style): the
                    crop's own content turned, shrunk and tiled, with its channels or tones changed
``text_blur``       a span of the text Gaussian-blurred (on products without text: a blob of the print's
                    edges or of the surface)
==================  ==================================================================================

The mask is exact: it is the set of pixels whose value changed, and only pixels that changed by at
least :data:`MIN_CHANGE` levels change at all (a defect has no invisible fringe). Everything is a
function of the crop, the placement, the kind and the random generator: :func:`planted_set` seeds crop
``i``'s generator with ``(seed, i)`` and gives it kind ``i mod len(kinds)``, so a set does not depend
on how many crops come after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.images import is_gray, to_gray
from defectscan.pipeline.regions import TEXT, RegionMap, region_map

KINDS: tuple[str, ...] = ("crack", "stain", "missing_print", "extra_print", "texture", "text_blur")
MIN_CHANGE = 6  # levels (8-bit): a pixel changes by at least this much, or not at all
_MIN_PIXELS, _MIN_COVER = (
    6,
    0.25,
)  # a planted defect changes at least this many, and this share of its support
_TRIES = 12  # draws per defect before the crop is given up as unable to carry it
_BAND = 0.03  # the substrate band around a print, a share of the crop's shorter side
_BORDER = 0.04  # the border left out on a surface with no print


@dataclass(frozen=True)
class Placement:
    """Where defects may go on a product's crops: its footprint, its print and its text (crop-sized)."""

    area: NDArray[np.bool_] = field(repr=False)
    printed: bool
    structure: NDArray[np.bool_] = field(repr=False)
    text: NDArray[np.bool_] = field(repr=False)

    def fitted(self, shape: tuple[int, int]) -> Placement:
        """The placement for a crop of ``shape`` (height, width): itself, or its masks resized (OK crops of
        a product vary a little in size; the model resizes them all)."""
        if self.area.shape == shape:
            return self

        def sized(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
            return np.asarray(
                cv2.resize(mask.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            )

        return Placement(sized(self.area), self.printed, sized(self.structure), sized(self.text))

    @property
    def substrate(self) -> NDArray[np.bool_]:
        """The footprint's substrate: where extra print can land."""
        return np.asarray(self.area & ~self.structure)


@dataclass(frozen=True)
class Planted:
    """A crop with one planted defect, the exact mask of the pixels it changed, and what made it."""

    image: NDArray[np.uint8] = field(repr=False)
    mask: NDArray[np.bool_] = field(repr=False)
    kind: str
    strength: float
    params: dict[str, Any]


def _is_printed(reference: NDArray[np.uint8], structure: NDArray[np.bool_]) -> bool:
    """A print has a sharp boundary between its two Otsu classes: their difference is crossed within a
    few pixels (a vignette or a texture's mean spreads any difference over the whole crop)."""
    share = float(structure.mean())
    if not 0.01 <= share <= 0.9:
        return False
    gray = cv2.GaussianBlur(to_gray(reference), (0, 0), 1.0)
    gap = abs(float(gray[structure].mean()) - float(gray[~structure].mean()))
    if gap < 20.0:
        return False
    slope = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)) / 8.0
    boundary = cv2.morphologyEx(structure.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    return float(np.median(slope[boundary])) >= gap / 8.0


def placement(reference: NDArray[np.uint8], regions: RegionMap | None = None) -> Placement:
    """Where defects go on crops like ``reference`` (RGB, crop-sized), see the module docstring;
    ``regions``: the product's region map where it has one (a user's ``regions.png``)."""
    regions = regions if regions is not None else region_map(reference)
    height, width = regions.labels.shape
    text = np.asarray(regions.labels == TEXT)
    if _is_printed(reference, regions.structure):
        band = max(3, round(_BAND * min(height, width)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
        area = cv2.dilate((regions.structure | text).astype(np.uint8), kernel) > 0
        return Placement(np.asarray(area), True, regions.structure, text)
    border = max(2, round(_BORDER * min(height, width)))
    area = np.zeros((height, width), bool)
    area[border : height - border, border : width - border] = True
    return Placement(area, False, np.asarray(area.copy()), np.zeros_like(area))


def _applied(
    crop: NDArray[np.uint8], candidate: NDArray[np.float32], alpha: NDArray[np.float32]
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """``candidate`` blended over ``crop`` by ``alpha``, where that changes a pixel by at least
    :data:`MIN_CHANGE`; and the exact mask of the changed pixels."""
    source = crop.astype(np.float32)
    blended = source + alpha[..., None] * (candidate - source)
    change = np.abs(blended - source).max(axis=2)
    keep = (alpha > 0) & (change >= MIN_CHANGE)
    out = np.where(keep[..., None], np.clip(np.rint(blended), 0, 255), source).astype(np.uint8)
    return out, np.asarray((out != crop).any(axis=2))


def _pick(where: NDArray[np.bool_], rng: np.random.Generator) -> tuple[int, int] | None:
    """A random ``(y, x)`` of ``where``, or None where it is empty."""
    ys, xs = np.nonzero(where)
    if ys.size == 0:
        return None
    i = int(rng.integers(ys.size))
    return int(ys[i]), int(xs[i])


def _blob(
    shape: tuple[int, int], centre: tuple[int, int], radius: float, rng: np.random.Generator
) -> NDArray[np.float32]:
    """A soft irregular blob (0..1) about ``radius`` px across its middle: an ellipse of random aspect
    and angle, its outline roughened by smoothed noise."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    aspect = rng.uniform(0.5, 1.0)
    dy, dx = yy - centre[0], xx - centre[1]
    u = (dx * math.cos(angle) + dy * math.sin(angle)) / radius
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / (radius * aspect)
    noise = np.asarray(
        cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), max(radius / 3, 1.0)),
        np.float32,
    )
    noise = noise / max(float(noise.std()), 1e-6)
    inside = (u * u + v * v) < (1.0 + 0.35 * noise)
    soft = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), max(radius / 10, 0.7))
    return np.asarray(np.where(soft >= 0.15, soft, 0.0), np.float32)


def _shifted(crop: NDArray[np.uint8], dy: int, dx: int) -> NDArray[np.float32]:
    """``crop`` moved by ``(dy, dx)`` (what lies at ``p - (dy, dx)`` shows at ``p``), edges reflected."""
    matrix = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    size = (crop.shape[1], crop.shape[0])
    return np.asarray(cv2.warpAffine(crop, matrix, size, borderMode=cv2.BORDER_REFLECT), np.float32)


def _from_elsewhere(
    crop: NDArray[np.uint8],
    blob: NDArray[np.float32],
    source: NDArray[np.bool_] | None,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float32], tuple[int, int]] | None:
    """The crop moved so that the blob shows content from elsewhere, at least a blob's width away: of
    40 random moves, the one that brings most ``source`` pixels under the blob (at least a third; thin
    print fills little of a blob), or the first where no source is given."""
    height, width = blob.shape
    ys, xs = np.nonzero(blob > 0)
    span = max(int(np.ptp(ys)), int(np.ptp(xs)), 4)
    best, best_share = None, 1 / 3
    for _ in range(40):
        dy = int(rng.integers(-height // 2, height // 2 + 1))
        dx = int(rng.integers(-width // 2, width // 2 + 1))
        sy, sx = ys - dy, xs - dx
        inside = (sy >= 0) & (sy < height) & (sx >= 0) & (sx < width)
        if max(abs(dy), abs(dx)) < span or not inside.all():
            continue
        if source is None:
            return _shifted(crop, dy, dx), (dy, dx)
        share = float(source[sy, sx].mean())
        if share >= best_share:
            best, best_share = (dy, dx), share
        if share >= 0.95:
            break
    return None if best is None else (_shifted(crop, *best), best)


def _radius(shape: tuple[int, ...], strength: float, low: float, high: float) -> float:
    return max(2.5, (low + (high - low) * strength) * min(shape[0], shape[1]))


def _crack(
    crop: NDArray[np.uint8], at: Placement, strength: float, rng: np.random.Generator
) -> tuple[Any, ...] | None:
    start = _pick(at.structure & at.area, rng)
    if start is None:
        return None
    length = (0.15 + 0.25 * strength) * min(crop.shape[:2])
    width = int(rng.integers(1, 4))
    angle, step = rng.uniform(0, 2 * math.pi), 2.0
    points = [(float(start[1]), float(start[0]))]
    for _ in range(max(2, int(length / step))):
        angle += rng.normal(0.0, 0.25)
        x, y = points[-1]
        points.append(
            (x + step * math.cos(angle) + rng.normal(0, 0.3), y + step * math.sin(angle) + rng.normal(0, 0.3))
        )
    scale = 4  # drawn at 4x and averaged down: widths of 1-3 px with antialiased sides
    canvas = np.zeros((crop.shape[0] * scale, crop.shape[1] * scale), np.uint8)
    line = np.round(np.array(points) * scale + scale / 2).astype(np.int32)
    cv2.polylines(canvas, [line], False, 255, thickness=width * scale, lineType=cv2.LINE_AA)
    alpha = cv2.resize(canvas.astype(np.float32) / 255.0, crop.shape[1::-1], interpolation=cv2.INTER_AREA)
    alpha = np.where(alpha >= 0.3, alpha, 0.0).astype(np.float32) * at.area
    local = cv2.GaussianBlur(to_gray(crop), (0, 0), 4.0)
    contrast = 50.0 + 90.0 * strength
    sign = np.where(local > 110.0, -1.0, 1.0).astype(np.float32)
    candidate = crop.astype(np.float32) + (sign * contrast)[..., None]
    return candidate, alpha, {"start": list(start), "length_px": round(length, 1), "width_px": width}


def _stain(
    crop: NDArray[np.uint8], at: Placement, strength: float, rng: np.random.Generator
) -> tuple[Any, ...] | None:
    centre = _pick(at.area, rng)
    if centre is None:
        return None
    radius = _radius(crop.shape, strength, 0.03, 0.09)
    opacity = 0.55 + 0.45 * strength
    alpha = _blob(crop.shape[:2], centre, radius, rng) * opacity * at.area
    lab = cv2.cvtColor(crop.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    lightness = float(rng.choice([-1.0, 1.0])) * (15.0 + 30.0 * strength)
    hue = (0.0, 0.0) if is_gray(crop) else tuple(float(v) for v in rng.normal(0.0, 15.0 + 25.0 * strength, 2))
    lab = lab + np.array([lightness, hue[0], hue[1]], np.float32)
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    candidate = np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), 0, 1) * 255.0
    params = {"centre": list(centre), "radius_px": round(radius, 1), "lightness": round(lightness, 1)}
    return candidate, alpha, params | {"ab_shift": [round(v, 1) for v in hue]}


def _print_moved(
    crop: NDArray[np.uint8], at: Placement, strength: float, rng: np.random.Generator, extra: bool
) -> tuple[Any, ...] | None:
    """Missing print (print covered by substrate) or extra print (print on the substrate beside it)."""
    if at.printed:
        print_only = at.structure & ~at.text
        target, source = (at.substrate, print_only) if extra else (at.structure, ~at.structure & ~at.text)
    else:
        target, source = at.area, None
    centre = _pick(target, rng)
    if centre is None:
        return None
    radius = _radius(crop.shape, strength, 0.025, 0.07)
    blob = _blob(crop.shape[:2], centre, radius, rng) * at.area
    if not blob.any():
        return None
    moved = _from_elsewhere(crop, blob, source if at.printed else None, rng)
    if moved is None:
        return None
    candidate, offset = moved
    if at.printed:  # only the print changes: where it goes (extra) or where it was (missing)
        print_at = _shifted(at.structure.astype(np.uint8), *offset) > 0 if extra else at.structure
        blob = blob * (cv2.dilate(print_at.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    if extra and not at.printed:
        candidate = np.asarray(cv2.rotate(candidate, cv2.ROTATE_90_CLOCKWISE), np.float32)
        candidate = np.asarray(
            cv2.resize(candidate, crop.shape[1::-1], interpolation=cv2.INTER_LINEAR), np.float32
        )
    return (
        candidate,
        blob,
        {"centre": list(centre), "radius_px": round(radius, 1), "from_offset": list(offset)},
    )


def _texture(
    crop: NDArray[np.uint8], at: Placement, strength: float, rng: np.random.Generator
) -> tuple[Any, ...] | None:
    centre = _pick(at.area, rng)
    if centre is None:
        return None
    height, width = crop.shape[:2]
    small = cv2.resize(np.ascontiguousarray(np.rot90(crop)), (max(width // 3, 4), max(height // 3, 4)))
    tiled = np.tile(small, (4, 4, 1))[:height, :width].astype(np.float32)
    change = str(rng.choice(["channels", "tones"] if not is_gray(crop) else ["tones"]))
    foreign = tiled[..., rng.permutation(3)] if change == "channels" else 255.0 - tiled
    radius = _radius(crop.shape, strength, 0.05, 0.12)
    beta = 0.4 + 0.5 * strength  # the foreign texture's share, as DRAEM blends its textures
    alpha = _blob(crop.shape[:2], centre, radius, rng) * beta * at.area
    return (
        foreign,
        alpha,
        {"centre": list(centre), "radius_px": round(radius, 1), "change": change, "beta": round(beta, 2)},
    )


def _text_blur(
    crop: NDArray[np.uint8], at: Placement, strength: float, rng: np.random.Generator
) -> tuple[Any, ...] | None:
    sigma = 1.2 + 2.3 * strength
    candidate = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), sigma)
    if at.text.any():
        ys, xs = np.nonzero(at.text)
        x0, x1 = int(xs.min()), int(xs.max()) + 1
        span = max(4, int((x1 - x0) * (0.3 + 0.7 * strength)))
        left = int(rng.integers(x0, max(x0 + 1, x1 - span + 1)))
        alpha = np.zeros(crop.shape[:2], np.float32)
        alpha[int(ys.min()) : int(ys.max()) + 1, left : left + span] = 1.0
        return candidate, alpha * at.text, {"sigma": round(sigma, 2), "span_px": [left, left + span]}
    edges = cv2.morphologyEx(at.structure.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)) > 0
    centre = _pick((edges if at.printed else at.area) & at.area, rng)
    if centre is None:
        return None
    radius = _radius(crop.shape, strength, 0.05, 0.1)
    alpha = _blob(crop.shape[:2], centre, radius, rng) * at.area
    return candidate, alpha, {"sigma": round(sigma, 2), "centre": list(centre), "radius_px": round(radius, 1)}


_MAKERS: dict[str, Callable[..., tuple[Any, ...] | None]] = {
    "crack": _crack,
    "stain": _stain,
    "missing_print": lambda crop, at, s, rng: _print_moved(crop, at, s, rng, extra=False),
    "extra_print": lambda crop, at, s, rng: _print_moved(crop, at, s, rng, extra=True),
    "texture": _texture,
    "text_blur": _text_blur,
}


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """``kinds`` as a tuple, or an :class:`InvalidArgumentError` naming the unknown ones."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise InvalidArgumentError(
            "kinds", f"unknown {unknown or 'none given'}; the kinds are {', '.join(KINDS)}"
        )
    return tuple(kinds)


def plant(
    crop: NDArray[np.uint8], kind: str, at: Placement, rng: np.random.Generator, strength: float | None = None
) -> Planted:
    """One ``kind`` of defect on ``crop`` (RGB; the placement is resized to it); ``strength`` drawn in
    [0.3, 1] where not given. Draws again, a little stronger each time (up to a dozen times), where a draw
    changes too few pixels (fewer than 6, or under a quarter of those it covers: a cut-paste of one
    piece of a plain surface onto another changes little);
    an :class:`InvalidArgumentError` when none does (a crop without the contrast to carry it)."""
    check_kinds([kind])
    if crop.ndim != 3 or crop.shape[2] != 3 or min(crop.shape[:2]) < 16:
        raise InvalidArgumentError("crop", f"an RGB image of at least 16 x 16 px is needed, got {crop.shape}")
    at = at.fitted((crop.shape[0], crop.shape[1]))
    grey = is_gray(crop)
    level = float(rng.uniform(0.3, 1.0)) if strength is None else float(np.clip(strength, 0.0, 1.0))
    for _ in range(_TRIES):
        made = _MAKERS[kind](crop, at, level, rng)
        if made is not None:
            candidate, alpha, params = made
            if grey:
                candidate = np.repeat(
                    np.asarray(candidate, np.float32).mean(axis=2, keepdims=True), 3, axis=2
                )
            image, mask = _applied(crop, np.asarray(candidate, np.float32), np.asarray(alpha, np.float32))
            if int(mask.sum()) >= _MIN_PIXELS and mask.sum() >= _MIN_COVER * (np.asarray(alpha) > 0).sum():
                return Planted(image, mask, kind, round(level, 3), params)
        level = min(1.0, level + 0.1)  # too faint on this crop: stronger next time
    raise InvalidArgumentError("crop", f"no {kind} could be planted in {_TRIES} draws")


def planted_set(
    crops: Sequence[NDArray[np.uint8]], at: Placement, seed: int, kinds: Sequence[str] = KINDS
) -> Iterator[Planted]:
    """A defect on each of ``crops``: crop ``i`` gets kind ``i mod len(kinds)`` from a generator seeded
    by ``(seed, i)`` (the module docstring), or, where that kind cannot be planted on it (a blur on a
    plain surface), the next kind that can; an :class:`InvalidArgumentError` where none can."""
    kinds = check_kinds(kinds)
    for i, crop in enumerate(crops):
        rng = np.random.default_rng((seed, i))
        for k in range(len(kinds)):
            try:
                yield plant(crop, kinds[(i + k) % len(kinds)], at, rng)
                break
            except InvalidArgumentError:
                if k == len(kinds) - 1:
                    raise
