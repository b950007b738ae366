"""One inspected image, finished: its verdict complete (the names of its pictures, the Lookout fields)
and every file's bytes, in write order. Nothing here writes: :func:`worker.results.write_inspection`
puts the files, so the local ``inspect`` and the workers write the same files with the same bytes.

For an item key ``I`` (the input's key, unless its name cannot carry these suffixes): ``I.heatmap.png``
the overlay, ``I.<k>.heatmap.png`` each segmented instance's crop with its own map, ``I.mask.png`` the
defects coloured by type (:mod:`pipeline.defect_mask`), with ``save_maps`` ``I.map.npy`` (the
image-level anomaly map, float32, the same values as the scores), and ``I.json`` the verdict, last, so
a verdict that exists describes pictures that exist. With ``lookout_compat`` the verdict also carries
Amazon Lookout for Vision's ``DetectAnomalyResult`` (:mod:`pipeline.lookout`), and ``I.lookout.json``
holds the body of Lookout's ``DetectAnomalies`` response for the image, ``{"DetectAnomalyResult": ...}``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from defectscan.pipeline.defect_mask import colour_mask
from defectscan.pipeline.images import encode_png
from defectscan.pipeline.lookout import detect_anomalies_response, detect_anomaly_result
from defectscan.pipeline.verdict import Verdict


@dataclass
class Inspection:
    """What inspecting one image gives (:mod:`pipeline.inspection`): its verdict, and the maps and
    pictures its files are made from (None where they are not wanted)."""

    verdict: Verdict
    anomaly_map: NDArray[np.float32] | None = field(default=None, repr=False)
    heatmap: NDArray[np.uint8] | None = field(default=None, repr=False)
    crop_heatmaps: list[NDArray[np.uint8] | None] = field(default_factory=list, repr=False)
    type_mask: NDArray[np.uint8] | None = field(default=None, repr=False)


Pictures = Literal["all", "defects", "none"]
PICTURE_LEVEL = 1  # zlib level of the pictures: written for every image, read by people


class OutputOptions(BaseModel):
    """What is written for each image beside its verdict. ``pictures``: the heatmaps and type mask of
    every image and instance (``all``), of anomalous ones only (``defects``, the default: the verdicts
    are the same, and an ok part's picture is rarely looked at), or none."""

    save_maps: bool = False
    lookout_compat: bool = False
    pictures: Pictures = "defects"


@dataclass
class Finished:
    verdict: Verdict
    files: list[tuple[str, bytes, str]] = field(default_factory=list)  # (key, bytes, content type)


LOOKOUT_SUFFIX = ".lookout.json"


def is_verdict_key(key: str) -> bool:
    """Whether a stored key is an image's verdict (``I.json``), not another JSON file beside it."""
    return key.endswith(".json") and not key.endswith(LOOKOUT_SUFFIX)


def wanted(pictures: Pictures, anomalous: bool) -> bool:
    """Whether an image's or an instance's picture is made under ``pictures``."""
    return pictures == "all" or (pictures == "defects" and anomalous)


def finish(key: str, item: str, result: Inspection, options: OutputOptions) -> Finished:
    """The complete verdict of input ``key`` stored under ``item``, and its files (the inspection's own
    verdict is left as it was)."""
    verdict = result.verdict.model_copy(deep=True)
    if item != key:
        verdict.image.stored_as = item
    files = []
    outputs = {}
    pictures = wanted(options.pictures, verdict.verdict == "defect")
    if result.heatmap is not None and pictures:
        outputs["heatmap"] = f"{item}.heatmap.png"
        files.append((outputs["heatmap"], encode_png(result.heatmap, PICTURE_LEVEL), "image/png"))
    if result.type_mask is not None and (pictures or options.lookout_compat):
        mask_png = encode_png(colour_mask(result.type_mask), PICTURE_LEVEL)
        if pictures:
            outputs["mask"] = f"{item}.mask.png"
            files.append((outputs["mask"], mask_png, "image/png"))
        if options.lookout_compat:
            probability = max((i.confidence for i in verdict.instances), default=0.0)
            anomalous = verdict.verdict == "defect"
            verdict.lookout = detect_anomaly_result(anomalous, probability, result.type_mask, mask_png)
            outputs["lookout"] = f"{item}{LOOKOUT_SUFFIX}"
            files.append((outputs["lookout"], detect_anomalies_response(verdict.lookout), "application/json"))
    if options.save_maps and result.anomaly_map is not None:
        buffer = io.BytesIO()
        np.save(buffer, result.anomaly_map.astype(np.float32), allow_pickle=False)
        outputs["map"] = f"{item}.map.npy"
        files.append((outputs["map"], buffer.getvalue(), "application/octet-stream"))
    for instance, picture in zip(verdict.instances, result.crop_heatmaps, strict=False):
        if picture is not None and wanted(options.pictures, instance.is_anomalous):
            instance.heatmap = f"{item}.{instance.index}.heatmap.png"
            files.append((instance.heatmap, encode_png(picture, PICTURE_LEVEL), "image/png"))
    verdict.outputs = outputs
    files.append((f"{item}.json", verdict.to_json(), "application/json"))
    return Finished(verdict, files)
