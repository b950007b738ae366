"""Poses, boxes, NMS and aligned crops, with property tests where geometry is involved."""

from __future__ import annotations

import cv2
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from defectscan.pipeline.geometry import (
    Pose,
    crop_at_pose,
    inscribed_fraction,
    iou,
    nms,
    placement_matrix,
    pose_box,
    pose_corners,
)

box = st.tuples(st.floats(0, 500), st.floats(0, 500), st.floats(1, 200), st.floats(1, 200))


def test_placement_maps_template_centre_to_pose_centre() -> None:
    matrix = placement_matrix(Pose(100.0, 50.0, 17.0, 1.3), 11, 7)
    np.testing.assert_allclose(matrix @ [5.0, 3.0, 1.0], [100.0, 50.0])


def test_unrotated_box_is_the_template_rectangle() -> None:
    assert pose_box(Pose(100.0, 50.0, 0.0, 1.0), 11, 7) == (95.0, 47.0, 11.0, 7.0)


def test_rotation_is_counter_clockwise_as_displayed() -> None:
    # The template's right edge midpoint, turned by +90 degrees, points up (towards smaller y).
    corners = pose_corners(Pose(0.0, 0.0, 90.0, 1.0), 3, 3)
    top = corners[:, 1].min()
    assert np.isclose(top, -1.5)
    np.testing.assert_allclose(
        placement_matrix(Pose(0, 0, 90.0, 1.0), 3, 3) @ [2.0, 1.0, 1.0], [0, -1], atol=1e-9
    )


@given(box, box)
def test_iou_is_symmetric_and_bounded(a: tuple[float, ...], b: tuple[float, ...]) -> None:
    assert iou(a, b) == iou(b, a)
    assert 0.0 <= iou(a, b) <= 1.0 + 1e-12
    assert np.isclose(iou(a, a), 1.0)


@given(st.lists(st.tuples(box, st.floats(0, 1)), max_size=40), st.floats(0.0, 0.9))
def test_nms_keeps_no_overlap_above_the_limit(
    items: list[tuple[tuple[float, ...], float]], limit: float
) -> None:
    boxes = [b for b, _ in items]
    scores = [s for _, s in items]
    kept = nms(boxes, scores, limit)
    assert len(set(kept)) == len(kept)
    for i in kept:
        for j in kept:
            if i != j:
                assert iou(boxes[i], boxes[j]) <= limit
    # Every dropped box was suppressed by a kept one at least as good.
    for d in set(range(len(boxes))) - set(kept):
        assert any(iou(boxes[d], boxes[k]) > limit and scores[k] >= scores[d] for k in kept)
    assert [scores[i] for i in kept] == sorted((scores[i] for i in kept), reverse=True)


@settings(max_examples=40, deadline=None)
@given(
    st.floats(-30, 30),
    st.floats(0.8, 1.25),
    st.floats(120, 180),
    st.floats(100, 140),
)
def test_crop_at_pose_undoes_the_placement(angle: float, scale: float, cx: float, cy: float) -> None:
    rng = np.random.default_rng(0)
    tpl = cv2.GaussianBlur(rng.uniform(0, 255, (41, 61)).astype(np.float32), (0, 0), 2.0)
    pose = Pose(cx, cy, angle, scale)
    placed = cv2.warpAffine(tpl, placement_matrix(pose, 61, 41), (300, 240), flags=cv2.INTER_LINEAR)
    back = crop_at_pose(placed, pose, 61, 41)
    inner = (slice(6, -6), slice(6, -6))  # borders carry interpolation against the black outside
    assert np.abs(back[inner] - tpl[inner]).max() < 6.0
    assert np.abs(back[inner] - tpl[inner]).mean() < 1.0


@given(st.integers(20, 500), st.integers(20, 500), st.floats(0, 45))
def test_inscribed_box_stays_inside_every_rotation(w: int, h: int, max_angle: float) -> None:
    k = inscribed_fraction(w, h, max_angle)
    assert 0 < k <= 1
    for angle in (max_angle, -max_angle, max_angle / 2):
        # The inner box's corners, mapped back into the template frame, lie inside the template.
        inv = cv2.invertAffineTransform(placement_matrix(Pose(0, 0, angle, 1.0), w, h))
        for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            x, y = inv @ [sx * k * w / 2, sy * k * h / 2, 1.0]
            assert -0.5 - 1e-6 <= x <= w - 0.5 + 1e-6
            assert -0.5 - 1e-6 <= y <= h - 0.5 + 1e-6


def test_a_pose_comes_back_from_its_box() -> None:
    from defectscan.pipeline.geometry import Pose, pose_box, pose_of_box

    for pose in (Pose(100.25, 80.5, 0.0, 1.0), Pose(321.7, 210.1, -2.6, 1.03), Pose(50.0, 60.0, 4.0, 0.97)):
        back = pose_of_box(pose_box(pose, 448, 352), pose.angle, pose.scale)
        assert abs(back.cx - pose.cx) < 1e-9 and abs(back.cy - pose.cy) < 1e-9
