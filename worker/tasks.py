"""The Celery tasks: thin shells over :mod:`pipeline.inspection` and :mod:`worker.results`.

``inspect_chunk(batch, keys)`` inspects a chunk of a batch's inputs and writes each one's verdict and
pictures under ``<batch>/items/`` (the same files the local ``inspect`` writes), then records the chunk in
Redis (:mod:`worker.batches`); the chunk that completes the batch enqueues ``finalize_batch(batch)``,
which writes ``summary.json`` from the verdicts in storage and then ``_SUCCESS``.

* The batch's request (``batch.json``) and template are read once per process and batch; the pinned
  model comes from a per-process LRU cache (:mod:`worker.model_cache`), loaded on the first task.
* While one image computes, the chunk's next images are being fetched on two threads, and the previous
  image's files are being written on a third (in order: pictures, then verdict). (Fetching the
  *next chunk* would need the next task reserved, which ``worker_prefetch_multiplier=1`` with late
  acknowledgement rules out; the in-chunk pipeline gives the same overlap except at chunk edges.)
* A model that cannot be loaded (unknown version, bad files) gives every image of the chunk an error
  verdict naming it, and the batch goes on. A storage outage (:class:`StorageUnavailableError`) or a
  lost Redis connection retries the whole chunk with exponential backoff: every write is whole and at a
  deterministic key, so a rerun rewrites the same files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import redis
from celery.signals import worker_ready

from pipeline.errors import DefectscanError
from pipeline.images import decode_image
from pipeline.inspection import Inspection, inspect_image
from pipeline.segment import Segmenter
from pipeline.verdict import ErrorInfo, ImageInfo, ModelInfo, Verdict
from worker import metrics
from worker.app import app
from worker.batch_spec import ITEMS, TEMPLATE_KEY, BatchSpec, manifest_keys
from worker.batches import BatchBook
from worker.model_cache import ModelCache
from worker.results import Summary, write_inspection
from worker.storage import Storage, StorageUnavailableError, open_storage

log = logging.getLogger("defectscan.worker")
MODELS = ModelCache()
RETRYABLE = (StorageUnavailableError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
RETRIED: dict[str, Any] = {  # both tasks: a transient failure reruns the whole task, with backoff
    "ignore_result": True,
    "autoretry_for": RETRYABLE,
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 10,
}


@lru_cache(maxsize=1)
def configure_threads() -> int:
    """``DEFECTSCAN_TORCH_THREADS`` intra-op threads for this process (default: torch's choice), so
    several worker processes on one node do not oversubscribe its cores."""
    import torch

    wanted = int(os.environ.get("DEFECTSCAN_TORCH_THREADS", "0"))
    if wanted > 0:
        torch.set_num_threads(wanted)
    return int(torch.get_num_threads())


@lru_cache(maxsize=8)
def batch_context(batch_location: str) -> tuple[BatchSpec, Segmenter | None]:
    """The batch's request and its segmenter (if it has a template), read once per process."""
    store = open_storage(batch_location)
    spec = BatchSpec.model_validate_json(store.get("batch.json"))
    segmenter = None
    if spec.template:
        template = decode_image(store.get(TEMPLATE_KEY), f"{batch_location}/{TEMPLATE_KEY}")
        segmenter = Segmenter(template, spec.segment_options())
    return spec, segmenter


def _fetch(store: Storage, key: str) -> bytes | DefectscanError:
    try:
        return store.get(key)
    except StorageUnavailableError:
        raise
    except DefectscanError as exc:
        return exc


def _error(key: str, info: ModelInfo, exc: DefectscanError) -> Inspection:
    return Inspection(
        Verdict(image=ImageInfo(key=key), model=info, verdict="error", error=ErrorInfo(**exc.as_dict()))
    )


def inspect_keys(spec: BatchSpec, segmenter: Segmenter | None, keys: list[str]) -> Iterator[Inspection]:
    """Each key's inspection, fetching ahead on threads while the current image computes."""
    info = ModelInfo(product=spec.product, version=spec.model_version, method="unknown")
    try:
        model = MODELS.get(spec.model, spec.model_version)
    except StorageUnavailableError:
        raise
    except DefectscanError as exc:
        yield from (_error(key, info, exc) for key in keys)
        return
    info.method = model.config.method
    inputs = open_storage(spec.inputs)
    with ThreadPoolExecutor(2, thread_name_prefix="fetch") as pool:
        for key, data in zip(keys, pool.map(lambda k: _fetch(inputs, k), keys), strict=True):
            if isinstance(data, DefectscanError):
                yield _error(key, info, data)
                continue
            yield inspect_image(data, key, model, segmenter, spec.product, spec.min_area, spec.max_pixels)


@app.task(name="defectscan.inspect_chunk", **RETRIED)
def inspect_chunk(batch_location: str, keys: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    configure_threads()
    metrics.serve()
    spec, segmenter = batch_context(batch_location)
    items = open_storage(batch_location).child(ITEMS)
    results: dict[str, str] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="write") as writer:  # one image's files in order
        pending = []
        for result in inspect_keys(spec, segmenter, keys):
            key = result.verdict.image.key
            pending.append(writer.submit(write_inspection, items, key, result, spec.outputs))
            results[key] = result.verdict.verdict
            metrics.observe(result.verdict)
        for done in pending:
            done.result()  # every file is written before the chunk counts; a failure retries it
    book = BatchBook(spec.batch_id)
    recorded, total = book.record(results)
    seconds = time.perf_counter() - start
    metrics.CHUNK_SECONDS.observe(seconds)
    log.info(
        "batch %s: chunk of %d images in %.2f s (%.2f img/s); %d of %d recorded",
        spec.batch_id,
        len(keys),
        seconds,
        len(keys) / max(seconds, 1e-9),
        recorded,
        total,
    )
    if total and recorded >= total and book.claim_finalize():
        finalize_batch.delay(batch_location)
    return {"images": len(keys), "seconds": round(seconds, 3)}


@app.task(name="defectscan.finalize_batch", **RETRIED)
def finalize_batch(batch_location: str) -> None:
    """``summary.json`` from every verdict in storage (manifest order), then ``_SUCCESS``, last."""
    spec, _ = batch_context(batch_location)
    store = open_storage(batch_location)
    items = store.child(ITEMS)
    book = BatchBook(spec.batch_id)
    try:
        keys = manifest_keys(store)
        summary = Summary(batch_id=spec.batch_id)
        with ThreadPoolExecutor(8, thread_name_prefix="summary") as pool:
            for raw in pool.map(lambda k: items.get(f"{k}.json"), keys):
                summary.add(Verdict.model_validate_json(raw))
        store.put("summary.json", summary.to_json(), "application/json")
        store.put("_SUCCESS", b"", "text/plain")
    except BaseException:
        book.release_finalize()
        raise
    book.mark_finalized()
    log.info("batch %s finalized: %d images, %s", spec.batch_id, summary.images, summary.verdicts)


@worker_ready.connect
def _announce(sender: Any = None, **_: Any) -> None:
    log.info("defectscan worker ready: %s", getattr(sender, "hostname", "worker"))
