"""Lookout for Vision: its manifests read and checked, and its answer's constraints enforced."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from pydantic import ValidationError

from defectscan.pipeline.images import encode_png
from defectscan.pipeline.lookout import DetectAnomalyResult, detect_anomaly_result
from defectscan.pipeline.lookout_manifest import class_masks, defect_type, parse_manifest, resolve

LINE = {
    "source-ref": "s3://bucket/images/a.jpg",
    "anomaly-label": 1,
    "anomaly-label-metadata": {"class-name": "anomaly", "type": "groundtruth/image-classification"},
    "anomaly-mask-ref": "masks/a.png",
    "anomaly-mask-ref-metadata": {
        "internal-color-map": {
            "0": {"class-name": "BACKGROUND", "hex-color": "#ffffff", "confidence": 0.0},
            "1": {"class-name": "scratch", "hex-color": "#2CA02C", "confidence": 0.0},
            "2": {"class-name": "dent", "hex-color": "#1f77b4", "confidence": 0.0},
        },
        "type": "groundtruth/semantic-segmentation",
    },
}


def test_a_manifest_keeps_good_lines_and_names_bad_ones_by_number() -> None:
    lines = [
        json.dumps(LINE),
        "",
        "{not json",
        json.dumps({"source-ref": "good.png", "anomaly-label": 0}),
        json.dumps({"anomaly-label": 0}),
        json.dumps({**LINE, "anomaly-label": 2}),
        json.dumps([1, 2]),
        json.dumps(
            {
                **LINE,
                "anomaly-mask-ref-metadata": {
                    "internal-color-map": {"1": {"class-name": "x", "hex-color": "red"}}
                },
            }
        ),
    ]
    entries, problems = parse_manifest("\n".join(lines))
    assert [e.line for e in entries] == [1, 4] and entries[0].anomalous and not entries[1].anomalous
    assert entries[0].classes() == {"#2ca02c": "scratch", "#1f77b4": "dent"}  # background left out
    assert {p.line: p.reason.split(" ")[0] for p in problems} == {
        3: "not",
        5: "source-ref:",
        6: "anomaly-label:",
        7: "not",
        8: "anomaly-mask-ref-metadata.internal-color-map.1.hex-color:",
    }


def test_references_resolve_beside_the_manifest_and_stay_in_its_bucket() -> None:
    assert resolve("s3://other/x.png", "s3://b/p/train.manifest") == "s3://other/x.png"
    assert resolve("img/x.png", "s3://b/p/train.manifest") == "s3://b/p/img/x.png"
    assert resolve("../q/x.png", "s3://b/p/train.manifest") == "s3://b/q/x.png"
    assert resolve("img/x.png", "/data/lfv/train.manifest") == "/data/lfv/img/x.png"
    with pytest.raises(ValueError, match="climbs"):
        resolve("../../x.png", "s3://b/p/train.manifest")


def test_a_colour_mask_splits_into_its_classes_and_types() -> None:
    mask = np.full((4, 6, 3), 255, np.uint8)
    mask[0, :2] = (0x2C, 0xA0, 0x2C)
    mask[3, 5] = (0x1F, 0x77, 0xB4)
    found = class_masks(mask, {"#2ca02c": "scratch", "#1f77b4": "dent", "#ff0000": "burn"})
    assert {k: int(v.sum()) for k, v in found.items()} == {"scratch": 2, "dent": 1}  # burn: no pixel
    assert [defect_type(n) for n in ("Scratch", "dent", "blurry-text", "bubble")] == [
        "color_scratch",
        "structural",
        "blurry_text",
        "other",
    ]


def test_the_answer_keeps_to_lookouts_published_constraints() -> None:
    labels = np.zeros((8, 8), np.uint8)
    labels[:2] = 2  # structural
    png = encode_png(np.zeros((8, 8, 3), np.uint8))
    result = detect_anomaly_result(True, 0.93, labels, png)
    assert result.Confidence == 0.93 and result.Anomalies[0].Name == "background"
    assert sum(a.PixelAnomaly.TotalPercentageArea for a in result.Anomalies) == pytest.approx(100.0)
    raw = result.model_dump()
    for field, bad in (
        (("Anomalies", 1, "Name"), "blurry_text"),  # only letters and digits
        (("Anomalies", 1, "PixelAnomaly", "Color"), "#12345"),  # exactly '#' and 6 digits
        (("Confidence",), 1.5),
        (("AnomalyMask",), ""),
        (("Source", "Type"), "s3"),
    ):
        broken = json.loads(json.dumps(raw))
        target = broken
        for step in field[:-1]:
            target = target[step]
        target[field[-1]] = bad
        with pytest.raises(ValidationError):
            DetectAnomalyResult.model_validate(broken)
    too_big = base64.b64encode(b"x" * (5_242_880 + 1)).decode()
    with pytest.raises(ValidationError, match="limit"):
        DetectAnomalyResult.model_validate({**raw, "AnomalyMask": too_big})
