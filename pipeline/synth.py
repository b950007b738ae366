"""Synthetic print sheets with exact ground truth, for tests, the demo and benchmarks.

A *product* is a foil-style print: light line-art on a dark substrate. Its template holds a frame, a
filled eight-point star, a sunburst of rays around a disc, a rule line and a short text string set in
Pillow's bundled FreeType font (Aileron). A *sheet* is a grid of instances of that template, each with
its own shift, rotation and scale jitter, under an illumination gradient, slight blur and sensor noise.

Defective instances carry one of four defects, each with a ``strength`` in [0, 1] that grows its size
and contrast, and a mask of exactly the pixels it changed:

* ``blurry_text``: the text is Gaussian-blurred;
* ``structural``: one sunburst ray is missing (its outer part), broken (a gap) or bent (a kink);
* ``color``: a blob inside the star takes another colour;
* ``scratch``: a thin line crosses the print.

Everything is a function of the seed and the sheet index, so a sheet never depends on how many
others were generated beside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from defectscan.pipeline.geometry import Pose, crop_at_pose, placement_matrix, pose_box

DEFECT_TYPES: tuple[str, ...] = ("blurry_text", "structural", "color", "scratch")

TEMPLATE_WIDTH = 448
TEMPLATE_HEIGHT = 352
SUBSTRATE = np.array([28.0, 32.0, 38.0], dtype=np.float32)
PRINT = np.array([226.0, 204.0, 148.0], dtype=np.float32)
TEXT = "FOIL 42 LOT 7A"

_STAR = ((118.0, 140.0), 88.0, 38.0, 8)  # centre, outer radius, inner radius, points
_BURST = ((330.0, 135.0), 28.0, 92.0, 16)  # centre, inner radius, outer radius, rays
_DISC_RADIUS = 18
_RULE = ((30, 252), (418, 252))
_TEXT_ORIGIN = (40, 270)
_TEXT_SIZE = 40
_STROKE = 3


@dataclass(frozen=True)
class SheetSpec:
    """Sheet size, grid and jitter ranges (uniform, symmetric)."""

    width: int = 2400
    height: int = 1200
    rows: int = 2
    cols: int = 4
    max_shift: float = 15.0
    max_angle: float = 3.0
    max_scale: float = 0.03
    noise_sigma: float = 2.5
    blur_sigma: tuple[float, float] = (0.5, 0.9)
    gradient: tuple[float, float] = (0.08, 0.18)
    colour_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # a colour cast (white balance) per channel


@dataclass(eq=False)
class Defect:
    """One defect on one instance, in the template's own frame."""

    type: str
    variant: str
    strength: float
    mask: NDArray[np.bool_]

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())


@dataclass
class SheetInstance:
    """Ground truth for one instance on a sheet."""

    index: int
    pose: Pose
    box: tuple[float, float, float, float]
    defect: Defect | None


@dataclass
class Sheet:
    """A rendered sheet, its defect mask (uint8 0/255) and the truth about every instance."""

    image: NDArray[np.uint8]
    mask: NDArray[np.uint8]
    instances: list[SheetInstance] = field(default_factory=list)

    def crop(self, instance: SheetInstance) -> NDArray[np.uint8]:
        """The aligned crop of one instance at its true pose."""
        return crop_at_pose(self.image, instance.pose, TEMPLATE_WIDTH, TEMPLATE_HEIGHT)


def _star_points() -> NDArray[np.float64]:
    (cx, cy), outer, inner, points = _STAR
    angles = np.arange(2 * points) * math.pi / points - math.pi / 2
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _ray(index: int) -> tuple[tuple[float, float], tuple[float, float]]:
    (cx, cy), r0, r1, rays = _BURST
    theta = 2 * math.pi * index / rays + math.pi / rays
    return (cx + r0 * math.cos(theta), cy + r0 * math.sin(theta)), (
        cx + r1 * math.cos(theta),
        cy + r1 * math.sin(theta),
    )


def _line(cov: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], thickness: int) -> None:
    """Anti-aliased line with sub-pixel end points (4 fractional bits)."""
    a = (round(p0[0] * 16), round(p0[1] * 16))
    b = (round(p1[0] * 16), round(p1[1] * 16))
    cv2.line(cov, a, b, 255, thickness, cv2.LINE_AA, shift=4)


def _structure_coverage(broken_ray: int = -1, variant: str = "", strength: float = 0.0) -> np.ndarray:
    """Coverage (0..1) of the printed structures, optionally with one ray made defective."""
    cov = np.zeros((TEMPLATE_HEIGHT, TEMPLATE_WIDTH), np.uint8)
    cv2.rectangle(cov, (10, 10), (TEMPLATE_WIDTH - 11, TEMPLATE_HEIGHT - 11), 255, _STROKE, cv2.LINE_AA)
    star = np.rint(_star_points() * 16).astype(np.int32)
    cv2.fillPoly(cov, [star], 255, cv2.LINE_AA, shift=4)
    (bx, by), _, _, rays = _BURST
    cv2.circle(cov, (int(bx), int(by)), _DISC_RADIUS, 255, -1, cv2.LINE_AA)
    for i in range(rays):
        p0, p1 = _ray(i)
        if i != broken_ray:
            _line(cov, p0, p1, _STROKE)
            continue
        # each variant changes about the same area at the same strength (tested), so severity can be
        # ranked against strength across variants: the changed length grows with strength
        if variant == "missing":  # its outer part is gone
            kept = 0.77 - 0.68 * strength
            _line(cov, p0, (p0[0] + (p1[0] - p0[0]) * kept, p0[1] + (p1[1] - p0[1]) * kept), _STROKE)
            continue
        if variant == "broken":
            gap = 12.0 + 48.0 * strength
            length = math.dist(p0, p1)
            start = (length - gap) / 2
            ux, uy = (p1[0] - p0[0]) / length, (p1[1] - p0[1]) / length
            _line(cov, p0, (p0[0] + ux * start, p0[1] + uy * start), _STROKE)
            _line(cov, (p0[0] + ux * (start + gap), p0[1] + uy * (start + gap)), p1, _STROKE)
        elif variant == "bent":  # its outer part turns by 30 degrees at a kink
            bent = 0.134 + 0.386 * strength
            kink = (p1[0] + (p0[0] - p1[0]) * bent, p1[1] + (p0[1] - p1[1]) * bent)
            turn = math.radians(30.0)
            dx, dy = p1[0] - kink[0], p1[1] - kink[1]
            end = (
                kink[0] + dx * math.cos(turn) - dy * math.sin(turn),
                kink[1] + dx * math.sin(turn) + dy * math.cos(turn),
            )
            _line(cov, p0, kink, _STROKE)
            _line(cov, kink, end, _STROKE)
    _line(cov, _RULE[0], _RULE[1], 2)
    return cov.astype(np.float32) / 255.0


@lru_cache(maxsize=1)
def _text_coverage() -> np.ndarray:
    canvas = Image.new("L", (TEMPLATE_WIDTH, TEMPLATE_HEIGHT), 0)
    font = ImageFont.load_default(size=_TEXT_SIZE)
    ImageDraw.Draw(canvas).text(_TEXT_ORIGIN, TEXT, fill=255, font=font)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def text_box() -> tuple[int, int, int, int]:
    """The ``(x, y, w, h)`` box of the template's text, in template pixels."""
    ys, xs = np.nonzero(_text_coverage() > 0.05)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _compose(coverage: np.ndarray) -> np.ndarray:
    cov = np.clip(coverage, 0.0, 1.0)[..., None]
    return SUBSTRATE * (1.0 - cov) + PRINT * cov


def _changed(a: np.ndarray, b: np.ndarray, limit: float, grow: int) -> NDArray[np.bool_]:
    diff = np.abs(a - b)
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    mask = (diff > limit).astype(np.uint8)
    if grow:
        mask = cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return mask.astype(bool)


@lru_cache(maxsize=1)
def _clean_float() -> np.ndarray:
    return _compose(np.maximum(_structure_coverage(), _text_coverage()))


def reference_template() -> NDArray[np.uint8]:
    """The product's clean template, ``TEMPLATE_HEIGHT x TEMPLATE_WIDTH x 3`` uint8 RGB."""
    return np.clip(np.rint(_clean_float()), 0, 255).astype(np.uint8)


def render_instance(
    defect_type: str | None, strength: float, rng: np.random.Generator
) -> tuple[np.ndarray, Defect | None]:
    """Render one instance in the template frame (float32 RGB), with the defect asked for.

    ``strength`` in [0, 1] grows the defect's size and contrast monotonically; ``rng`` picks where.
    """
    clean = _clean_float()
    if defect_type is None:
        return clean.copy(), None
    structures, text = _structure_coverage(), _text_coverage()
    variant = defect_type
    if defect_type == "blurry_text":
        sigma = 1.2 + 2.8 * strength
        blurred = cv2.GaussianBlur(text, (0, 0), sigma)
        image = _compose(np.maximum(structures, blurred))
        mask = _changed(blurred, text, 0.04, 1)
    elif defect_type == "structural":
        variant = str(rng.choice(["missing", "broken", "bent"]))
        ray = int(rng.integers(_BURST[3]))
        broken = _structure_coverage(ray, variant, strength)
        image = _compose(np.maximum(broken, text))
        mask = _changed(broken, structures, 0.04, 1)
    elif defect_type == "color":
        image, mask = _color_blob(clean, structures, strength, rng)
    elif defect_type == "scratch":
        image, mask = _scratch(clean, strength, rng)
    else:
        raise ValueError(f"unknown defect type {defect_type!r}; expected one of {DEFECT_TYPES}")
    return image, Defect(defect_type, variant, float(strength), mask)


def _color_blob(
    clean: np.ndarray, structures: np.ndarray, strength: float, rng: np.random.Generator
) -> tuple[np.ndarray, NDArray[np.bool_]]:
    (sx, sy), _, inner, _ = _STAR
    theta, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0, inner * 0.5)
    centre = (sx + dist * math.cos(theta), sy + dist * math.sin(theta))
    radius = 6.0 + 22.0 * strength
    axes = (radius, radius * rng.uniform(0.55, 1.0))
    blob = np.zeros(structures.shape, np.uint8)
    cv2.ellipse(
        blob,
        (round(centre[0] * 16), round(centre[1] * 16)),
        (round(axes[0] * 16), round(axes[1] * 16)),
        float(rng.uniform(0, 180)),
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
        shift=4,
    )
    weight = (blob.astype(np.float32) / 255.0) * (structures > 0.5)
    tint = np.array([178.0, 84.0, 66.0], dtype=np.float32)
    alpha = (0.35 + 0.5 * strength) * weight[..., None]
    image = clean * (1 - alpha) + tint * alpha
    return image, _changed(image, clean, 4.0, 0)


def _scratch(
    clean: np.ndarray, strength: float, rng: np.random.Generator
) -> tuple[np.ndarray, NDArray[np.bool_]]:
    (sx, sy), outer, _, _ = _STAR
    (bx, by), _, _, _ = _BURST
    cx, cy = (sx, sy) if rng.random() < 0.5 else (bx, by)
    centre = (cx + rng.uniform(-0.4, 0.4) * outer, cy + rng.uniform(-0.4, 0.4) * outer)
    theta = rng.uniform(0, math.pi)
    half = (30.0 + 90.0 * strength) / 2
    p0 = (centre[0] - half * math.cos(theta), centre[1] - half * math.sin(theta))
    p1 = (centre[0] + half * math.cos(theta), centre[1] + half * math.sin(theta))
    line = np.zeros(clean.shape[:2], np.uint8)
    _line(line, p0, p1, 1 if strength < 0.5 else 2)
    alpha = (line.astype(np.float32) / 255.0)[..., None] * (0.6 + 0.4 * strength)
    image = clean * (1 - alpha) + np.array([120.0, 122.0, 132.0], dtype=np.float32) * alpha
    return image, _changed(image, clean, 4.0, 1)


def generate_sheet(
    seed: int,
    index: int,
    defect_rate: float,
    spec: SheetSpec | None = None,
    defect_types: tuple[str, ...] = DEFECT_TYPES,
) -> Sheet:
    """Render sheet ``index`` of the series ``seed``.

    Each instance is defective with probability ``defect_rate``; its type is drawn uniformly from
    ``defect_types`` and its strength from U(0.3, 1).

    Example:
        >>> sheet = generate_sheet(seed=7, index=0, defect_rate=0.25)
        >>> sheet.image.shape, len(sheet.instances)
        ((1200, 2400, 3), 8)
    """
    spec = spec or SheetSpec()
    rng = np.random.default_rng([seed, index])
    canvas = np.empty((spec.height, spec.width, 3), np.float32)
    canvas[:] = SUBSTRATE
    mask = np.zeros((spec.height, spec.width), np.uint8)
    cell_w, cell_h = spec.width / spec.cols, spec.height / spec.rows
    instances: list[SheetInstance] = []
    for k in range(spec.rows * spec.cols):
        row, col = divmod(k, spec.cols)
        pose = Pose(
            cx=(col + 0.5) * cell_w - 0.5 + rng.uniform(-spec.max_shift, spec.max_shift),
            cy=(row + 0.5) * cell_h - 0.5 + rng.uniform(-spec.max_shift, spec.max_shift),
            angle=rng.uniform(-spec.max_angle, spec.max_angle),
            scale=1.0 + rng.uniform(-spec.max_scale, spec.max_scale),
        )
        defective = rng.random() < defect_rate
        kind = str(rng.choice(list(defect_types))) if defective else None
        image, defect = render_instance(kind, float(rng.uniform(0.3, 1.0)), rng)
        _paste(canvas, image, pose)
        if defect is not None:
            _paste_mask(mask, defect.mask, pose)
        instances.append(SheetInstance(k, pose, pose_box(pose, TEMPLATE_WIDTH, TEMPLATE_HEIGHT), defect))
    return Sheet(_photograph(canvas, spec, rng), mask, instances)


def _roi(pose: Pose, width: int, height: int, margin: int = 3) -> tuple[int, int, int, int]:
    x, y, w, h = pose_box(pose, TEMPLATE_WIDTH, TEMPLATE_HEIGHT)
    x0, y0 = max(math.floor(x) - margin, 0), max(math.floor(y) - margin, 0)
    x1 = min(math.ceil(x + w) + margin, width)
    y1 = min(math.ceil(y + h) + margin, height)
    return x0, y0, x1, y1


def _warp_into_roi(source: np.ndarray, pose: Pose, roi: tuple[int, int, int, int], flags: int) -> np.ndarray:
    x0, y0, x1, y1 = roi
    matrix = placement_matrix(pose, TEMPLATE_WIDTH, TEMPLATE_HEIGHT)
    matrix[:, 2] -= np.array([x0, y0], dtype=np.float64)
    return cv2.warpAffine(source, matrix, (x1 - x0, y1 - y0), flags=flags, borderMode=cv2.BORDER_CONSTANT)


def _paste(canvas: np.ndarray, image: np.ndarray, pose: Pose) -> None:
    roi = _roi(pose, canvas.shape[1], canvas.shape[0])
    x0, y0, x1, y1 = roi
    warped = _warp_into_roi(image.astype(np.float32), pose, roi, cv2.INTER_LINEAR)
    alpha = _warp_into_roi(np.ones(image.shape[:2], np.float32), pose, roi, cv2.INTER_LINEAR)[..., None]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - alpha) + warped * alpha


def _paste_mask(mask: np.ndarray, defect_mask: NDArray[np.bool_], pose: Pose) -> None:
    roi = _roi(pose, mask.shape[1], mask.shape[0])
    x0, y0, x1, y1 = roi
    warped = _warp_into_roi(defect_mask.astype(np.uint8) * 255, pose, roi, cv2.INTER_NEAREST)
    np.maximum(mask[y0:y1, x0:x1], warped, out=mask[y0:y1, x0:x1])


def _photograph(canvas: np.ndarray, spec: SheetSpec, rng: np.random.Generator) -> NDArray[np.uint8]:
    """Illumination gradient, colour cast, lens blur and sensor noise, then 8-bit quantisation."""
    phi = rng.uniform(0, 2 * math.pi)
    amplitude = rng.uniform(*spec.gradient)
    xs = (np.arange(spec.width, dtype=np.float32) / spec.width - 0.5) * math.cos(phi)
    ys = (np.arange(spec.height, dtype=np.float32) / spec.height - 0.5) * math.sin(phi)
    gain = 1.0 + amplitude * 2.0 * (ys[:, None] + xs[None, :])
    lit = canvas * gain[..., None]
    if spec.colour_gain != (1.0, 1.0, 1.0):
        lit *= np.array(spec.colour_gain, np.float32)
    blurred = np.asarray(cv2.GaussianBlur(lit, (0, 0), rng.uniform(*spec.blur_sigma)), np.float32)
    blurred += rng.standard_normal(blurred.shape, dtype=np.float32) * np.float32(spec.noise_sigma)
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def instance_crops(
    seed: int, defect_rate: float = 0.0, defect_types: tuple[str, ...] = DEFECT_TYPES
) -> Iterator[tuple[NDArray[np.uint8], SheetInstance]]:
    """The aligned crop and truth of every instance of sheets 0, 1, 2, ... of series ``seed``, endlessly
    (take what you need with ``itertools.islice``)."""
    index = 0
    while True:
        sheet = generate_sheet(seed, index, defect_rate, defect_types=defect_types)
        for instance in sheet.instances:
            yield sheet.crop(instance), instance
        index += 1
