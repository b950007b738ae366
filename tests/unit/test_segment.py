"""Template segmentation: accuracy on jittered sheets, aligned crops, edge cases and typed errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defectscan.pipeline.errors import InvalidArgumentError, TooSmallError
from defectscan.pipeline.geometry import Pose, iou, placement_matrix, pose_corners
from defectscan.pipeline.images import to_gray
from defectscan.pipeline.segment import Detection, Segmenter, SegmentOptions, parse_range
from defectscan.pipeline.synth import TEMPLATE_HEIGHT, TEMPLATE_WIDTH, Sheet, SheetInstance

SEARCH = SegmentOptions(angles=parse_range("-5:5:1"), scales=parse_range("0.95:1.05:0.05"))


@pytest.fixture(scope="module")
def segmenter(template: np.ndarray) -> Segmenter:
    return Segmenter(template, SEARCH)


def _match(truth: list[SheetInstance], found: list[Detection]) -> list[tuple[SheetInstance, Detection]]:
    pairs = []
    for inst in truth:
        best = max(found, key=lambda d: iou(d.box, inst.box))
        pairs.append((inst, best))
    return pairs


def test_crops_are_aligned_to_the_template(segmenter: Segmenter, sheets: list[Sheet]) -> None:
    """Every crop pixel comes from within 1 px of where the true pose puts it (checked at the corners,
    where angle and scale errors are largest), and the crop looks like the crop at the true pose."""
    for sheet in sheets:
        found = segmenter.find(sheet.image)
        crops = segmenter.crops(sheet.image, found)
        for (inst, det), crop in zip(_match(sheet.instances, found), crops, strict=True):
            assert crop.shape == (TEMPLATE_HEIGHT, TEMPLATE_WIDTH, 3)
            drift = pose_corners(det.pose, TEMPLATE_WIDTH, TEMPLATE_HEIGHT) - pose_corners(
                inst.pose, TEMPLATE_WIDTH, TEMPLATE_HEIGHT
            )
            assert np.hypot(drift[:, 0], drift[:, 1]).max() <= 1.0
            corr = np.corrcoef(to_gray(crop).ravel(), to_gray(sheet.crop(inst)).ravel())[0, 1]
            assert corr > 0.99


def test_results_come_in_reading_order(segmenter: Segmenter, sheets: list[Sheet]) -> None:
    found = segmenter.find(sheets[1].image)
    centres = [(d.pose.cy // 600, d.pose.cx) for d in found]
    assert centres == sorted(centres)


def test_blank_image_gives_an_empty_list(segmenter: Segmenter) -> None:
    blank = np.full((800, 1000, 3), 30, np.uint8)
    blank += np.random.default_rng(0).integers(0, 6, blank.shape, dtype=np.uint8)
    assert segmenter.find(blank, "blank.png") == []


def test_image_smaller_than_template_is_a_named_error(segmenter: Segmenter) -> None:
    with pytest.raises(TooSmallError) as info:
        segmenter.find(np.zeros((300, 1000, 3), np.uint8), "strip.png")
    assert info.value.code == "too_small" and "strip.png" in str(info.value)


def test_max_instances_keeps_the_best(template: np.ndarray, sheets: list[Sheet]) -> None:
    everything = Segmenter(template, SEARCH).find(sheets[2].image)
    three = Segmenter(template, SegmentOptions(**{**SEARCH.model_dump(), "max_instances": 3})).find(
        sheets[2].image
    )
    assert len(three) == 3
    best = sorted((d.score for d in everything), reverse=True)[:3]
    assert sorted((d.score for d in three), reverse=True) == pytest.approx(best)


def test_min_score_filters(template: np.ndarray, sheets: list[Sheet]) -> None:
    strict = Segmenter(template, SegmentOptions(**{**SEARCH.model_dump(), "min_score": 0.9999}))
    assert strict.find(sheets[0].image) == []


def test_pyramid_and_full_resolution_agree(template: np.ndarray, sheets: list[Sheet]) -> None:
    fast = Segmenter(template, SEARCH)
    full = Segmenter(template, SegmentOptions(**{**SEARCH.model_dump(), "pyramid": False}))
    assert fast.factor > 1 and full.factor == 1
    a, b = fast.find(sheets[3].image), full.find(sheets[3].image)
    assert len(a) == len(b) == 8
    for x, y in zip(a, b, strict=True):
        assert abs(x.pose.cx - y.pose.cx) < 0.3 and abs(x.pose.cy - y.pose.cy) < 0.3
        assert abs(x.pose.angle - y.pose.angle) < 0.1


@settings(max_examples=12, deadline=None)
@given(
    st.floats(-4.5, 4.5),
    st.floats(0.96, 1.04),
    st.floats(-40, 40),
    st.floats(-40, 40),
)
def test_any_pose_in_the_search_range_is_recovered(
    segmenter: Segmenter, template: np.ndarray, angle: float, scale: float, dx: float, dy: float
) -> None:
    pose = Pose(500.0 + dx, 400.0 + dy, angle, scale)
    canvas = cv2.warpAffine(
        template,
        placement_matrix(pose, TEMPLATE_WIDTH, TEMPLATE_HEIGHT),
        (1000, 800),
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(28, 32, 38),
    )
    (found,) = segmenter.find(canvas)
    assert abs(found.pose.cx - pose.cx) < 0.5 and abs(found.pose.cy - pose.cy) < 0.5
    assert abs(found.pose.angle - angle) < 0.2
    assert abs(found.pose.scale - scale) < 0.01


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-2:2:1", (-2.0, -1.0, 0.0, 1.0, 2.0)),
        ("0.95:1.05:0.05", (0.95, 1.0, 1.05)),
        ("3", (3.0,)),
        ("1,-1", (-1.0, 1.0)),
    ],
)
def test_parse_range(text: str, expected: tuple[float, ...]) -> None:
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["", "a:b:c", "1:0:1", "0:1:0", "0:1", "0:100000:0.001"])
def test_parse_range_rejects(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_range(text, "--angles")


def test_template_cache_holds_only_the_search_grid(template: np.ndarray, sheets: list[Sheet]) -> None:
    segmenter = Segmenter(template, SEARCH)
    for sheet in sheets:
        segmenter.find(sheet.image)
    grid = len(SEARCH.angles) * len(SEARCH.scales)
    assert len(segmenter._cache) <= 2 * grid  # full-resolution and coarse copies, nothing more


def test_featureless_template_is_refused() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        Segmenter(np.full((100, 120, 3), 90, np.uint8))
    assert "featureless" in str(info.value)


def test_flat_image_gives_no_detections_and_no_nan(segmenter: Segmenter) -> None:
    assert segmenter.find(np.zeros((900, 1200, 3), np.uint8), "black.png") == []
