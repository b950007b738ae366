"""What is written for one inspected image, and the batch summary: shared by the local ``inspect`` and
the Celery workers, so their outputs are the same files with the same bytes.

Under an items root, for an input with relative key ``K``: ``K.json`` is the verdict; ``K.heatmap.png``
the overlay, ``K.<k>.heatmap.png`` each segmented instance's crop with its own map; ``K.mask.png`` the
defects coloured by type (:mod:`pipeline.defect_mask`); with ``save_maps``, ``K.map.npy`` the image-level
anomaly map (float32, the same values as the scores). With ``lookout_compat`` the verdict also carries
Amazon Lookout for Vision's ``DetectAnomalyResult`` (:mod:`pipeline.lookout`). Pictures are written
before the verdict, each object whole, so a verdict that exists describes pictures that exist.

A verdict's content depends only on the image and the model version, except ``timings_ms``, which
records how long this run took.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.defect_mask import colour_mask
from pipeline.images import encode_png
from pipeline.lookout import detect_anomaly_result
from pipeline.verdict import Verdict
from worker.storage import Storage

if TYPE_CHECKING:  # the inspection imports the models (torch); writing results does not need them
    from pipeline.inspection import Inspection

SUMMARY_SCHEMA = "defectscan.summary/1"


class OutputOptions(BaseModel):
    """What is written for each image beyond its verdict, heatmaps and mask."""

    save_maps: bool = False
    lookout_compat: bool = False


def write_inspection(out: Storage, key: str, result: Inspection, options: OutputOptions) -> None:
    """The pictures, then the verdict, at keys derived from the input's relative key."""
    outputs = {}
    verdict = result.verdict
    if result.heatmap is not None:
        out.put(f"{key}.heatmap.png", encode_png(result.heatmap), "image/png")
        outputs["heatmap"] = f"{key}.heatmap.png"
    if result.type_mask is not None:
        mask_png = encode_png(colour_mask(result.type_mask))
        out.put(f"{key}.mask.png", mask_png, "image/png")
        outputs["mask"] = f"{key}.mask.png"
        if options.lookout_compat:
            probability = max((i.confidence for i in verdict.instances), default=0.0)
            anomalous = verdict.verdict == "defect"
            verdict.lookout = detect_anomaly_result(anomalous, probability, result.type_mask, mask_png)
    if options.save_maps and result.anomaly_map is not None:
        buffer = io.BytesIO()
        np.save(buffer, result.anomaly_map.astype(np.float32), allow_pickle=False)
        out.put(f"{key}.map.npy", buffer.getvalue(), "application/octet-stream")
        outputs["map"] = f"{key}.map.npy"
    for instance, picture in zip(verdict.instances, result.crop_heatmaps, strict=False):
        instance.heatmap = f"{key}.{instance.index}.heatmap.png"
        out.put(instance.heatmap, encode_png(picture), "image/png")
    verdict.outputs = outputs
    out.put(f"{key}.json", verdict.to_json(), "application/json")


class Failure(BaseModel):
    key: str
    code: str
    message: str


class Summary(BaseModel):
    """Counts over a run's verdicts: by verdict, defect type and level, with every failure."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: str = Field(default=SUMMARY_SCHEMA, alias="schema")
    batch_id: str | None = None
    images: int = 0
    verdicts: dict[str, int] = {}
    instances: int = 0
    anomalous_instances: int = 0
    defects: int = 0
    types: dict[str, int] = {}
    levels: dict[str, int] = {}
    failures: list[Failure] = []
    timings_ms: dict[str, float] = {}

    def add(self, verdict: Verdict) -> None:
        """Count one verdict in."""
        self.images += 1
        self.verdicts = _bump(self.verdicts, [verdict.verdict])
        self.instances += len(verdict.instances)
        self.anomalous_instances += sum(i.is_anomalous for i in verdict.instances)
        for instance in verdict.instances:
            self.defects += len(instance.defects)
            self.types = _bump(self.types, [d.type for d in instance.defects])
            self.levels = _bump(self.levels, [instance.level])
        timings = Counter(self.timings_ms)
        timings.update(verdict.timings_ms)
        self.timings_ms = {k: round(v, 2) for k, v in timings.items()}
        if verdict.error is not None:
            self.failures.append(Failure(key=verdict.image.key, **verdict.error.model_dump()))

    def to_json(self) -> bytes:
        return (self.model_dump_json(by_alias=True, indent=2) + "\n").encode()


def _bump(counts: dict[str, int], names: list[str]) -> dict[str, int]:
    merged = Counter(counts)
    merged.update(names)
    return dict(merged)
