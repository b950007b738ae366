"""The local ``defectscan inspect``: every image under a folder (or every pair of a pairs CSV), inspected
with :mod:`pipeline.inspection`, verdicts and pictures written beside each other under ``OUT``.

``OUT/<input-relative-path>.json`` is the verdict; ``.heatmap.png`` the overlay, and
``.<k>.heatmap.png`` each segmented instance's crop with its own map; ``.mask.png`` the defects coloured by
type (:mod:`pipeline.defect_mask`); with ``save_maps``, ``.map.npy`` the image-level anomaly map
(float32, the same values as the scores). With ``lookout_compat`` the verdict also carries Amazon Lookout
for Vision's ``DetectAnomalyResult`` (:mod:`pipeline.lookout`). Pictures are written
before the verdict, and ``summary.json`` last, each file whole, so a verdict that exists describes
pictures that exist. An image that fails gets an ``error`` verdict and the run goes on.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.defect_mask import colour_mask
from pipeline.errors import DefectscanError
from pipeline.images import encode_png
from pipeline.inspection import Inspection
from pipeline.lookout import detect_anomaly_result
from pipeline.verdict import ErrorInfo, ImageInfo, ModelInfo, Verdict
from worker.storage import LocalStorage, read_local

SUMMARY_SCHEMA = "defectscan.summary/1"


class OutputOptions(BaseModel):
    """What is written for each image beyond its verdict, heatmaps and mask."""

    save_maps: bool = False
    lookout_compat: bool = False


class Failure(BaseModel):
    key: str
    code: str
    message: str


class Summary(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    schema_: str = Field(default=SUMMARY_SCHEMA, alias="schema")
    images: int = 0
    verdicts: dict[str, int] = {}
    instances: int = 0
    anomalous_instances: int = 0
    defects: int = 0
    types: dict[str, int] = {}
    levels: dict[str, int] = {}
    failures: list[Failure] = []
    timings_ms: dict[str, float] = {}

    def to_json(self) -> bytes:
        return (self.model_dump_json(by_alias=True, indent=2) + "\n").encode()


def write_inspection(out: LocalStorage, key: str, result: Inspection, options: OutputOptions) -> None:
    """The pictures, then the verdict, at keys derived from the input's relative path."""
    outputs = {}
    verdict = result.verdict
    if result.heatmap is not None:
        out.put(f"{key}.heatmap.png", encode_png(result.heatmap))
        outputs["heatmap"] = f"{key}.heatmap.png"
    if result.type_mask is not None:
        mask_png = encode_png(colour_mask(result.type_mask))
        out.put(f"{key}.mask.png", mask_png)
        outputs["mask"] = f"{key}.mask.png"
        if options.lookout_compat:
            probability = max((i.confidence for i in verdict.instances), default=0.0)
            anomalous = verdict.verdict == "defect"
            verdict.lookout = detect_anomaly_result(anomalous, probability, result.type_mask, mask_png)
    if options.save_maps and result.anomaly_map is not None:
        buffer = io.BytesIO()
        np.save(buffer, result.anomaly_map.astype(np.float32), allow_pickle=False)
        out.put(f"{key}.map.npy", buffer.getvalue())
        outputs["map"] = f"{key}.map.npy"
    for instance, picture in zip(verdict.instances, result.crop_heatmaps, strict=False):
        instance.heatmap = f"{key}.{instance.index}.heatmap.png"
        out.put(instance.heatmap, encode_png(picture))
    verdict.outputs = outputs
    out.put(f"{key}.json", verdict.to_json())


def run_inspection(
    items: Sequence[tuple[str, Path]],
    inspect: Callable[[bytes, str], Inspection],
    model: ModelInfo,
    out: LocalStorage,
    options: OutputOptions | None = None,
    on_image: Callable[[str, Verdict], None] | None = None,
) -> Summary:
    """Inspect ``(key, path)`` items; write each result, then the summary."""
    summary = Summary()
    counts: Counter[str] = Counter()
    types: Counter[str] = Counter()
    levels: Counter[str] = Counter()
    timings: Counter[str] = Counter()
    for key, path in items:
        try:
            data = read_local(path)
        except DefectscanError as exc:
            result = Inspection(
                Verdict(
                    image=ImageInfo(key=key), model=model, verdict="error", error=ErrorInfo(**exc.as_dict())
                )
            )
        else:
            result = inspect(data, key)
        write_inspection(out, key, result, options or OutputOptions())
        verdict = result.verdict
        counts[verdict.verdict] += 1
        timings.update(verdict.timings_ms)
        summary.images += 1
        summary.instances += len(verdict.instances)
        summary.anomalous_instances += sum(i.is_anomalous for i in verdict.instances)
        for instance in verdict.instances:
            summary.defects += len(instance.defects)
            types.update(d.type for d in instance.defects)
            levels[instance.level] += 1
        if verdict.error is not None:
            summary.failures.append(Failure(key=key, **verdict.error.model_dump()))
        if on_image is not None:
            on_image(key, verdict)
    summary.verdicts = dict(counts)
    summary.types, summary.levels = dict(types), dict(levels)
    summary.timings_ms = {k: round(v, 2) for k, v in timings.items()}
    out.put("summary.json", summary.to_json())
    return summary
