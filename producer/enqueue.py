"""``defectscan enqueue``: list a prefix's images, pin the model, write the batch's request, send chunks.

1. The batch folder is ``<out>/<batch-id>/``. A new batch id is ``<UTC time>-<4 hex>``.
2. A new batch resolves the model (``PRODUCT@latest`` to a fixed version, :func:`resolve_model`), lists
   the images under the inputs (by suffix), copies the template in, and writes ``manifest.jsonl`` (one
   line per input: key, size, etag) and then ``batch.json`` (the request, with the pinned model).
3. A batch id that exists already keeps its request and manifest, whatever has changed since: a rerun
   inspects the same inputs with the same model. Inputs that have a verdict under ``items/`` are
   recorded as done; inputs held by a running chunk (a live lease) are left to it and counted in the
   answer (``held``); only the others are sent. Nothing pending and no ``_SUCCESS``: finalize is sent.
   A batch whose bookkeeping was lost (Redis without persistence) is completed this way.
4. One ``defectscan.inspect_chunk`` task per chunk of ``chunk`` keys, in manifest order, on the
   ``inference`` queue or the ``queue`` given (for example a queue per line, served by its own workers),
   each with time limits set from its size (:func:`worker.chunks.send_chunk`).

Results go under each input's item key (:mod:`worker.item_keys`); the manifest line of an input whose
name cannot carry them records where they go (``item``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from defectscan.pipeline.errors import InvalidArgumentError, NotFoundError
from defectscan.pipeline.images import DEFAULT_MAX_PIXELS
from defectscan.pipeline.outputs import OutputOptions, is_verdict_key
from defectscan.pipeline.search_options import SegmentOptions
from defectscan.pipeline.verdict import Verdict
from defectscan.worker.app import app, send_chunk
from defectscan.worker.batch_spec import (
    BATCH_JSON,
    ITEMS,
    MANIFEST,
    TEMPLATE_KEY,
    BatchSpec,
    absolute_location,
    manifest_keys,
)
from defectscan.worker.batches import BatchBook, BatchCounts
from defectscan.worker.datasets import IMAGE_SUFFIXES
from defectscan.worker.item_keys import item_key
from defectscan.worker.model_cache import resolve_model
from defectscan.worker.storage import Storage, is_remote, open_storage, read_location


@dataclass(frozen=True)
class Enqueued:
    batch_id: str
    location: str
    images: int
    sent_images: int
    sent_chunks: int
    model_version: str
    finalize_sent: bool
    held_images: int = 0  # pending images left to running chunks


def new_batch_id(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(2)}"


def list_images(inputs: Storage) -> list[tuple[str, int, str]]:
    """``(key, size, etag)`` of every image under ``inputs``, sorted by key: objects whose name ends in an
    image suffix (any case). Folder markers (keys ending in ``/``, as consoles create) are not inputs."""
    found = [
        (o.key, o.size, o.etag)
        for o in inputs.objects()
        if not o.key.endswith("/") and Path(o.key).suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(found)


def _create(
    store: Storage,
    batch_id: str,
    inputs: str,
    model: str,
    out: str,
    template: str | None,
    chunk: int,
    require_images: bool,
    **options: object,
) -> BatchSpec:
    model_dir, version = resolve_model(model)
    images = list_images(open_storage(inputs))
    if require_images and not images:
        if not is_remote(inputs) and not Path(inputs).is_dir():
            raise InvalidArgumentError(inputs, "no such folder: check the location")
        raise InvalidArgumentError(
            inputs, f"holds no images ({', '.join(IMAGE_SUFFIXES)}): check the location"
        )
    if template is not None:
        store.put(TEMPLATE_KEY, read_location(template), "image/png")
    manifest = "".join(json.dumps(_manifest_line(k, s, e)) + "\n" for k, s, e in images)
    store.put(MANIFEST, manifest.encode(), "application/x-ndjson")
    spec = BatchSpec(
        batch_id=batch_id,
        inputs=inputs,
        out=out,
        model=model_dir,
        model_version=version,
        template=template is not None,
        images=len(images),
        chunk=chunk,
        created_at=datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        **options,
    )
    store.put(BATCH_JSON, spec.to_json(), "application/json")
    return spec


def _manifest_line(key: str, size: int, etag: str) -> dict[str, object]:
    line: dict[str, object] = {"key": key, "size": size, "etag": etag}
    if item_key(key) != key:
        line["item"] = item_key(key)
    return line


def existing_verdicts(store: Storage, recorded: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{item key: verdict}`` for every verdict already under ``items/`` (a rerun). A verdict the
    broker has on ``recorded`` is taken from there; only the others are read from storage."""
    known: dict[str, str] = {}
    items = store.child(ITEMS)
    for obj in items.objects():
        if not is_verdict_key(obj.key):
            continue
        key = obj.key[: -len(".json")]
        if recorded and key in recorded:
            known[key] = recorded[key]
        else:
            known[key] = Verdict.model_validate_json(items.get(obj.key)).verdict
    return known


def enqueue_batch(
    inputs: str,
    model: str,
    out: str,
    batch_id: str | None = None,
    chunk: int = 16,
    template: str | None = None,
    product: str | None = None,
    segment: SegmentOptions | None = None,
    min_area: int = 16,
    outputs: OutputOptions | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    queue: str | None = None,
    book_factory: Callable[[str], BatchBook] = BatchBook,
    require_images: bool = False,
) -> Enqueued:
    """Enqueue ``inputs`` as a new batch, or the rest of batch ``batch_id`` (module docstring).

    A new batch with no image under ``inputs`` is refused (:class:`InvalidArgumentError`, nothing written)
    with ``require_images``; without it, it is a batch of none, which finishes at once (a night the line
    did not run)."""
    batch_id = batch_id or new_batch_id()
    inputs, out = absolute_location(inputs), absolute_location(out)
    model = absolute_location(model)
    template = None if template is None else absolute_location(template)
    root = open_storage(out)
    store = root.child(batch_id)
    location = f"{root.location.rstrip('/')}/{batch_id}"
    if store.exists(BATCH_JSON):
        spec = BatchSpec.model_validate_json(store.get(BATCH_JSON))
    else:
        spec = _create(
            store,
            batch_id,
            inputs,
            model,
            out,
            template,
            chunk,
            require_images,
            product=product,
            segment=segment or SegmentOptions(),
            min_area=min_area,
            outputs=outputs or OutputOptions(),
            max_pixels=max_pixels,
        )
    keys = manifest_keys(store)
    book = book_factory(batch_id)
    items = {item_key(k) for k in keys}
    known = {k: v for k, v in existing_verdicts(store, book.results()).items() if k in items}
    book.start(len(keys), known)
    held = {k for lease in book.leases() for k in lease.keys}
    pending = [k for k in keys if item_key(k) not in known]
    sent = [k for k in pending if k not in held]
    size = max(spec.chunk, 1)
    chunks = [sent[i : i + size] for i in range(0, len(sent), size)]
    for part in chunks:
        send_chunk(location, part, queue=queue)
    finalize = False
    if not pending and not store.exists("_SUCCESS") and book.claim_finalize():
        app.send_task("defectscan.finalize_batch", args=[location], queue=queue)
        finalize = True
    return Enqueued(
        batch_id,
        location,
        len(keys),
        len(sent),
        len(chunks),
        spec.model_version,
        finalize,
        len(pending) - len(sent),
    )


def storage_counts(store: Storage, batch_id: str) -> tuple[BatchCounts, bool]:
    """A batch's counts from its files (manifest, verdicts, ``_SUCCESS``), and whether it finished."""
    if not store.exists(BATCH_JSON):
        raise NotFoundError(batch_id, f"no batch at {store.location}")
    keys = manifest_keys(store)
    verdicts = existing_verdicts(store)
    known = [verdicts[item_key(k)] for k in keys if item_key(k) in verdicts]
    failed = sum(v == "error" for v in known)
    return BatchCounts(len(keys), len(known) - failed, failed), store.exists("_SUCCESS")
