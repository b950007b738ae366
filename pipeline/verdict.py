"""The JSON verdict written for every inspected image: schema ``defectscan.verdict/1``.

One verdict per input image, whichever path produced it (the local ``defectscan inspect`` or a worker).
``verdict`` is ``ok`` (every instance below its threshold), ``defect`` (at least one above) or ``error``
(the image could not be inspected; ``error`` names why, and ``instances`` is empty). The JSON Schema is
committed as ``docs/verdict.schema.json`` (``python -m pipeline.verdict`` prints it).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from defectscan.pipeline.errors import error_code, error_message
from defectscan.pipeline.lookout import DetectAnomalyResult
from defectscan.pipeline.names import printable

SCHEMA = "defectscan.verdict/1"

Text = Annotated[str, AfterValidator(printable)]
"""A string that is always JSON-writable: bytes that are not UTF-8 in the escaped form (``\\xNN``)."""


class ImageInfo(BaseModel):
    key: Text = Field(
        description="the image's path or storage key, relative to the inputs; bytes that are not UTF-8 "
        "are written \\xNN"
    )
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    stored_as: str | None = Field(
        None,
        description="the key its results are written under when its own name cannot carry them "
        "(worker/item_keys.py); absent when the results sit beside the input's own name",
    )
    exif_orientation: int | None = Field(
        None, description="the EXIF orientation (2-8) that was applied on decode; absent when upright"
    )


class ModelInfo(BaseModel):
    product: str | None = None
    version: str | None = None
    method: str


class Defect(BaseModel):
    """A connected region of the instance's anomaly map above the threshold (crop pixels), graded."""

    type: Literal["blurry_text", "structural", "color_scratch", "other"]
    level: Literal["minor", "major", "critical"]
    severity: float = Field(description="0-100; see pipeline/grade.py for the formula")
    box: tuple[int, int, int, int] = Field(description="x, y, w, h in the crop")
    area_px: int
    area_pct: float = Field(description="area in % of the crop")
    peak: float = Field(description="highest anomaly score in the region")
    mean: float = Field(description="mean anomaly score in the region")
    evidence: dict[str, float] = Field(
        {},
        description=(
            "sharpness_ratio, structure_iou, delta_e and delta_e_p95 (CIEDE2000 mean and 95th "
            "percentile), flipped, flipped_pct, foreign_colour, elongation"
        ),
    )


class Instance(BaseModel):
    index: int
    box: tuple[float, float, float, float] = Field(description="x, y, w, h in the image")
    angle: float = 0.0
    scale: float = 1.0
    match_score: float | None = Field(None, description="template match score; None for a whole image")
    score: float = Field(description="raw anomaly score: the maximum of the anomaly map, never clipped")
    threshold: float
    confidence: float = Field(description="sigmoid((score - threshold) / ok_std); 0.5 at the threshold")
    is_anomalous: bool
    severity: float = Field(0.0, description="the worst defect's severity, 0 without defects")
    level: Literal["none", "minor", "major", "critical"] = "none"
    defects: list[Defect] = []
    heatmap: str | None = Field(None, description="the crop's own heatmap, a key relative to the outputs")


class ErrorInfo(BaseModel):
    code: str
    message: Text


class Note(BaseModel):
    """Something about an input that a user should know, though it was inspected."""

    code: str = Field(description="mode_mismatch: a grayscale input to a colour model; converted_to_gray")
    message: Text


class Verdict(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    schema_: Literal["defectscan.verdict/1"] = Field(default="defectscan.verdict/1", alias="schema")
    image: ImageInfo
    model: ModelInfo
    verdict: Literal["ok", "defect", "error"]
    template: str | None = Field(None, description="the image's own template (golden-template mode)")
    instances: list[Instance] = []
    outputs: dict[str, str] = Field({}, description="pictures written for this image, relative keys")
    timings_ms: dict[str, float] = {}
    error: ErrorInfo | None = None
    notes: list[Note] = []
    lookout: DetectAnomalyResult | None = Field(
        None,
        alias="DetectAnomalyResult",
        description="with --lookout-compat: Amazon Lookout for Vision's result fields (pipeline/lookout.py)",
    )

    def to_json(self) -> bytes:
        skip = {"lookout"} if self.lookout is None else None
        return (self.model_dump_json(by_alias=True, indent=2, exclude=skip) + "\n").encode()


def error_verdict(image: ImageInfo | str, model: ModelInfo, exc: BaseException) -> Verdict:
    """The ``error`` verdict of an input, for any exception (its code from :func:`error_code`)."""
    info = ImageInfo(key=image) if isinstance(image, str) else image
    error = ErrorInfo(code=error_code(exc), message=error_message(exc))
    return Verdict(image=info, model=model, verdict="error", error=error)


def json_schema() -> str:
    return json.dumps(Verdict.model_json_schema(by_alias=True), indent=2) + "\n"


if __name__ == "__main__":
    print(json_schema(), end="")
