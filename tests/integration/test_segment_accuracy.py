"""Segmentation accuracy over fifty jittered sheets: the figures `bench/segment.py` reports."""

from __future__ import annotations

import numpy as np

from defectscan.pipeline.geometry import iou
from defectscan.pipeline.segment import Segmenter
from defectscan.pipeline.synth import generate_sheet
from tests.unit.test_segment import SEARCH, _match


def test_fifty_jittered_sheets_recall_precision_centre_and_angle(template: np.ndarray) -> None:
    """The issue's acceptance figures: recall and precision 1.0 at IoU >= 0.9, centre error <= 1.5 px,
    angle error <= 0.5 degrees, over 50 jittered sheets (400 instances, a quarter defective)."""
    segmenter = Segmenter(template, SEARCH)
    centre_err, angle_err, ious, found_total = [], [], [], 0
    for index in range(50):
        sheet = generate_sheet(seed=2026, index=index, defect_rate=0.25)
        found = segmenter.find(sheet.image, f"sheet {index}")
        found_total += len(found)
        matched = set()
        for inst, det in _match(sheet.instances, found):
            ious.append(iou(det.box, inst.box))
            matched.add(id(det))
            centre_err.append(np.hypot(det.pose.cx - inst.pose.cx, det.pose.cy - inst.pose.cy))
            angle_err.append(abs(det.pose.angle - inst.pose.angle))
        assert len(matched) == len(found) == 8, f"sheet {index}: {len(found)} found, {len(matched)} matched"
    assert found_total == 400
    assert min(ious) >= 0.9
    assert max(centre_err) <= 1.5
    assert max(angle_err) <= 0.5
