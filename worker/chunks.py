"""One chunk of a batch: inspect its images, write and record each one as it is done, and hand the batch
to finalize when it completes; and what happens to a chunk that cannot finish.

* **Skip what is done.** A chunk inspects only the images without a verdict on record, and writes
  nothing once its batch is finalizing or finalized: a duplicate, a late redelivery or a re-sent chunk
  never writes after ``_SUCCESS``.
* **Record as you go.** Each image is recorded as soon as its files are written, so a chunk that dies
  loses at most the image it was on.
* **Resume** (:func:`resume`): the chunk of a dead worker (its lease stopped beating) or one that ran
  past its soft time limit has its unrecorded images sent again: first as the same chunk, then one image
  per chunk, and an image whose single-image chunk dies again (a crash or a hang on that very input) gets
  an ``error`` verdict (``worker_lost`` or ``timeout``) instead of being tried forever.
* **Settle** (:func:`settle`): a chunk that fails after its retries gives each of its images without a
  verdict an ``error`` verdict (``chunk_failed``), so its batch always reaches ``summary.json`` and
  ``_SUCCESS``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from celery.exceptions import SoftTimeLimitExceeded

from defectscan.pipeline.errors import DefectscanError, error_message
from defectscan.pipeline.images import decode_image
from defectscan.pipeline.inspection import Inspection, Inspector
from defectscan.pipeline.segment import Segmenter
from defectscan.pipeline.verdict import ModelInfo, error_verdict
from defectscan.worker import metrics
from defectscan.worker.app import app, send_chunk
from defectscan.worker.batch_spec import BATCH_JSON, ITEMS, TEMPLATE_KEY, BatchSpec
from defectscan.worker.batches import BatchBook, Lease, server_time
from defectscan.worker.chunk_watch import is_dead
from defectscan.worker.item_keys import item_key
from defectscan.worker.model_cache import ModelCache
from defectscan.worker.results import write_inspection
from defectscan.worker.settings import settings
from defectscan.worker.storage import Storage, StorageUnavailableError, open_storage

log = logging.getLogger("defectscan.worker")
INTERRUPTS = (SoftTimeLimitExceeded,)  # a chunk's time limit ends the chunk, not just the image
MODELS = ModelCache()
SINGLE_ATTEMPTS = 2  # a lone image whose chunk died (or timed out) this many times is given up


class WorkerLostError(DefectscanError):
    """The worker inspecting the image died each time (a crash or kill on this very input)."""

    code = "worker_lost"


class ChunkTimeoutError(DefectscanError):
    """The image's chunk ran past its time limit each time."""

    code = "timeout"


class VerdictLostError(DefectscanError):
    """The image's verdict was recorded but is missing or unreadable in storage at finalize."""

    code = "verdict_lost"


class ChunkFailedError(DefectscanError):
    """The image's chunk failed after its retries (not the image itself)."""

    code = "chunk_failed"


@lru_cache(maxsize=8)
def batch_context(batch_location: str) -> tuple[BatchSpec, Segmenter | None]:
    """The batch's request and its segmenter (if it has a template), read once per process."""
    store = open_storage(batch_location)
    spec = BatchSpec.model_validate_json(store.get(BATCH_JSON))
    segmenter = None
    if spec.template:
        template = decode_image(store.get(TEMPLATE_KEY), f"{batch_location}/{TEMPLATE_KEY}")
        segmenter = Segmenter(template, spec.segment)
    return spec, segmenter


def unrecorded(book: BatchBook, keys: list[str]) -> list[str]:
    """The keys (in order) whose verdict is not on record yet."""
    done = book.recorded([item_key(k) for k in keys])
    return [k for k in keys if item_key(k) not in done]


def model_info(spec: BatchSpec) -> ModelInfo:
    return ModelInfo(product=spec.product, version=spec.model_version, method="unknown")


def inspect_keys(spec: BatchSpec, segmenter: Segmenter | None, keys: list[str]) -> Iterator[Inspection]:
    """Each key's inspection, in order, fetching ahead on threads while the current images compute;
    the crops of several images share forward passes (:class:`pipeline.inspection.Inspector`). A
    store that is unavailable ends the chunk (it is retried); any other failure to read an image is
    that image's error verdict."""
    info = model_info(spec)
    try:
        model = MODELS.get(spec.model, spec.model_version)
    except StorageUnavailableError:
        raise
    except DefectscanError as exc:
        yield from (Inspection(error_verdict(key, info, exc)) for key in keys)
        return
    inspector = Inspector(
        model,
        segmenter,
        spec.product,
        spec.min_area,
        spec.max_pixels,
        (*INTERRUPTS, StorageUnavailableError),
        spec.outputs.pictures,
        settings().crops_per_forward,
    )
    inputs = open_storage(spec.inputs)
    with ThreadPoolExecutor(2, thread_name_prefix="fetch") as pool:
        fetched = [(key, pool.submit(inputs.get, key).result) for key in keys]
        yield from inspector.many(fetched)


def _keep(
    book: BatchBook, location: str, items: Storage, spec: BatchSpec, key: str, result: Inspection
) -> bool:
    """Write one image's files and record it, unless the batch is already finalizing; then finalize the
    batch if this completed it. False when it was skipped."""
    if book.finalizing():
        return False
    verdict = write_inspection(items, key, result, spec.outputs)
    recorded, total = book.record({item_key(key): verdict.verdict})
    metrics.observe(verdict)
    if total and recorded >= total and book.claim_finalize():
        app.send_task("defectscan.finalize_batch", args=[location])
    return True


def run_chunk(
    spec: BatchSpec, segmenter: Segmenter | None, location: str, keys: list[str], book: BatchBook
) -> int:
    """Inspect ``keys``; each image's files are written (in order, on a thread) and recorded as it is
    done. Returns how many were kept."""
    items = open_storage(location).child(ITEMS)
    with ThreadPoolExecutor(1, thread_name_prefix="write") as writer:  # one image's files in order
        pending = [
            writer.submit(_keep, book, location, items, spec, key, result)
            for key, result in zip(keys, inspect_keys(spec, segmenter, keys), strict=True)
        ]
        return sum(done.result() for done in pending)  # a write failure raises here


def settle(spec: BatchSpec, location: str, book: BatchBook, keys: list[str], cause: DefectscanError) -> int:
    """Give each of ``keys`` still without a verdict an ``error`` verdict naming ``cause``."""
    items = open_storage(location).child(ITEMS)
    info = model_info(spec)
    left = unrecorded(book, keys)
    for key in left:
        _keep(book, location, items, spec, key, Inspection(error_verdict(key, info, cause)))
    if left:
        log.error("batch %s: %d images given %s verdicts: %s", spec.batch_id, len(left), cause.code, cause)
    return len(left)


def resume(lease: Lease, batch_id: str, reason: type[DefectscanError] = WorkerLostError) -> None:
    """Send again what a chunk that died (or ran out of time) left unrecorded; see the module docstring."""
    book = BatchBook(batch_id)
    if book.finalized() or book.finalizing():
        return
    now = server_time(book.client)
    others = [o for o in book.leases() if o.task_id != lease.task_id and not is_dead(o, now)]
    held = {k for other in others for k in other.keys}
    left = [k for k in unrecorded(book, lease.keys) if k not in held]  # another live chunk has the rest
    if not left:
        return
    if len(left) == 1 and lease.attempt >= SINGLE_ATTEMPTS:
        spec, _ = batch_context(lease.location)
        what = "died" if reason is WorkerLostError else "ran out of time"
        cause = reason(
            left[0], f"its chunk {what} {lease.attempt + 1} times while inspecting it; not retried"
        )
        settle(spec, lease.location, book, left, cause)
        return
    parts = [left] if lease.attempt == 0 else [[k] for k in left]
    for part in parts:
        send_chunk(lease.location, part, lease.attempt + 1, lease.queue)
    log.warning(
        "batch %s: %d images re-sent in %d chunks (attempt %d)",
        batch_id,
        len(left),
        len(parts),
        lease.attempt + 1,
    )


def chunk_failure(exc: BaseException) -> ChunkFailedError:
    return ChunkFailedError("chunk", f"the chunk failed after its retries ({error_message(exc)})")
