"""Crops that reach past an image's edge: only image pixels score (issue: no false alarms at crop borders)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from defectscan.pipeline.geometry import Pose, crop_at_pose, inside_at_pose
from defectscan.pipeline.images import encode_png
from defectscan.pipeline.inspection import inspect_image
from defectscan.pipeline.model import AnomalyModel, ModelConfig
from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range
from defectscan.pipeline.synth import Sheet, generate_sheet, reference_template

SEARCH = SegmentOptions(angles=parse_range("-5:5:1"), scales=parse_range("0.95:1.05:0.05"))


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(reference_template(), SEARCH)


@pytest.fixture(scope="module")
def model(segmenter: Segmenter) -> AnomalyModel:
    """Trained on the aligned crops of clean sheets, as `defectscan train` gets them from `segment`."""
    crops = [(i, c) for i in range(6) for c in segmenter.whole_crops(generate_sheet(3, i, 0.0).image)]
    config = ModelConfig(image_size=128, coreset_ratio=0.1, tta_views=("identity",))
    return AnomalyModel.fit([c for _, c in crops], config, groups=[f"sheet{i}" for i, _ in crops])


def _edge_cut(sheet: Sheet, past: int = 5) -> np.ndarray:
    """The sheet cut so every instance (2 x 4, rotated and shifted) reaches ``past`` px beyond an edge."""
    x, y, _, _ = sheet.instances[0].box
    bx, by, bw, bh = sheet.instances[-1].box
    return np.ascontiguousarray(
        sheet.image[int(y) + past : int(by + bh) - past, int(x) + past : int(bx + bw) - past]
    )


def test_inside_marks_the_pixels_that_come_from_the_image() -> None:
    image = np.full((60, 80, 3), 200, np.uint8)
    pose = Pose(cx=3.0, cy=55.0, angle=20.0, scale=1.0)
    crop = crop_at_pose(image, pose, 21, 15)
    inside = inside_at_pose(image.shape, pose, 21, 15)
    assert 0 < inside.sum() < inside.size
    assert (crop[inside] == 200).all()  # every pixel marked inside is an image pixel ...
    assert (crop[~inside] < 200).all()  # ... and every other one holds (some of) the black fill


def test_a_crop_is_judged_on_its_image_pixels_only(model: AnomalyModel, segmenter: Segmenter) -> None:
    ok = segmenter.whole_crops(generate_sheet(3, 9, 0.0).image)[0]
    inside = np.ones(ok.shape[:2], bool)
    inside[:, :40] = False  # the left 40 columns lie outside the source image
    fill = ok.copy()
    fill[:, :40] = 0
    blob = ok.copy()
    cv2.circle(blob, (80, 150), 14, (255, 0, 255), -1)  # a defect in the image part, by the border
    scores = model.score([fill, fill, blob], inside=[inside, None, inside])
    threshold = model.calibration.threshold
    assert scores[0].score <= threshold  # the fill neither scores ...
    assert scores[0].anomaly_map[:, :40].max() == 0.0
    assert scores[1].score > threshold  # ... as it does when nobody says it is fill
    assert scores[2].score > threshold  # a defect in the image pixels still does
    assert scores[2].anomaly_map[150, 80] > threshold


def test_rotated_instances_cut_by_the_sheet_edges_produce_no_region(
    model: AnomalyModel, segmenter: Segmenter
) -> None:
    """Good instances reaching past the photograph's edge get no region (nor a rejection) that the same
    instances do not get in the whole photograph."""
    for index in (6, 7, 8):
        sheet = generate_sheet(3, index, 0.0)
        image = _edge_cut(sheet)
        cut = inspect_image(encode_png(image), f"edge{index}.png", model, segmenter).verdict
        whole = inspect_image(encode_png(sheet.image), f"whole{index}.png", model, segmenter).verdict
        partial = segmenter.inside(image, segmenter.find(image))
        assert sum(m is not None for m in partial) >= 6  # most instances do reach past an edge
        assert sum(i.is_anomalous for i in whole.instances) <= 1  # the model itself rejects few good ones
        x0, y0 = int(sheet.instances[0].box[0]) + 5, int(sheet.instances[0].box[1]) + 5
        for inst in cut.instances:
            same = min(
                whole.instances,
                key=lambda w: abs(w.box[0] - inst.box[0] - x0) + abs(w.box[1] - inst.box[1] - y0),
            )
            assert not inst.defects or same.defects, (index, inst.index, inst.score, same.score, inst.defects)
            assert inst.is_anomalous <= same.is_anomalous


def test_training_crops_leave_out_instances_cut_by_the_edge(segmenter: Segmenter) -> None:
    image = _edge_cut(generate_sheet(3, 6, 0.0))
    found = segmenter.find(image)
    whole = segmenter.whole_crops(image)
    assert len(whole) == sum(m is None for m in segmenter.inside(image, found)) < len(found)
