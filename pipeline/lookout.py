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
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from defectscan.pipeline.defect_mask import BACKGROUND_COLOUR, TYPE_COLOURS, hex_colour, type_areas


class ImageSource(BaseModel):
    Type: Literal["direct"] = "direct"


class PixelArea(BaseModel):
    TotalPercentageArea: float
    Color: str


class AnomalyType(BaseModel):
    Name: str
    PixelAnomaly: PixelArea


class DetectAnomalyResult(BaseModel):
    Source: ImageSource = ImageSource()
    IsAnomalous: bool
    Confidence: float
    Anomalies: list[AnomalyType]
    AnomalyMask: str


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
    background = 100.0 - sum(areas.values())
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
