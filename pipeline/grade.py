"""Anomalous regions of an instance, their defect type, evidence, severity and level.

**Regions.** The instance's anomaly map (at the crop's resolution) is thresholded at the model's
threshold; every 8-connected component of at least ``min_area`` pixels is a region, with its box, area
(pixels and % of the crop) and peak and mean score.

**Type**, from where the region lies on the product's region map (:mod:`pipeline.regions`) and its
shape. Anomaly maps are smooth, so a region also spreads over the substrate around a defect; the rules
therefore weigh the classes *of the printed part* of the region (text, edge band, interior), in order:

1. ``other`` when less than 10 % of the region is on the print (a defect on the substrate);
2. ``blurry_text`` when text is at least half of its printed part;
3. ``structural`` when the change is one of shape: among the region's changed pixels (RGB distance to
   the reference over 25), at least half of the strong changes (by half the contrast between the
   reference's mean print and substrate colours, or more) flipped class - print became substrate or
   substrate became print, ending at least ``FLIP_REACH`` (65 %) of the way to the other class's
   colour along the line between the two (``flipped``; the partial changes of blurred edges are not
   counted, nor is a line of a blended, in-between colour such as a grey scratch over dark
   substrate, which only crosses the midpoint) - and at most half took a colour off the
   line through the reference's mean print and substrate colours (``foreign_colour``: a new colour
   came in, as a scratch or a stain does). With fewer than 5 changed pixels the region's classes decide
   instead: ``structural`` when the edge band is at least half of its printed part;
4. ``color_scratch`` otherwise: it lies within the structure.

**Evidence** (in the verdict), against the reference image inside the region's box:
``sharpness_ratio`` (variance of the Laplacian, crop over reference; below 1 is blurrier),
``structure_iou`` (the crop's print, binarised at the reference's Otsu level, against the reference's
structure mask), ``delta_e`` and ``delta_e_p95`` (mean and 95th percentile of the CIEDE2000 colour
difference over the region), ``flipped``, ``flipped_pct`` and ``foreign_colour`` (rule 3) and
``elongation`` (of the region's minimum-area rectangle).

**Severity** (0-100): ``100 * (1 - exp(-(a + e + v)))`` with the area term ``a = area_pct / 10``, the
excess term ``e = (peak / threshold - 1) / 2`` and the type's evidence term ``v``: ``1 -
sharpness_ratio`` for blurry text; for structural defects ``4 * flipped_pct`` (the % of the crop whose
pixels flipped between print and substrate: the structure that appeared or vanished), or ``1 -
structure_iou`` where too few pixels changed to count; ``delta_e_p95 / 20`` for colour and scratches
(how far the defect's own pixels changed colour: a region's mean is mostly the unchanged pixels
around a thin scratch); 0 for ``other`` (each clipped at 0). Every term grows with a larger or
stronger defect and the formula is increasing in each, so severity never drops as a defect grows
(tested).
**Level**: ``minor`` below ``levels[1]``, ``major`` below ``levels[2]``, ``critical`` from there (the
thresholds are in the model's config, default 40 and 70); an instance's severity is its worst region's,
and an instance with no region is ``none``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray
from skimage import color

from defectscan.pipeline.images import to_gray
from defectscan.pipeline.regions import EDGE, INTERIOR, TEXT, RegionMap
from defectscan.pipeline.verdict import Defect

DEFAULT_LEVELS = (0.0, 40.0, 70.0)
FOREIGN_RGB = 25.0  # RGB distance: a pixel that changed, and a colour off the print-substrate line
MIN_CHANGED = 5  # changed pixels needed to judge a region by its change
FLIP_REACH = 0.65  # how far towards the other class's colour a flipped pixel goes (0.5: the midpoint)


def find_regions(
    anomaly_map: NDArray[np.float32], threshold: float, min_area: int = 16
) -> list[NDArray[np.bool_]]:
    """Masks of the connected regions above ``threshold``, largest first."""
    above = (anomaly_map > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    keep = [label for label in range(1, count) if stats[label, cv2.CC_STAT_AREA] >= min_area]
    keep.sort(key=lambda label: -int(stats[label, cv2.CC_STAT_AREA]))
    return [labels == label for label in keep]


def grade(
    crop: NDArray[np.uint8],
    anomaly_map: NDArray[np.float32],
    threshold: float,
    reference: NDArray[np.uint8] | None,
    regions: RegionMap | None,
    min_area: int = 16,
    levels: tuple[float, float, float] = DEFAULT_LEVELS,
) -> list[Defect]:
    """Every anomalous region of one crop as a graded defect (see the module docstring)."""
    graded = grade_regions(crop, anomaly_map, threshold, reference, regions, min_area, levels)
    return [defect for defect, _ in graded]


def grade_regions(
    crop: NDArray[np.uint8],
    anomaly_map: NDArray[np.float32],
    threshold: float,
    reference: NDArray[np.uint8] | None,
    regions: RegionMap | None,
    min_area: int = 16,
    levels: tuple[float, float, float] = DEFAULT_LEVELS,
) -> list[tuple[Defect, NDArray[np.bool_]]]:
    """:func:`grade`, each defect with its region's mask (crop pixels)."""
    if reference is not None and reference.shape[:2] != crop.shape[:2]:
        reference = np.asarray(
            cv2.resize(reference, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_AREA)
        )
        regions = None  # a map made for another size does not apply
    out = []
    for mask in find_regions(anomaly_map, threshold, min_area):
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        values = anomaly_map[mask]
        area = int(mask.sum())
        area_pct = 100.0 * area / mask.size
        evidence = {"elongation": round(_elongation(mask), 3)}
        if reference is not None:
            evidence.update(_evidence(crop[y0:y1, x0:x1], reference[y0:y1, x0:x1], mask[y0:y1, x0:x1]))
            if regions is not None:
                evidence.update(_change_shares(crop, reference, regions, mask))
        kind = _type(mask, regions, evidence)
        peak = float(values.max())
        score = _severity(kind, area_pct, peak / max(threshold, 1e-9), evidence)
        defect = Defect(
            type=kind,
            level=level_of(score, levels),
            severity=round(score, 2),
            box=(x0, y0, x1 - x0, y1 - y0),
            area_px=area,
            area_pct=round(area_pct, 4),
            peak=round(peak, 6),
            mean=round(float(values.mean()), 6),
            evidence=evidence,
        )
        out.append((defect, mask))
    return out


def level_of(severity: float, levels: tuple[float, float, float] = DEFAULT_LEVELS) -> str:
    if severity >= levels[2]:
        return "critical"
    if severity >= levels[1]:
        return "major"
    return "minor"


def _type(mask: NDArray[np.bool_], regions: RegionMap | None, evidence: dict[str, float]) -> str:
    if regions is None:
        return "other"
    text, edge, interior = (regions.fraction(mask, c) for c in (TEXT, EDGE, INTERIOR))
    on_print = text + edge + interior
    if on_print < 0.1:
        return "other"
    if text / on_print >= 0.5:
        return "blurry_text"
    if "flipped" in evidence:
        shape = evidence["flipped"] >= 0.5 and evidence["foreign_colour"] <= 0.5
    else:
        shape = edge / on_print >= 0.5
    return "structural" if shape else "color_scratch"


def _change_shares(
    crop: NDArray[np.uint8], reference: NDArray[np.uint8], regions: RegionMap, mask: NDArray[np.bool_]
) -> dict[str, float]:
    """``flipped`` and ``foreign_colour`` shares of the region's changed pixels (rule 3); empty when
    fewer than ``MIN_CHANGED`` pixels changed or the reference has no print or no substrate."""
    ref = reference.reshape(-1, 3).astype(np.float32)
    structure = regions.structure.reshape(-1)
    if structure.all() or not structure.any():
        return {}
    pixels = crop[mask].astype(np.float32)
    changed = np.linalg.norm(pixels - reference[mask].astype(np.float32), axis=1) > FOREIGN_RGB
    if int(changed.sum()) < MIN_CHANGED:
        return {}
    print_rgb, substrate_rgb = ref[structure].mean(axis=0), ref[~structure].mean(axis=0)
    direction = (print_rgb - substrate_rgb) / max(float(np.linalg.norm(print_rgb - substrate_rgb)), 1e-6)
    offset = pixels[changed] - substrate_rgb
    along = offset @ direction
    off_line = offset - np.outer(along, direction)
    contrast = float(np.linalg.norm(print_rgb - substrate_rgb))
    # a flip is a strong change (at least half the print-substrate contrast) that ends near the other
    # class's colour (FLIP_REACH of the way there); the partial changes of blurred edges around a
    # defect, and a grey line that only blends print and substrate, are not counted
    strong = (
        np.linalg.norm(pixels[changed] - reference[mask][changed].astype(np.float32), axis=1) >= contrast / 2
    )
    was_print = regions.structure[mask][changed]
    flipped = strong & np.where(was_print, along < (1 - FLIP_REACH) * contrast, along > FLIP_REACH * contrast)
    return {
        "flipped": round(float(flipped.sum() / max(int(strong.sum()), 1)), 4),
        "flipped_pct": round(100.0 * float(flipped.sum()) / mask.size, 4),
        "foreign_colour": round(float((np.linalg.norm(off_line, axis=1) > FOREIGN_RGB).mean()), 4),
    }


def _elongation(mask: NDArray[np.bool_]) -> float:
    points = np.column_stack(np.nonzero(mask)).astype(np.float32)
    (_, _), (w, h), _ = cv2.minAreaRect(points)
    return float(max(w, h) / max(min(w, h), 1.0))


def _evidence(
    crop: NDArray[np.uint8], reference: NDArray[np.uint8], mask: NDArray[np.bool_]
) -> dict[str, float]:
    difference = delta_e2000(crop[mask], reference[mask])
    gray_c = to_gray(crop).astype(np.float32)
    gray_r = to_gray(reference).astype(np.float32)
    sharp_c = float(cv2.Laplacian(gray_c, cv2.CV_32F).var())
    sharp_r = float(cv2.Laplacian(gray_r, cv2.CV_32F).var())
    level, _ = cv2.threshold(
        np.clip(gray_r, 0, 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU
    )
    ink_r, ink_c = gray_r > level, gray_c > level
    union = int((ink_r | ink_c).sum())
    iou = float((ink_r & ink_c).sum()) / union if union else 1.0
    return {
        "sharpness_ratio": round(sharp_c / max(sharp_r, 1e-6), 4),
        "structure_iou": round(iou, 4),
        "delta_e": round(float(difference.mean()), 3),
        "delta_e_p95": round(float(np.percentile(difference, 95)), 3),
    }


def _severity(kind: str, area_pct: float, relative_peak: float, evidence: dict[str, float]) -> float:
    area_term = max(area_pct, 0.0) / 10
    excess = max(relative_peak - 1, 0.0) / 2
    if kind == "blurry_text":
        proof = 1 - evidence.get("sharpness_ratio", 1.0)
    elif kind == "structural":  # the print that appeared or vanished, else the structure's overlap
        if "flipped_pct" in evidence:
            proof = 4 * evidence["flipped_pct"]
        else:
            proof = 1 - evidence.get("structure_iou", 1.0)
    elif kind == "color_scratch":
        proof = evidence.get("delta_e_p95", 0.0) / 20
    else:
        proof = 0.0
    return 100 * (1 - math.exp(-(area_term + excess + max(proof, 0.0))))


def delta_e2000(rgb_a: NDArray[np.uint8], rgb_b: NDArray[np.uint8]) -> NDArray[np.float64]:
    """CIEDE2000 colour difference between two arrays of RGB pixels ``(..., 3)`` (scikit-image, D65)."""
    lab_a = color.rgb2lab(np.asarray(rgb_a, np.float64).reshape(-1, 1, 3) / 255.0)
    lab_b = color.rgb2lab(np.asarray(rgb_b, np.float64).reshape(-1, 1, 3) / 255.0)
    return np.asarray(color.deltaE_ciede2000(lab_a, lab_b), np.float64).reshape(np.shape(rgb_a)[:-1])
