"""Grading: defect types from the region map, evidence, and a severity that never drops as a defect grows."""

from __future__ import annotations

from itertools import islice

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from defectscan.pipeline.grade import _severity, delta_e2000, grade, level_of
from defectscan.pipeline.model import AnomalyModel, ModelConfig
from defectscan.pipeline.regions import region_map
from defectscan.pipeline.synth import instance_crops, reference_template

EXPECTED = {"blurry_text": "blurry_text", "structural": "structural", "color": "color_scratch"}


def _crops(seed: int, rate: float, count: int, kinds: tuple[str, ...] = ("color",)) -> list[np.ndarray]:
    """Defect-free crops (``rate`` 0) or defective ones of ``kinds``."""
    wanted = (c for c, i in instance_crops(seed, rate, kinds) if (i.defect is not None) == (rate > 0))
    return list(islice(wanted, count))


@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    return AnomalyModel.fit(_crops(1, 0.0, 48), ModelConfig(coreset_ratio=0.05))


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_synthetic_defects_get_their_type(model: AnomalyModel, kind: str) -> None:
    images = _crops(11, 1.0, 4, (kind,))
    for crop, res in zip(images, model.score(images), strict=True):
        defects = grade(crop, res.anomaly_map, model.calibration.threshold, model.reference, model.regions)
        assert defects, "the defect was not found"
        worst = max(defects, key=lambda d: d.severity)
        assert worst.type == EXPECTED[kind]
        assert set(worst.evidence) == {
            "elongation",
            "sharpness_ratio",
            "structure_iou",
            "delta_e",
            "delta_e_p95",
            "foreign_colour",
            "flipped",
            "flipped_pct",
        }


@pytest.mark.parametrize(("towards_print", "expected"), [(0.55, "color_scratch"), (1.0, "structural")])
def test_new_print_is_structural_and_a_blended_line_is_a_scratch(towards_print: float, expected: str) -> None:
    """A 2 px line across the sunburst, in a colour ``towards_print`` of the way from the substrate's
    to the print's: in the print's own colour it is print that appeared (a short, a spur); a grey
    that only blends the two, just past the midpoint, is a scratch."""
    reference = reference_template()
    regions = region_map(reference)
    ink = reference[regions.structure].mean(axis=0)
    substrate = reference[~regions.structure].mean(axis=0)
    line = np.zeros(reference.shape[:2], np.uint8)
    cv2.line(line, (270, 100), (390, 170), 255, 2)
    crop = reference.copy()
    crop[line > 0] = (substrate + towards_print * (ink - substrate)).astype(np.uint8)
    near = cv2.dilate(line, np.ones((21, 21), np.uint8)) > 0
    amap = np.where(near, 2.0, 0.2).astype(np.float32)
    (defect,) = grade(crop, amap, 1.0, reference, regions)
    assert defect.type == expected
    assert (defect.evidence["flipped"] >= 0.5) == (expected == "structural")


def test_severity_grows_with_size_and_strength() -> None:
    reference = reference_template()
    regions = region_map(reference)
    threshold = 1.0
    previous = -1.0
    for step in range(1, 7):  # a colour blob inside the star: larger, stronger, scoring higher
        radius, alpha = 4 + 3 * step, 0.15 * step
        yy, xx = np.mgrid[: reference.shape[0], : reference.shape[1]]
        blob = (yy - 140) ** 2 + (xx - 118) ** 2 <= radius**2
        crop = reference.astype(np.float32)
        crop[blob] = crop[blob] * (1 - alpha) + np.array([178, 84, 66]) * alpha
        amap = np.where(blob, threshold * (1 + 0.3 * step), 0.2).astype(np.float32)
        defects = grade(crop.astype(np.uint8), amap, threshold, reference, regions)
        assert len(defects) == 1 and defects[0].type == "color_scratch"
        assert defects[0].severity >= previous
        previous = defects[0].severity
    assert previous > 50


@given(
    st.floats(0, 50), st.floats(1, 5), st.floats(0, 30), st.floats(0, 5), st.floats(0, 2), st.floats(0, 20)
)
def test_severity_is_monotonic_in_each_term(
    area: float, peak: float, delta_e: float, more_area: float, more_peak: float, more_e: float
) -> None:
    for kind in ("color_scratch", "structural", "blurry_text", "other"):
        base = {
            "delta_e_p95": delta_e,
            "structure_iou": 1 - delta_e / 30,
            "sharpness_ratio": 1 - delta_e / 30,
        }
        grown = {
            "delta_e_p95": delta_e + more_e,
            "structure_iou": 1 - (delta_e + more_e) / 50 * 0.6 - delta_e / 30 * 0.4,
            "sharpness_ratio": 1 - (delta_e + more_e) / 50 * 0.6 - delta_e / 30 * 0.4,
        }
        grown = {k: min(v, base[k]) if k != "delta_e_p95" else v for k, v in grown.items()}
        low = _severity(kind, area, peak, base)
        high = _severity(kind, area + more_area, peak + more_peak, grown)
        assert 0 <= low <= high <= 100


def test_levels_and_colour_difference() -> None:
    assert [level_of(s) for s in (5, 39.9, 40, 69.9, 70, 100)] == [
        "minor",
        "minor",
        "major",
        "major",
        "critical",
        "critical",
    ]
    same = np.array([[10, 200, 30]], np.uint8)
    assert delta_e2000(same, same)[0] == pytest.approx(0.0, abs=1e-9)
    assert delta_e2000(np.array([[255, 0, 0]], np.uint8), np.array([[0, 0, 255]], np.uint8))[0] > 20
