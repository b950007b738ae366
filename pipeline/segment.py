"""Template segmentation: find every instance of a reference template, then cut aligned crops.

The search runs coarse to fine:

1. **Coarse.** Image and template are shrunk by a power of two ``f`` chosen so the template keeps at
   least ``min_coarse_side`` pixels. Every (angle, scale) candidate of the template is correlated with
   the image (``cv2.matchTemplate``, normalised correlation coefficient), and the best candidate is
   kept per centre. Local maxima above a loose threshold become candidates.
2. **Fine.** Each candidate is refined at full resolution in a window of ``f + 2`` pixels: a
   parabola through the best scores at three angles (and three scales) gives the sub-step angle
   (and scale), twice, with the step shrinking by four; then a quadratic fit of the final score peak
   gives the sub-pixel centre.
3. **Selection.** Matches under ``min_score`` are dropped, and non-maximum suppression on the instance
   boxes keeps the best of overlapping matches, up to ``max_instances``, in reading order.

A rotated template is matched through its *inscribed* part: the centred box that stays inside the
template for every searched angle, so no matching window ever holds pixels from outside the template
and no mask is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.errors import InvalidArgumentError, TooSmallError
from defectscan.pipeline.geometry import (
    Pose,
    crop_at_pose,
    inscribed_fraction,
    inside_at_pose,
    nms,
    placement_matrix,
    pose_box,
)
from defectscan.pipeline.images import to_gray
from defectscan.pipeline.search_options import SegmentOptions, parse_range

__all__ = ["Detection", "SegmentOptions", "Segmenter", "parse_range"]

Gray = NDArray[np.float32]


@dataclass(frozen=True)
class Detection:
    """One found instance: its pose, its axis-aligned box ``(x, y, w, h)`` and its match score."""

    pose: Pose
    box: tuple[float, float, float, float]
    score: float


def _threads() -> int:
    """Threads for the search: OpenCV's matching releases the GIL, and one small match uses one core."""
    return max(1, min(cv2.getNumThreads(), os.cpu_count() or 1))


def _step(values: tuple[float, ...]) -> float:
    return min(np.diff(values)) if len(values) > 1 else 0.0


@dataclass
class _Probe:
    """The best match of one (angle, scale) in one window: score and integer top-left."""

    score: float
    x: int
    y: int
    result: NDArray[np.float32] = field(repr=False)


class Segmenter:
    """A template prepared for searching; reuse one for many images of the same product.

    Example:
        >>> from pipeline.synth import generate_sheet, reference_template
        >>> sheet = generate_sheet(seed=1, index=0, defect_rate=0.0).image
        >>> segmenter = Segmenter(reference_template(), SegmentOptions(angles=parse_range("-5:5:1")))
        >>> detections = segmenter.find(sheet, "sheet_0000.png")
        >>> crops = segmenter.crops(sheet, detections)
        >>> len(detections), crops[0].shape == reference_template().shape
        (8, True)
    """

    def __init__(self, template: NDArray[np.uint8], options: SegmentOptions | None = None) -> None:
        self.options = options or SegmentOptions()
        self.template = template
        self.height, self.width = template.shape[:2]
        self._gray = to_gray(template)
        if float(self._gray.std()) < 1.0:
            raise InvalidArgumentError("template", "is featureless (one flat colour); nothing to match")
        self._angle_step = _step(self.options.angles)
        self._scale_step = _step(self.options.scales)
        reach = max(abs(a) for a in self.options.angles) + self._angle_step
        self._inner = inscribed_fraction(self.width, self.height, reach)
        side = self._inner * min(self.options.scales) * min(self.width, self.height)
        if side < 8:
            raise InvalidArgumentError("template", f"{self.width}x{self.height} is too small to search for")
        self.factor = 1
        if self.options.pyramid:
            while self.factor < 16 and side / (self.factor * 2) >= self.options.min_coarse_side:
                self.factor *= 2
        # Only templates on the search grid are reused from image to image; the angles and scales that
        # refinement probes are continuous and would grow the cache without end.
        self._grid = {(round(a, 6), round(s, 6)) for a in self.options.angles for s in self.options.scales}
        self._cache: dict[tuple[float, float, int], Gray] = {}

    # -- templates -------------------------------------------------------------------------------

    def _rotated(self, angle: float, scale: float, factor: int = 1) -> Gray:
        """The inscribed part of the template at ``angle`` and ``scale``, shrunk by ``factor``."""
        key = (round(angle, 6), round(scale, 6), factor)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if factor > 1:
            full = self._rotated(angle, scale)
            size = (max(full.shape[1] // factor, 4), max(full.shape[0] // factor, 4))
            out = np.asarray(cv2.resize(full, size, interpolation=cv2.INTER_AREA), np.float32)
        else:
            iw = max(int(self._inner * scale * self.width), 4)
            ih = max(int(self._inner * scale * self.height), 4)
            pose = Pose((iw - 1) / 2.0, (ih - 1) / 2.0, angle, scale)
            matrix = placement_matrix(pose, self.width, self.height)
            out = np.asarray(cv2.warpAffine(self._gray, matrix, (iw, ih), flags=cv2.INTER_LINEAR), np.float32)
        if key[:2] in self._grid:
            self._cache[key] = out
        return out

    # -- search ----------------------------------------------------------------------------------

    def find(self, image: NDArray[np.uint8], name: str = "image") -> list[Detection]:
        """Every instance of the template in ``image`` (RGB uint8), in reading order.

        Raises:
            TooSmallError: the image is smaller than the template in either dimension.
        """
        ih, iw = image.shape[:2]
        if ih < self.height or iw < self.width:
            raise TooSmallError(
                name, f"image {iw}x{ih} is smaller than the template {self.width}x{self.height}"
            )
        gray = to_gray(image)
        with ThreadPoolExecutor(_threads(), thread_name_prefix="segment") as pool:
            candidates = self._coarse(gray, pool)
            refined = [d for d in pool.map(lambda c: self._refine(gray, c), candidates) if d is not None]
        refined = [d for d in refined if d.score >= self.options.min_score]
        keep = nms([d.box for d in refined], [d.score for d in refined], self.options.nms_iou)
        chosen = [refined[i] for i in keep[: self.options.max_instances]]
        return _reading_order(chosen, self.height)

    def _coarse(self, gray: Gray, pool: ThreadPoolExecutor) -> list[tuple[float, float, float, float]]:
        """Candidate (cx, cy, angle, scale) at full-resolution coordinates, best first. The (angle,
        scale) correlations run on ``pool`` and are merged in their order, as one thread would."""
        f = self.factor
        size = (gray.shape[1] // f, gray.shape[0] // f)
        small = gray if f == 1 else cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        best = np.full(small.shape, -1.0, np.float32)
        which = np.zeros(small.shape, np.int32)
        combos = [(a, s) for a in self.options.angles for s in self.options.scales]

        def correlate(combo: tuple[float, float]) -> tuple[NDArray[np.float32], int, int] | None:
            tpl = self._rotated(combo[0], combo[1], f)
            th, tw = tpl.shape
            if th > small.shape[0] or tw > small.shape[1]:
                return None
            return np.asarray(cv2.matchTemplate(small, tpl, cv2.TM_CCOEFF_NORMED), np.float32), th, tw

        for j, found in enumerate(pool.map(correlate, combos)):
            if found is None:
                continue
            result, th, tw = found
            oy, ox = (th - 1) // 2, (tw - 1) // 2
            region = best[oy : oy + result.shape[0], ox : ox + result.shape[1]]
            better = result > region
            region[better] = result[better]
            which[oy : oy + result.shape[0], ox : ox + result.shape[1]][better] = j
        tpl = self._rotated(0.0, min(self.options.scales), f)
        radius = max(min(tpl.shape) // 4, 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        peaks = (best >= cv2.dilate(best, kernel)) & (best >= max(self.options.min_score - 0.25, 0.05))
        ys, xs = np.nonzero(peaks)
        order = np.argsort(-best[ys, xs], kind="stable")[: 4 * self.options.max_instances + 8]
        out = []
        for i in order:
            angle, scale = combos[int(which[ys[i], xs[i]])]
            out.append((xs[i] * f + (f - 1) / 2.0, ys[i] * f + (f - 1) / 2.0, angle, scale))
        return out

    def _probe(
        self, gray: Gray, cx: float, cy: float, angle: float, scale: float, margin: int
    ) -> _Probe | None:
        """Match one (angle, scale) in a window of ``margin`` pixels around an estimated centre."""
        tpl = self._rotated(angle, scale)
        th, tw = tpl.shape
        x0 = round(cx - (tw - 1) / 2.0) - margin
        y0 = round(cy - (th - 1) / 2.0) - margin
        xa, ya = max(x0, 0), max(y0, 0)
        xb = min(x0 + tw + 2 * margin, gray.shape[1])
        yb = min(y0 + th + 2 * margin, gray.shape[0])
        if xb - xa < tw or yb - ya < th:
            return None
        result = np.asarray(cv2.matchTemplate(gray[ya:yb, xa:xb], tpl, cv2.TM_CCOEFF_NORMED), np.float32)
        _, score, _, (px, py) = cv2.minMaxLoc(result)
        return _Probe(float(score), xa + px, ya + py, result)

    def _refine(self, gray: Gray, candidate: tuple[float, float, float, float]) -> Detection | None:
        """Climb to the best angle and scale at full resolution, then fit the sub-pixel centre.

        A candidate whose first full-resolution probe scores well under ``min_score`` is dropped
        before any climbing: most false coarse peaks end there.
        """
        cx, cy, angle, scale = candidate
        margin = self.factor + 2
        first = self._probe(gray, cx, cy, angle, scale, margin)
        if first is None or first.score < self.options.min_score - 0.15:
            return None
        cx, cy = self._centre(first, angle, scale)
        current: _Probe | None = first
        for shrink in (1.0, 4.0, 16.0):
            for axis, step in (("angle", self._angle_step), ("scale", self._scale_step)):
                if step == 0:
                    continue
                climbed = self._climb(gray, (cx, cy, angle, scale), axis, step / shrink, margin, current)
                if climbed is None:
                    return None
                (cx, cy, angle, scale), current = climbed
            margin, current = 2, None
        final = self._probe(gray, cx, cy, angle, scale, margin)
        if final is None:
            return None
        dx, dy = _subpixel(final.result)
        centre_x, centre_y = self._centre(final, angle, scale)
        pose = Pose(float(centre_x + dx), float(centre_y + dy), float(angle), float(scale))
        return Detection(pose, pose_box(pose, self.width, self.height), round(final.score, 6))

    def _climb(
        self,
        gray: Gray,
        start: tuple[float, float, float, float],
        axis: str,
        delta: float,
        margin: int,
        middle: _Probe | None,
    ) -> tuple[tuple[float, float, float, float], _Probe] | None:
        """Walk ``angle`` or ``scale`` by ``delta`` while a neighbour scores better, then move to the
        parabola's vertex. ``middle`` is the probe already made at the start, if any.

        Returns the new (cx, cy, angle, scale) and the best probe seen."""
        cx, cy, angle, scale = start

        def probe(value: float) -> _Probe | None:
            if axis == "angle":
                return self._probe(gray, cx, cy, value, scale, margin)
            return self._probe(gray, cx, cy, angle, value, margin)

        value = angle if axis == "angle" else scale
        found: _Probe | None = None
        for _ in range(8):
            probes = [probe(value - delta), middle or probe(value), probe(value + delta)]
            if any(p is None for p in probes):
                return None
            scores = [p.score for p in probes if p is not None]
            best = int(np.argmax(scores))
            found = probes[best]
            if found is None:
                return None
            moved = best != 1
            value += (float(best - 1) if moved else _parabola_peak(scores)) * delta
            angle, scale = (value, scale) if axis == "angle" else (angle, value)
            cx, cy = self._centre(found, angle, scale)
            middle = found
            if not moved:
                break
        return ((cx, cy, angle, scale), found) if found is not None else None

    def _centre(self, probe: _Probe, angle: float, scale: float) -> tuple[float, float]:
        th, tw = self._rotated(angle, scale).shape
        return probe.x + (tw - 1) / 2.0, probe.y + (th - 1) / 2.0

    def crops(self, image: NDArray[np.uint8], detections: Iterable[Detection]) -> list[NDArray[np.uint8]]:
        """The aligned crop of each detection: rotated and scaled back to the template's frame and size."""
        return [crop_at_pose(image, d.pose, self.width, self.height) for d in detections]

    def inside(
        self, image: NDArray[np.uint8], detections: Iterable[Detection]
    ) -> list[NDArray[np.bool_] | None]:
        """Per crop, the pixels that come from inside ``image`` (None where all of them do)."""
        masks = [inside_at_pose(image.shape, d.pose, self.width, self.height) for d in detections]
        return [None if m.all() else m for m in masks]

    def whole_crops(self, image: NDArray[np.uint8], name: str = "image") -> list[NDArray[np.uint8]]:
        """The crops of the instances that lie wholly inside ``image``: training material (a crop
        reaching past the image's edge holds black fill, which no OK part has)."""
        found = self.find(image, name)
        return [
            c for c, m in zip(self.crops(image, found), self.inside(image, found), strict=True) if m is None
        ]


def _argmax_xy(result: NDArray[np.float32]) -> tuple[int, int]:
    _, _, _, (x, y) = cv2.minMaxLoc(result)
    return int(x), int(y)


def _parabola_peak(values: list[float]) -> float:
    """Offset in (-0.5, 0.5) of the vertex of the parabola through three equally spaced samples."""
    left, mid, right = values
    curvature = left - 2 * mid + right
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


def _subpixel(result: NDArray[np.float32]) -> tuple[float, float]:
    """Sub-pixel offset of the peak of a score map by parabolas along its row and column."""
    x, y = _argmax_xy(result)
    dx = dy = 0.0
    if 0 < x < result.shape[1] - 1:
        dx = _parabola_peak([float(result[y, x - 1]), float(result[y, x]), float(result[y, x + 1])])
    if 0 < y < result.shape[0] - 1:
        dy = _parabola_peak([float(result[y - 1, x]), float(result[y, x]), float(result[y + 1, x])])
    return dx, dy


def _reading_order(detections: list[Detection], template_height: int) -> list[Detection]:
    """Rows top to bottom, then left to right; a row starts half a template below the previous row's start."""
    rows: list[list[Detection]] = []
    for det in sorted(detections, key=lambda d: d.pose.cy):
        if rows and det.pose.cy - rows[-1][0].pose.cy <= template_height / 2:
            rows[-1].append(det)
        else:
            rows.append([det])
    return [d for row in rows for d in sorted(row, key=lambda d: d.pose.cx)]
