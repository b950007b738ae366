"""The Celery tasks: thin shells over :mod:`worker.chunks`, :mod:`pipeline.inspection` and
:mod:`worker.results`.

``inspect_chunk(batch, keys)`` inspects a chunk of a batch's inputs and writes each one's verdict and
pictures under ``<batch>/items/`` (the same files the local ``inspect`` writes), recording each image in
Redis (:mod:`worker.batches`) as it is written; the image that completes the batch enqueues
``finalize_batch(batch)``, which writes ``summary.json`` from the verdicts in storage and then
``_SUCCESS``.

* While one image computes, the chunk's next images are being fetched on two threads, and the previous
  image's files are being written on a third (in order: pictures, then verdict).
* Every image gets exactly one verdict: one image's failure is its ``error`` verdict; a model that
  cannot be loaded gives every image of the chunk an error verdict naming it.
* A storage outage (:class:`StorageUnavailableError`) retries the chunk with exponential backoff (every
  write is whole and at a deterministic key); a lost Redis connection is waited for inside the task
  (:func:`worker.batches.connect`). Any other failure of the chunk is retried twice, then its images get
  ``chunk_failed`` verdicts (:func:`worker.chunks.settle`), so the batch finishes.
* A running chunk holds a lease with a heartbeat, and every worker runs a watchdog that resumes the
  chunks of dead workers (:mod:`worker.chunk_watch`); a chunk past its soft time limit is resumed the
  same way (:func:`worker.chunks.resume`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready, worker_shutdown

from defectscan.pipeline.errors import DefectscanError
from defectscan.pipeline.verdict import ModelInfo, Verdict, error_verdict
from defectscan.worker import cores, metrics
from defectscan.worker.app import app, chunk_limits
from defectscan.worker.batch_spec import ITEMS, manifest_keys
from defectscan.worker.batches import BatchBook, Lease
from defectscan.worker.chunk_watch import ChunkLease, Watchdog
from defectscan.worker.chunks import (
    ChunkTimeoutError,
    VerdictLostError,
    batch_context,
    chunk_failure,
    model_info,
    resume,
    run_chunk,
    settle,
    unrecorded,
)
from defectscan.worker.item_keys import item_key
from defectscan.worker.report import batch_model_facts, write_report
from defectscan.worker.results import SUMMARY, Summary
from defectscan.worker.settings import settings
from defectscan.worker.storage import Storage, StorageUnavailableError, open_storage

log = logging.getLogger("defectscan.worker")
RETRYABLE = (StorageUnavailableError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
CHUNK_RETRIES = 10  # for an unavailable store, with backoff (about half an hour in all)
FAILURE_RETRIES = 2  # for anything else, before the chunk's images get chunk_failed verdicts
WATCHDOG: list[Watchdog] = []


@lru_cache(maxsize=1)
def configure_threads() -> int:
    """Compute threads for this process: ``DEFECTSCAN_TORCH_THREADS``, else one per core it is given
    (:mod:`worker.cores`), so worker processes that share a node do not oversubscribe its cores."""
    return cores.configure(cores.threads_per_process(1, settings().torch_threads))


def _backoff(retries: int) -> float:
    return float(min(2 ** (retries + 1), 300))


def _retry(task: Any, held: ChunkLease, exc: BaseException) -> None:
    """Hand the chunk back to the broker for a later try; if the broker cannot take it, keep the lease
    for the watchdog (which resumes it once it stops beating)."""
    try:
        retry = task.retry(exc=exc, countdown=_backoff(task.request.retries), throw=False)
    except Exception:
        held.abandon()
        raise exc from None
    raise retry


@app.task(bind=True, name="defectscan.inspect_chunk", ignore_result=True, max_retries=CHUNK_RETRIES)
def inspect_chunk(self: Any, batch_location: str, keys: list[str], attempt: int = 0) -> dict[str, Any]:
    start = time.perf_counter()
    configure_threads()
    metrics.serve()
    try:
        spec, segmenter = batch_context(batch_location)
        book = BatchBook(spec.batch_id)
        if book.finalized() or book.finalizing():
            log.info("batch %s is finished: a chunk of %d images skipped", spec.batch_id, len(keys))
            return {"images": 0}
        todo = unrecorded(book, keys)
    except RETRYABLE as exc:
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from None
    if not todo:
        return {"images": 0}
    queue = (self.request.delivery_info or {}).get("routing_key")
    soft, _ = chunk_limits(len(todo))
    lease = Lease(
        self.request.id, todo, self.request.hostname or "", queue, 0.0, 0.0, soft, batch_location, attempt
    )
    with ChunkLease(book, lease) as held:
        try:
            kept = run_chunk(spec, segmenter, batch_location, todo, book)
        except SoftTimeLimitExceeded:
            log.warning("batch %s: chunk over its %d s limit; resuming the rest", spec.batch_id, soft)
            resume(lease, spec.batch_id, ChunkTimeoutError)
            return {"images": len(todo) - len(unrecorded(book, todo)), "timed_out": True}
        except Exception as exc:
            retryable = isinstance(exc, RETRYABLE)
            if self.request.retries < (CHUNK_RETRIES if retryable else FAILURE_RETRIES):
                if not retryable:
                    log.exception("batch %s: chunk failed; retrying", spec.batch_id)
                _retry(self, held, exc)
            try:
                settle(spec, batch_location, book, todo, chunk_failure(exc))
            except Exception:
                held.abandon()  # not even the error verdicts could be written: the watchdog resumes it
                raise
            return {"images": len(todo), "settled": True}
    seconds = time.perf_counter() - start
    metrics.CHUNK_SECONDS.observe(seconds)
    log.info(
        "batch %s: chunk of %d images in %.2f s (%.2f img/s); %d kept",
        spec.batch_id,
        len(todo),
        seconds,
        len(todo) / max(seconds, 1e-9),
        kept,
    )
    return {"images": kept, "seconds": round(seconds, 3)}


@app.task(
    name="defectscan.finalize_batch",
    ignore_result=True,
    autoretry_for=RETRYABLE,
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=CHUNK_RETRIES,
)
def finalize_batch(batch_location: str) -> None:
    """``summary.json`` from every verdict in storage (manifest order), then ``_SUCCESS``, last."""
    spec, _ = batch_context(batch_location)
    store = open_storage(batch_location)
    items = store.child(ITEMS)
    book = BatchBook(spec.batch_id)
    if book.finalized():
        return
    try:
        keys = manifest_keys(store)
        summary = Summary(batch_id=spec.batch_id)
        verdicts = _verdicts(items, keys, model_info(spec))
        for verdict in verdicts:
            summary.add(verdict)
        store.put(SUMMARY, summary.to_json(), "application/json")
        write_report(store, verdicts, summary, batch_model_facts(spec), prefix=f"{ITEMS}/")
        store.put("_SUCCESS", b"", "text/plain")
    except BaseException:
        book.release_finalize()
        raise
    book.mark_finalized()
    log.info("batch %s finalized: %d images, %s", spec.batch_id, summary.images, summary.verdicts)


def _verdicts(items: Storage, keys: list[str], info: ModelInfo) -> list[Verdict]:
    """Every input's verdict, in order. One that is missing or unreadable (deleted, or corrupted, after
    it was recorded) becomes that input's ``verdict_lost`` error verdict, written in its place."""

    def read(key: str) -> Verdict:
        try:
            return Verdict.model_validate_json(items.get(f"{item_key(key)}.json"))
        except StorageUnavailableError:
            raise
        except (DefectscanError, ValueError) as exc:
            lost = error_verdict(key, info, VerdictLostError(key, f"its verdict was lost ({exc})"))
            lost.image.stored_as = item_key(key) if item_key(key) != key else None
            items.put(f"{item_key(key)}.json", lost.to_json(), "application/json")
            log.error("%s: verdict missing or unreadable at finalize; recorded as verdict_lost", key)
            return lost

    with ThreadPoolExecutor(8, thread_name_prefix="summary") as pool:
        return list(pool.map(read, keys))


@worker_ready.connect
def _announce(sender: Any = None, **_: Any) -> None:
    log.info("defectscan worker ready: %s", getattr(sender, "hostname", "worker"))
    WATCHDOG.append(Watchdog(resume).start())


@worker_shutdown.connect
def _stop_watchdog(**_: Any) -> None:
    for watchdog in WATCHDOG:
        watchdog.stop()
