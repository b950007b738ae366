"""What is written for one inspected image, and the batch summary: shared by the local ``inspect`` and
the Celery workers, so their outputs are the same files with the same bytes.

Under an items root, for an input with relative key ``K`` and item key ``I`` (``K`` itself unless its
name cannot carry the suffixes below, :mod:`worker.item_keys`): ``I.json`` is the verdict;
``I.heatmap.png`` the overlay, ``I.<k>.heatmap.png`` each segmented instance's crop with its own map;
``I.mask.png`` the defects coloured by type (:mod:`pipeline.defect_mask`); with ``save_maps``,
``I.map.npy`` the image-level anomaly map (float32, the same values as the scores). A write the store
refuses makes the input's verdict an ``error`` under its hashed key; the run goes on. With
``lookout_compat`` the verdict also carries Amazon Lookout for Vision's ``DetectAnomalyResult``
(:mod:`pipeline.lookout`). Pictures are written
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
from pipeline.errors import DefectscanError, KeyTooLongError, WriteFailedError, error_code
from pipeline.images import encode_png
from pipeline.lookout import detect_anomaly_result
from pipeline.verdict import Text, Verdict, error_verdict
from worker.item_keys import hashed_key, item_key
from worker.storage import Storage, StorageUnavailableError

if TYPE_CHECKING:  # the inspection imports the models (torch); writing results does not need them
    from pipeline.inspection import Inspection

SUMMARY_SCHEMA = "defectscan.summary/1"


class OutputOptions(BaseModel):
    """What is written for each image beyond its verdict, heatmaps and mask."""

    save_maps: bool = False
    lookout_compat: bool = False


def write_inspection(out: Storage, key: str, result: Inspection, options: OutputOptions) -> Verdict:
    """Write an input's pictures, then its verdict, under its item key; return the verdict as written.

    Every payload (PNGs, the verdict's JSON) is made before the first write, so a payload that cannot be
    made writes nothing. If the store refuses a write (a name too long for it, a full disk, a refused
    key), the input gets an ``error`` verdict (``key_too_long``, ``write_failed``, ``bad_key``) written
    under its hashed key instead, and that is returned; only an unavailable store
    (:class:`StorageUnavailableError`, worth retrying) and a failure of that last write are raised."""
    item = item_key(key)
    verdict = result.verdict
    if item != key:
        verdict.image.stored_as = item
    try:
        for name, data, content_type in _payloads(item, result, options):
            out.put(name, data, content_type)
    except StorageUnavailableError:
        raise
    except Exception as exc:
        fallback = hashed_key(key)
        failed = error_verdict(verdict.image, verdict.model, _write_error(item, exc))
        failed.image.stored_as = fallback
        failed.timings_ms = verdict.timings_ms
        out.put(f"{fallback}.json", failed.to_json(), "application/json")
        return failed
    return verdict


def _write_error(item: str, exc: Exception) -> Exception:
    """A write failure as the error its verdict names."""
    if isinstance(exc, DefectscanError | MemoryError) or error_code(exc) == KeyTooLongError.code:
        return exc
    if isinstance(exc, OSError):
        return WriteFailedError(item, exc.strerror or str(exc))
    return exc


def _payloads(item: str, result: Inspection, options: OutputOptions) -> list[tuple[str, bytes, str]]:
    """``(key, bytes, content type)`` of every file of one input, in write order: pictures, verdict."""
    files = []
    outputs = {}
    verdict = result.verdict
    if result.heatmap is not None:
        outputs["heatmap"] = f"{item}.heatmap.png"
        files.append((outputs["heatmap"], encode_png(result.heatmap), "image/png"))
    if result.type_mask is not None:
        mask_png = encode_png(colour_mask(result.type_mask))
        outputs["mask"] = f"{item}.mask.png"
        files.append((outputs["mask"], mask_png, "image/png"))
        if options.lookout_compat:
            probability = max((i.confidence for i in verdict.instances), default=0.0)
            anomalous = verdict.verdict == "defect"
            verdict.lookout = detect_anomaly_result(anomalous, probability, result.type_mask, mask_png)
    if options.save_maps and result.anomaly_map is not None:
        buffer = io.BytesIO()
        np.save(buffer, result.anomaly_map.astype(np.float32), allow_pickle=False)
        outputs["map"] = f"{item}.map.npy"
        files.append((outputs["map"], buffer.getvalue(), "application/octet-stream"))
    for instance, picture in zip(verdict.instances, result.crop_heatmaps, strict=False):
        instance.heatmap = f"{item}.{instance.index}.heatmap.png"
        files.append((instance.heatmap, encode_png(picture), "image/png"))
    verdict.outputs = outputs
    files.append((f"{item}.json", verdict.to_json(), "application/json"))
    return files


class Failure(BaseModel):
    key: Text
    code: str
    message: Text


class Renamed(BaseModel):
    key: Text = Field(description="the input's key (escaped form)")
    stored_as: str = Field(description="where its verdict and pictures are (worker/item_keys.py)")


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
    renamed: list[Renamed] = []
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
        if verdict.image.stored_as is not None:
            self.renamed.append(Renamed(key=verdict.image.key, stored_as=verdict.image.stored_as))

    def to_json(self) -> bytes:
        return (self.model_dump_json(by_alias=True, indent=2) + "\n").encode()


def _bump(counts: dict[str, int], names: list[str]) -> dict[str, int]:
    merged = Counter(counts)
    merged.update(names)
    return dict(merged)
