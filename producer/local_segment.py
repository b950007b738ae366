"""Run segmentation over local image files and write one JSON per image plus its crops.

For ``DIR/<stem>.json`` the crops ``DIR/<stem>_<k>.png`` are written first and the JSON last, each as a
whole file, so a JSON that exists always describes crops that exist. A file that fails (unreadable,
empty, corrupt, not an image, too large, smaller than the template) gets a JSON with an ``error``
naming it, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from defectscan.pipeline.errors import DefectscanError, InvalidArgumentError
from defectscan.pipeline.images import DEFAULT_MAX_PIXELS, decode_image, encode_png
from defectscan.worker.storage import LocalStorage, read_local

if TYPE_CHECKING:  # OpenCV: only where a search runs
    from defectscan.pipeline.segment import Detection, Segmenter

SCHEMA = "defectscan.segments/1"


class ErrorRecord(BaseModel):
    code: str
    message: str


class DetectionRecord(BaseModel):
    index: int
    box: tuple[float, float, float, float]
    centre: tuple[float, float]
    angle: float
    scale: float
    score: float
    crop: str | None  # None: a partial crop, not written
    partial: bool = False  # the crop reaches past the image's edge (black fill there): unfit for training


class TemplateRecord(BaseModel):
    path: str
    width: int
    height: int


class SegmentationRecord(BaseModel):
    """The JSON written for one input image."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: str = Field(SCHEMA, alias="schema")
    image: str
    width: int | None = None
    height: int | None = None
    template: TemplateRecord
    detections: list[DetectionRecord] = []
    error: ErrorRecord | None = None

    def to_json(self) -> bytes:
        return (self.model_dump_json(by_alias=True, indent=2) + "\n").encode()


@dataclass
class RunSummary:
    images: int = 0
    detections: int = 0
    failures: list[ErrorRecord] = field(default_factory=list)


def output_stems(paths: Sequence[Path]) -> list[str]:
    """The output stem of each input; two inputs with the same stem would overwrite each other."""
    stems = [p.stem for p in paths]
    seen: dict[str, Path] = {}
    for path, stem in zip(paths, stems, strict=True):
        if stem in seen:
            raise InvalidArgumentError(
                str(path), f"has the same stem {stem!r} as {seen[stem]}; outputs would collide"
            )
        seen[stem] = path
    return stems


def segment_files(
    paths: Sequence[Path],
    segmenter: Segmenter,
    template_path: str,
    out: LocalStorage,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_image: Callable[[Path, SegmentationRecord], None] | None = None,
    keep_partial: bool = False,
) -> RunSummary:
    """Segment every file in ``paths``; see the module docstring for what is written."""
    summary = RunSummary()
    template = TemplateRecord(path=template_path, width=segmenter.width, height=segmenter.height)
    for path, stem in zip(paths, output_stems(paths), strict=True):
        record = SegmentationRecord(image=str(path), template=template)
        try:
            rgb = decode_image(read_local(path), str(path), max_pixels)
            record.height, record.width = rgb.shape[:2]
            detections = segmenter.find(rgb, str(path))
            partial = [m is not None for m in segmenter.inside(rgb, detections)]
            names: list[str | None] = []
            for k, crop in enumerate(segmenter.crops(rgb, detections)):
                names.append(f"{stem}_{k}.png" if keep_partial or not partial[k] else None)
                if names[k] is not None:
                    out.put(f"{stem}_{k}.png", encode_png(crop))
            record.detections = [
                _detection_record(k, d, names[k], partial[k]) for k, d in enumerate(detections)
            ]
        except DefectscanError as exc:
            record.error = ErrorRecord(**exc.as_dict())
            summary.failures.append(record.error)
        out.put(f"{stem}.json", record.to_json())
        summary.images += 1
        summary.detections += len(record.detections)
        if on_image is not None:
            on_image(path, record)
    return summary


def _detection_record(index: int, det: Detection, crop: str | None, partial: bool) -> DetectionRecord:
    return DetectionRecord(
        index=index,
        box=(round(det.box[0], 2), round(det.box[1], 2), round(det.box[2], 2), round(det.box[3], 2)),
        centre=(round(det.pose.cx, 3), round(det.pose.cy, 3)),
        angle=round(det.pose.angle, 4),
        scale=round(det.pose.scale, 5),
        score=round(det.score, 5),
        crop=crop,
        partial=partial,
    )


def crop_sources(folder: Path) -> dict[str, str]:
    """For a folder ``segment`` wrote: each crop's path relative to ``folder`` -> the image it was cut
    from (crops of one photograph calibrate together: :func:`pipeline.model.fold_sets`). Files that are
    not segmentation records are ignored."""
    sources: dict[str, str] = {}
    for path in sorted(folder.rglob("*.json")):
        try:
            record = SegmentationRecord.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            continue
        if record.schema_ != SCHEMA:
            continue
        base = path.parent.relative_to(folder)
        for det in record.detections:
            if det.crop is not None:
                sources[(base / det.crop).as_posix()] = record.image
    return sources
