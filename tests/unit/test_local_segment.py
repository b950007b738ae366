"""What `segment` wrote, read back: which photograph each crop came from."""

from __future__ import annotations

from pathlib import Path

from defectscan.producer.local_segment import (
    DetectionRecord,
    SegmentationRecord,
    TemplateRecord,
    crop_sources,
)


def _record(image: str, crops: list[str | None]) -> bytes:
    detections = [
        DetectionRecord(
            index=k, box=(0, 0, 1, 1), centre=(0, 0), angle=0, scale=1, score=0.9, crop=c, partial=c is None
        )
        for k, c in enumerate(crops)
    ]
    template = TemplateRecord(path="t.png", width=1, height=1)
    return SegmentationRecord(image=image, template=template, detections=detections).to_json()


def test_crop_sources_name_each_crops_photograph(tmp_path: Path) -> None:
    (tmp_path / "line1").mkdir()
    (tmp_path / "a.json").write_bytes(_record("/photos/a.png", ["a_0.png", "a_1.png", None]))
    (tmp_path / "line1" / "b.json").write_bytes(_record("/photos/b.png", ["b_0.png"]))
    (tmp_path / "notes.json").write_text('{"something": "else"}')
    assert crop_sources(tmp_path) == {
        "a_0.png": "/photos/a.png",
        "a_1.png": "/photos/a.png",
        "line1/b_0.png": "/photos/b.png",
    }
