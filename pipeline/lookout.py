"""The fields an Amazon Lookout for Vision user's code reads, for ``--lookout-compat``.

Lookout's ``DetectAnomalies`` answered ``{"DetectAnomalyResult": {...}}`` with ``Source``,
``IsAnomalous``, ``Confidence`` and, for segmentation models, ``Anomalies`` and ``AnomalyMask``. With
``--lookout-compat`` every verdict carries that object under the same key, so code written against
Lookout's response (boto3 returns the same names) reads our verdicts unchanged:

* ``IsAnomalous``: the verdict is ``defect``.
* ``Confidence``: the confidence *in that answer*, as Lookout defined it: the highest instance
  confidence (our calibrated probability of an anomaly) when anomalous, one minus it when not.
* ``Anomalies``: ``background`` first (as Lookout always put it), then one entry per defect type present,
  with ``PixelAnomaly.TotalPercentageArea`` (% of the image) and ``PixelAnomaly.Color`` (its colour on
  the mask). Lookout's names allow only letters and digits, so ``blurry_text`` is ``blurrytext`` and
  ``color_scratch`` is ``colorscratch``.
* ``AnomalyMask``: the type-coloured mask PNG, base64-encoded (as the AWS CLI prints blobs); the same
  picture is written beside the verdict as ``<image>.mask.png``.

A ``--lookout-compat`` run also writes, per image, ``<image>.lookout.json``: the body of Lookout's
``DetectAnomalies`` response, ``{"DetectAnomalyResult": {...}}`` (:func:`detect_anomalies_response`),
for code that stored or parsed those responses.

**Checked against the public API reference** (Amazon Lookout for Vision API Reference, data types
``DetectAnomalyResult``, ``Anomaly``, ``PixelAnomaly`` and ``ImageSource``, and the ``DetectAnomalies``
action; the developer guide's "Detecting anomalies in an image"): field names and types as there;
``Source.Type`` is ``direct``; ``Anomaly.Name`` 1-256 characters of ``[a-zA-Z0-9]``;
``PixelAnomaly.Color`` exactly 7 characters, ``#`` and six hex digits; ``AnomalyMask`` base64 of 1 to
5,242,880 bytes; ``Confidence`` a float, here in [0, 1]; ``TotalPercentageArea`` a float, here a
percentage in [0, 100]. The models below enforce these, so an answer outside them fails to build rather
than reaching a consumer.
"""

from __future__ import annotations

import base64
import json
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, Field, field_validator

from defectscan.pipeline.defect_mask import BACKGROUND_COLOUR, TYPE_COLOURS, hex_colour, type_areas


class ImageSource(BaseModel):
    Type: Literal["direct"] = "direct"


class PixelArea(BaseModel):
    TotalPercentageArea: float = Field(ge=0.0, le=100.0)
    Color: str = Field(min_length=7, max_length=7, pattern=r"^#[a-zA-Z0-9]{6}$")


class AnomalyType(BaseModel):
    Name: str = Field(min_length=1, max_length=256, pattern=r"^[a-zA-Z0-9]*$")
    PixelAnomaly: PixelArea


class DetectAnomalyResult(BaseModel):
    Source: ImageSource = ImageSource()
    IsAnomalous: bool
    Confidence: float = Field(ge=0.0, le=1.0)
    Anomalies: list[AnomalyType]
    AnomalyMask: str = Field(description="base64 of the mask PNG")

    @field_validator("AnomalyMask")
    @classmethod
    def _mask_size(cls, value: str) -> str:
        size = len(base64.b64decode(value, validate=True))
        if not 1 <= size <= MAX_MASK_BYTES:
            raise ValueError(f"the mask is {size} bytes; Lookout's limit is 1 to {MAX_MASK_BYTES}")
        return value


MAX_MASK_BYTES = 5_242_880


def detect_anomalies_response(result: DetectAnomalyResult) -> bytes:
    """The body of a ``DetectAnomalies`` response for one image."""
    return (json.dumps({"DetectAnomalyResult": result.model_dump()}, indent=2) + "\n").encode()


def lookout_name(defect_type: str) -> str:
    """A defect type as a Lookout anomaly name (letters and digits only).

    Example:
        >>> lookout_name("blurry_text")
        'blurrytext'
    """
    return defect_type.replace("_", "")


def detect_anomaly_result(
    anomalous: bool, probability: float, labels: NDArray[np.uint8], mask_png: bytes
) -> DetectAnomalyResult:
    """Lookout's result object for an inspected image: ``probability`` of an anomaly, the type mask."""
    areas = type_areas(labels)
    background = max(100.0 - sum(areas.values()), 0.0)
    anomalies = [
        AnomalyType(
            Name="background",
            PixelAnomaly=PixelArea(
                TotalPercentageArea=round(background, 4), Color=hex_colour(BACKGROUND_COLOUR)
            ),
        )
    ]
    anomalies += [
        AnomalyType(
            Name=lookout_name(kind),
            PixelAnomaly=PixelArea(TotalPercentageArea=round(area, 4), Color=hex_colour(TYPE_COLOURS[kind])),
        )
        for kind, area in areas.items()
    ]
    return DetectAnomalyResult(
        IsAnomalous=anomalous,
        Confidence=round(probability if anomalous else 1.0 - probability, 6),
        Anomalies=anomalies,
        AnomalyMask=base64.b64encode(mask_png).decode("ascii"),
    )
