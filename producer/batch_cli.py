"""The distributed sub-commands: ``enqueue``, ``status``, ``wait``, ``worker`` and ``dev-s3``.

They talk to Redis (``DEFECTSCAN_BROKER_URL``) and to storage (``s3://`` locations through the standard
AWS variables, or local paths); none of them imports the models, so they start fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import redis
from kombu.utils.url import maybe_sanitize_url

from defectscan.pipeline.outputs import OutputOptions
from defectscan.producer.console import err, progress_bar
from defectscan.producer.enqueue import enqueue_batch, storage_counts
from defectscan.producer.exits import Exit, NotFound, Unavailable
from defectscan.producer.nightly import ENV as NIGHTLY_ENV
from defectscan.producer.nightly import Nightly, beat_argv
from defectscan.producer.options import pictures_option, runtime_option, search_options, segment_options
from defectscan.worker.app import INFERENCE_QUEUE, RETRAIN_QUEUE, bookkeeping_url
from defectscan.worker.batch_spec import BATCH_JSON, absolute_location
from defectscan.worker.batches import BatchBook, BatchCounts, connect
from defectscan.worker.chunk_watch import is_dead, is_overdue
from defectscan.worker.cores import core_slices, threads_per_process
from defectscan.worker.dev_s3 import DevS3
from defectscan.worker.processes import until_interrupted
from defectscan.worker.retrain import RetrainBook
from defectscan.worker.settings import env_name, settings
from defectscan.worker.storage import Storage, open_storage

EXIT_TIMEOUT = Exit.TIMEOUT
EXIT_STALLED = Exit.STALLED
# how long a command waits for a broker that does not answer when it starts, before it says so (a
# broker that goes away later is waited for as long as DEFECTSCAN_REDIS_WAIT_S says)
FIRST_CONTACT_S = 30.0


@click.command()
@click.argument("inputs")
@click.option("--model", required=True, help="Model directory, or <models>/PRODUCT@latest (local or s3://).")
@click.option("--out", required=True, help="Results location; the batch goes to <out>/<batch-id>/.")
@click.option("--batch-id", help="Rerun this batch: only images without a verdict are sent.")
@click.option(
    "--chunk", default=16, show_default=True, type=click.IntRange(1, 10_000), help="Images per task."
)
@click.option("--template", help="Template image (path or s3://): segment every instance of it.")
@click.option("--product", help="Product name recorded in the verdicts.")
@click.option(
    "--min-area", default=16, show_default=True, type=click.IntRange(1), help="Smallest region, px."
)
@click.option("--save-maps", is_flag=True, help="Also write <image>.map.npy.")
@pictures_option
@click.option("--lookout-compat", is_flag=True, help="Add Lookout for Vision's DetectAnomalyResult.")
@segment_options
def enqueue(
    inputs: str,
    model: str,
    out: str,
    batch_id: str | None,
    chunk: int,
    template: str | None,
    product: str | None,
    min_area: int,
    save_maps: bool,
    pictures: str,
    lookout_compat: bool,
    max_instances: int,
    min_score: float,
    angles: str,
    scales: str,
    max_pixels: int,
    pyramid: bool,
) -> None:
    """Enqueue every image under INPUTS (s3://bucket/prefix/ or a folder) as one batch; print its id.

    The model is pinned for the whole batch; batch.json and manifest.jsonl go to <out>/<batch-id>/."""
    broker_answers()
    done = enqueue_batch(
        inputs,
        model,
        out,
        batch_id,
        chunk,
        template,
        product,
        search_options(angles, scales, min_score, max_instances, pyramid),
        min_area,
        OutputOptions(save_maps=save_maps, lookout_compat=lookout_compat, pictures=pictures),
        max_pixels=max_pixels,
        require_images=True,
    )
    held = f", {done.held_images} left to running chunks" if done.held_images else ""
    err.print(
        f"batch {done.batch_id}: {done.images} images, {done.sent_images} sent in {done.sent_chunks} "
        f"chunks{held}; model version {done.model_version}; results in {done.location}",
        highlight=False,
        soft_wrap=True,
    )
    click.echo(done.batch_id)


def _book(batch_id: str, wait_s: float) -> BatchBook:
    return BatchBook(batch_id, connect(wait_s=wait_s))


def _finished(book: BatchBook, counts: BatchCounts) -> bool:
    """Every image has a verdict (a batch of none has nothing to wait for) and the summary is written."""
    return (counts.finished or counts.total == 0) and book.finalized()


def _unavailable(exc: Exception) -> Unavailable:
    where = maybe_sanitize_url(bookkeeping_url())
    return Unavailable(
        f"the broker's Redis ({where}) is unavailable ({type(exc).__name__}): start it or point "
        "DEFECTSCAN_BROKER_URL at it, then try again"
    )


def broker_answers() -> None:
    """Raise :class:`Unavailable` unless the bookkeeping Redis answers within :data:`FIRST_CONTACT_S`:
    a command checks before it writes anything."""
    try:
        connect(wait_s=FIRST_CONTACT_S).ping()
    except redis.exceptions.RedisError as exc:
        raise _unavailable(exc) from None


def chunk_rows(counts: BatchCounts) -> list[dict[str, object]]:
    """The running chunks of a batch, each ``running``, ``overdue`` (past its soft time limit) or
    ``dead`` (no heartbeat for ``DEFECTSCAN_DEAD_AFTER_S``: a watchdog will resume it)."""
    rows = []
    for lease in sorted(counts.leases, key=lambda item: item.started):
        state = (
            "dead"
            if is_dead(lease, counts.now)
            else "overdue"
            if is_overdue(lease, counts.now)
            else "running"
        )
        rows.append(
            {
                "state": state,
                "images": len(lease.keys),
                "worker": lease.worker,
                "running_s": round(counts.now - lease.started, 1),
                "last_beat_s": round(counts.now - lease.beat, 1),
                "attempt": lease.attempt,
            }
        )
    return rows


@click.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.option("--out", help="Results location: count from storage when the broker no longer knows the batch.")
def status(batch_id: str, as_json: bool, out: str | None) -> None:
    """Done, failed and pending counts of BATCH_ID, and its running chunks (running, overdue, or dead:
    their worker stopped beating); or the state of a retrain request (retrain-...)."""
    if batch_id.startswith("retrain-"):
        _retrain_status(batch_id, as_json)
        return
    book = _book(batch_id, FIRST_CONTACT_S)
    try:
        counts = book.counts()
        known = book.known()
        finished = known and _finished(book, counts)
    except redis.exceptions.RedisError as exc:
        raise _unavailable(exc) from None
    if not known:
        if out is None:
            raise NotFound(
                f"no batch {batch_id!r} is known to the broker: check the id, or give --out to count from "
                "storage; if the "
                f"broker lost it (Redis without persistence), `defectscan enqueue ... --batch-id {batch_id}` "
                "completes it"
            )
        # the broker's keys expired or were lost: the files say the same
        counts, finished = storage_counts(open_storage(absolute_location(out)).child(batch_id), batch_id)
    chunks = chunk_rows(counts)
    row: dict[str, object] = {
        "batch": batch_id,
        "state": "finished" if finished else "running",
        "total": counts.total,
    }
    row |= {"done": counts.done, "failed": counts.failed, "pending": counts.pending}
    row["chunks"] = len(chunks)
    row["stalled_chunks"] = sum(c["state"] != "running" for c in chunks)
    if as_json:
        click.echo(json.dumps({**row, "chunk_list": chunks}))
        return
    click.echo(" ".join(f"{k} {v}" for k, v in row.items()))
    for chunk in chunks:
        if chunk["state"] != "running":
            click.echo(
                f"  chunk of {chunk['images']} images on {chunk['worker']}: {chunk['state']} "
                f"(running {chunk['running_s']} s, last heartbeat {chunk['last_beat_s']} s ago)"
            )


def _retrain_status(request_id: str, as_json: bool) -> None:
    state = RetrainBook.read(request_id)
    if not state:
        raise NotFound(f"no retrain request {request_id!r} is known to the broker: check the id")
    fields = ("state", "stage", "product", "version", "promoted", "reason", "error", "message")
    row = {"request": request_id, **{k: state[k] for k in fields if state.get(k)}}
    click.echo(json.dumps(row) if as_json else " ".join(f"{k} {v}" for k, v in row.items()))


@click.command()
@click.argument("batch_id")
@click.option("--timeout", default=6 * 3600.0, show_default=True, type=click.FloatRange(0), help="Seconds.")
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Seconds between polls.",
)
@click.option(
    "--stalled-after",
    default=1800.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds without an image done (and no chunk running) after which the batch counts as stalled.",
)
@click.option(
    "--out",
    help="Results location: wait on a batch the broker does not know (lost, or expired) from its files.",
)
def wait(batch_id: str, timeout: float, interval: float, stalled_after: float, out: str | None) -> None:
    """Wait until BATCH_ID is finished and its summary is written.

    Exits 0 when every image has a verdict, 1 when it finished with failed images, 3 on timeout, 4 when
    the batch is stalled (images pending, none done for --stalled-after seconds, no chunk running), and 5
    at once for a batch that neither the broker nor --out's storage knows. Rides through broker
    restarts and outages (saying so) until --timeout."""
    store = open_storage(absolute_location(out)).child(batch_id) if out else None
    if store is not None and not store.exists(BATCH_JSON):  # written before the broker hears of it
        raise _unknown_batch(batch_id, store)
    book = _book(batch_id, interval)
    deadline = time.monotonic() + timeout
    counts, away, known = BatchCounts(0, 0, 0), False, False
    progress, progressed_at = -1, time.monotonic()
    with progress_bar(1, f"batch {batch_id}") as bar:
        while True:
            try:
                counts = book.counts()
                finished = _finished(book, counts)
                if away:
                    err.print("the broker is back", highlight=False)
                    away = False
            except redis.exceptions.RedisError as exc:
                if not away:
                    err.print(
                        f"the broker is unavailable ({type(exc).__name__}); waiting for it, up to "
                        f"--timeout ({timeout:.0f} s)",
                        highlight=False,
                    )
                    away = True
                finished = False
            else:
                if not finished and not book.known():  # the broker does not know it: do the files?
                    if store is None:
                        raise _unknown_batch(batch_id, store)
                    counts, finished = storage_counts(store, batch_id)
                known = True
            bar.update(bar.task_ids[0], total=max(counts.total, 1), completed=counts.done + counts.failed)
            if finished:
                break
            now = time.monotonic()
            live = any(not is_dead(lease, counts.now) for lease in counts.leases)
            if counts.done + counts.failed != progress or live or away:
                progress, progressed_at = counts.done + counts.failed, now
            if known and now - progressed_at > stalled_after:
                err.print(
                    f"stalled: {counts.pending} of {counts.total} images pending, none done for "
                    f"{stalled_after:.0f} s and no chunk running; check the workers, or re-run "
                    f"`defectscan enqueue ... --batch-id {batch_id}` to send the pending images again",
                    highlight=False,
                    soft_wrap=True,
                )
                sys.exit(EXIT_STALLED)
            if now > deadline:
                pending = f"{counts.pending} of {counts.total} images pending" if known else "no answer"
                away_now = "; the broker is still unavailable" if away else ""
                err.print(f"timed out: {pending}{away_now}", highlight=False)
                sys.exit(EXIT_TIMEOUT)
            time.sleep(interval)
    click.echo(f"batch {batch_id} finished: {counts.done} done, {counts.failed} failed, of {counts.total}")
    if counts.failed:
        err.print(
            f"{counts.failed} images got an error verdict: their codes are in the batch's summary.json",
            highlight=False,
        )
        sys.exit(Exit.FAILED)


def _unknown_batch(batch_id: str, store: Storage | None) -> NotFound:
    if store is None:
        return NotFound(
            f"no batch {batch_id!r} is known to the broker: check the id (`defectscan status {batch_id}`), "
            "or give --out to wait on a batch whose bookkeeping the broker no longer has"
        )
    return NotFound(f"no batch {batch_id!r} is known to the broker, nor at {store.location}: check the id")


def worker_argv(queues: str, concurrency: int, loglevel: str, name: str, pool: str) -> list[str]:
    """The ``celery worker`` command line for :mod:`worker.app`."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "defectscan.worker.app:app",
        "worker",
        f"--queues={queues}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        f"--hostname={name}",
        f"--pool={pool}",
        "--without-gossip",
        "--without-mingle",
    ]


def _gpu_count() -> int:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    return len([line for line in out.stdout.splitlines() if line.strip()])


@click.command(name="worker")
@click.option(
    "--queues", default=INFERENCE_QUEUE, show_default=True, help=f"{INFERENCE_QUEUE},{RETRAIN_QUEUE}"
)
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1), help="CPU processes.")
@click.option("--loglevel", default="info", show_default=True)
@click.option("--name", default="defectscan@%h", show_default=True, help="Celery node name.")
@click.option(
    "--gpus",
    default="auto",
    show_default=True,
    help="auto: worker processes on each GPU when there are GPUs; none: CPU processes only.",
)
@click.option(
    "--per-gpu",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Worker processes sharing each GPU (their CPU stages run side by side).",
)
@runtime_option
def worker_command(
    queues: str, concurrency: int, loglevel: str, name: str, gpus: str, per_gpu: int, runtime: str | None
) -> None:
    """Run a Celery worker on QUEUES (a thin wrapper over ``celery worker``).

    With GPUs, PER_GPU worker processes per GPU (each its own process, CUDA_VISIBLE_DEVICES set, solo
    pool, so no process forks after CUDA starts), each given its share of this worker's cores;
    otherwise CONCURRENCY forked CPU processes. Each process runs one compute thread per core it has
    (``DEFECTSCAN_TORCH_THREADS`` overrides; see ``worker/cores.py``)."""
    count = _gpu_count() if gpus == "auto" else 0
    if runtime is not None:  # the worker processes read it from their settings
        os.environ[env_name("runtime")] = runtime
    wanted = settings().torch_threads
    if count == 0:
        threads = threads_per_process(concurrency, wanted)
        err.print(
            f"worker {name}: queues {queues}, {concurrency} CPU processes, {threads} threads each",
            highlight=False,
        )
        env = {**os.environ, env_name("torch_threads"): str(threads)}
        os.execve(sys.executable, worker_argv(queues, concurrency, loglevel, name, "prefork"), env)
    err.print(
        f"worker {name}: queues {queues}, {per_gpu} process(es) on each of {count} GPUs", highlight=False
    )
    children = [
        subprocess.Popen(
            worker_argv(queues, 1, loglevel, f"gpu{i // per_gpu}-{i % per_gpu}-{name}", "solo"),
            env={**os.environ, "CUDA_VISIBLE_DEVICES": str(i // per_gpu)},
            preexec_fn=lambda given=given: os.sched_setaffinity(0, given),  # type: ignore[misc]
        )
        for i, given in enumerate(core_slices(count * per_gpu))
    ]

    def forward(signum: int, _: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    sys.exit(max(child.wait() for child in children))


@click.command(name="dev-s3")
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--port", type=int, help="S3 port (default: a free one).")
@click.option("--bucket", "buckets", multiple=True, help="Create this bucket (repeatable).")
def dev_s3(data_dir: Path, port: int | None, buckets: tuple[str, ...]) -> None:
    """Run an embedded S3 store (SeaweedFS weed mini) on 127.0.0.1 until interrupted.

    Its endpoint and a generated key pair are written to DATA_DIR/s3.env (mode 0600): `source` it."""
    store = DevS3(data_dir, port)
    creds = store.start(buckets=buckets)
    err.print(
        f"S3 at {creds.endpoint_url} (pid {store.pid}); credentials: source {data_dir / 's3.env'}",
        highlight=False,
    )
    try:
        until_interrupted([store.process])
    finally:
        store.stop()


@click.command()
@click.option("--inputs", required=True, help="The prefix whose YYYY-MM-DD/ folders hold each day's images.")
@click.option("--model", required=True, help="Model, e.g. s3://bucket/models/PRODUCT@latest.")
@click.option("--out", required=True, help="Results location.")
@click.option("--template", help="Template image (path or s3://).")
@click.option("--product", help="Product name recorded in the verdicts.")
@click.option("--chunk", default=16, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--at", default="02:30", show_default=True, help="Time of day, UTC, HH:MM.")
@click.option("--schedule-file", default="celerybeat-schedule", show_default=True, help="Beat's state file.")
def beat(
    inputs: str,
    model: str,
    out: str,
    template: str | None,
    product: str | None,
    chunk: int,
    at: str,
    schedule_file: str,
) -> None:
    """Every day at --at, enqueue the previous day's prefix <inputs>/YYYY-MM-DD/ as batch nightly-YYYY-MM-DD.

    Runs Celery beat with an embedded worker on its own queue; see producer/nightly.py (and a cron line)."""
    nightly = Nightly(
        inputs=inputs, model=model, out=out, template=template, product=product, chunk=chunk, at=at
    )
    try:
        nightly.crontab()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    err.print(f"nightly: {inputs}<yesterday>/ at {at} UTC -> {out}", highlight=False)
    os.execve(
        sys.executable, beat_argv(schedule_file), {**os.environ, NIGHTLY_ENV: nightly.model_dump_json()}
    )


BATCH_COMMANDS = (enqueue, status, wait, worker_command, dev_s3, beat)
