"""Writing one inspected image's files, and the batch summary: shared by the local ``inspect`` and the
Celery workers, so their outputs are the same files with the same bytes.

An input with relative key ``K`` is stored under its item key ``I`` (``K`` itself unless its name cannot
carry the suffixes of its pictures, :mod:`worker.item_keys`); :func:`pipeline.outputs.finish` makes
the complete verdict and every file, and this module only puts them, each object whole, the verdict
last. A write the store refuses makes the input's verdict an ``error`` under its hashed key; the run
goes on.

A verdict's content depends only on the image and the model version, except ``timings_ms``, which
records how long this run took.
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from defectscan.pipeline.errors import (
    DefectscanError,
    KeyTooLongError,
    NotFoundError,
    WriteFailedError,
    error_code,
)
from defectscan.pipeline.outputs import Inspection, OutputOptions, finish
from defectscan.pipeline.verdict import Text, Verdict, error_verdict
from defectscan.worker.batch_spec import BATCH_JSON
from defectscan.worker.item_keys import hashed_key, item_key
from defectscan.worker.storage import Storage, StorageUnavailableError

SUMMARY_SCHEMA = "defectscan.summary/1"
SUMMARY = "summary.json"


def require_run(store: Storage) -> None:
    """Raise :class:`NotFoundError` when nothing is stored at ``store``: no batch (its ``batch.json`` is
    written first), no run's summary, no object at all (a run whose summary was never written still
    has its verdicts)."""
    if store.exists(BATCH_JSON) or store.exists(SUMMARY) or next(iter(store.objects()), None):
        return
    raise NotFoundError(
        store.location, "no run here (a batch folder, a batch id with --out, or an inspect output)"
    )


def write_inspection(out: Storage, key: str, result: Inspection, options: OutputOptions) -> Verdict:
    """Write an input's pictures, then its verdict, under its item key; return the verdict as written.

    Every payload (PNGs, the verdict's JSON) is made before the first write, so a payload that cannot be
    made writes nothing. If the store refuses a write (a name too long for it, a full disk, a refused
    key), the input gets an ``error`` verdict (``key_too_long``, ``write_failed``, ``bad_key``) written
    under its hashed key instead, and that is returned; only an unavailable store
    (:class:`StorageUnavailableError`, worth retrying) and a failure of that last write are raised."""
    item = item_key(key)
    finished = finish(key, item, result, options)
    verdict = finished.verdict
    try:
        for name, data, content_type in finished.files:
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
