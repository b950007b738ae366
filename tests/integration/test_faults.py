"""The fault suite: faults injected into running batches on real parts (a Redis-compatible server with
AOF, SeaweedFS, ``defectscan worker`` processes), and a batch of awkward inputs. Every batch must
finish with exactly one verdict per input, a summary that matches the files, and nothing written after
``_SUCCESS``. Each test prints the time from its fault to the batch's ``_SUCCESS`` (``pytest -s``).

The workers watch each other faster than the defaults (a lease is dead after 6 s without a heartbeat
instead of 60 s; sweeps every 1 s instead of 15 s), so a test waits seconds where production waits a
minute; everything else runs with the defaults.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from defectscan.pipeline.images import encode_png
from defectscan.pipeline.model import AnomalyModel, ModelConfig
from defectscan.pipeline.names import printable
from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range
from defectscan.pipeline.synth import generate_sheet, reference_template
from defectscan.pipeline.verdict import Verdict
from defectscan.producer.batch_cli import worker_argv
from defectscan.producer.enqueue import enqueue_batch
from defectscan.producer.synth_files import aligned_ok_crops, publish_model
from defectscan.worker.app import app, send_chunk
from defectscan.worker.batch_spec import manifest_keys
from defectscan.worker.batches import BatchBook, connect
from defectscan.worker.dev_redis import DevRedis
from defectscan.worker.dev_s3 import DevS3
from defectscan.worker.item_keys import item_key
from defectscan.worker.storage import S3Storage
from tests.awkward import SPEC, VALID, corpus
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
FAST_WATCH = (  # DEFECTSCAN_FAULTS_DEFAULT_WATCH=1 measures with the defaults (10 s, 60 s, 15 s)
    {}
    if os.environ.get("DEFECTSCAN_FAULTS_DEFAULT_WATCH")
    else {"DEFECTSCAN_HEARTBEAT_S": "1", "DEFECTSCAN_DEAD_AFTER_S": "6", "DEFECTSCAN_SWEEP_S": "1"}
)
TIMINGS: dict[str, float] = {}


@dataclass
class Cluster:
    redis: DevRedis
    s3: DevS3
    env: dict[str, str]
    bucket: str
    logs: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_worker(self, name: str, **extra: str) -> None:
        """``defectscan worker`` as deployed on a CPU node (prefork, one process), in its own process
        group, so a SIGKILL of the group is a node lost."""
        args = worker_argv("inference", 1, "info", f"{name}@%h", "prefork")
        self.workers[name] = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **self.env, **FAST_WATCH, **extra},
            stdout=(self.logs / f"{name}.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal_worker(self, name: str, signum: int) -> None:
        """SIGKILL the whole process group (a node lost); other signals to the main process alone, as
        ``docker stop`` and the kubelet send them."""
        proc = self.workers.pop(name)
        if signum == signal.SIGKILL:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        proc.wait(120)

    def stop_all(self) -> None:
        for name in list(self.workers):
            with suppress(ProcessLookupError):
                self.signal_worker(name, signal.SIGTERM)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Its own Redis (AOF) and S3, so restarts and outages touch no other test; a model and template."""
    root = tmp_path_factory.mktemp("faults")
    server, s3 = DevRedis(root / "redis", aof=True), DevS3(root / "s3")
    server.start()
    creds = s3.start()
    env = {
        **creds.env(),
        "DEFECTSCAN_BROKER_URL": server.url(0),
        "DEFECTSCAN_CACHE": str(root / "cache"),
        "DEFECTSCAN_REDIS_WAIT_S": "120",
        "HF_HUB_OFFLINE": "1",
    }
    with pointed_at(env, {"broker_url": server.url(0), "result_backend": server.url(0)}):
        made = _new_cluster(server, s3, env, root, "faults")
        try:
            yield made
        finally:
            made.stop_all()
            print("\nfault suite, seconds from the fault to _SUCCESS:", json.dumps(TIMINGS))
    s3.stop()
    server.stop()


@contextmanager
def pointed_at(env: dict[str, str], settings: dict[str, object]) -> Iterator[None]:
    """This process's environment and Celery app pointed at a test cluster, and back afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    previous = {k: app.conf[k] for k in settings}
    os.environ.update(env)
    app.conf.update(settings)
    _fresh_connections()
    try:
        yield
    finally:
        app.conf.update(previous)
        _fresh_connections()
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _new_cluster(server: DevRedis, s3: DevS3, env: dict[str, str], root: Path, name: str) -> Cluster:
    """A bucket with a model and a template, and a folder for the workers' logs."""
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    _model_and_template(S3Storage(bucket), root)
    (root / "logs").mkdir()
    return Cluster(server, s3, env, bucket, root / "logs")


def _running(
    cluster: Cluster, prefix: str, sheets: int, seed: int, chunk: int, workers: tuple[str, ...]
) -> tuple[str, S3Storage, BatchBook]:
    """A batch of ``sheets`` new sheets under ``prefix`` on new ``workers``, once it is mid-chunk."""
    _sheets(cluster, prefix, sheets, seed)
    for name in workers:
        cluster.start_worker(name)
    batch_id, batch = _enqueue(cluster, prefix, chunk)
    return batch_id, batch, _mid_chunk(batch_id)


def _mid_chunk(batch_id: str) -> BatchBook:
    """The batch's book, once a chunk is running with at least one image done."""
    book = BatchBook(batch_id, connect(wait_s=5))
    _wait_for("a chunk with an image done", lambda: book.leases() and book.counts().done > 0)
    return book


def _model_and_template(store: S3Storage, root: Path) -> None:
    """A small model promoted as ``models/foil@latest``, and ``templates/foil.png``."""
    segmenter = Segmenter(reference_template(), SegmentOptions(angles=parse_range("-3:3:1")))
    ok = aligned_ok_crops(segmenter, 6, seed=99, spec=SPEC)
    model = AnomalyModel.fit(ok, ModelConfig(image_size=128, coreset_ratio=0.1, tta_views=("identity",)))
    publish_model(model.save(root / "model"), store.child("models"), "foil")
    store.put("templates/foil.png", encode_png(reference_template()))


def _fresh_connections() -> None:
    """Make the app's producer connect anew, with the queues now in its configuration (Celery caches
    both on first use)."""
    app._pool = None
    app.__dict__.pop("amqp", None)


def _sheets(cluster: Cluster, prefix: str, count: int, seed: int) -> None:
    store = S3Storage(cluster.bucket, prefix)
    for index in range(count):
        store.put(f"sheet_{index:03d}.png", encode_png(generate_sheet(seed, index, 0.3, SPEC).image))


def _enqueue(cluster: Cluster, prefix: str, chunk: int) -> tuple[str, S3Storage]:
    batch_id = f"f{uuid.uuid4().hex[:10]}"
    bucket = cluster.bucket
    done = enqueue_batch(
        f"s3://{bucket}/{prefix}",
        f"s3://{bucket}/models/foil@latest",
        f"s3://{bucket}/results",
        batch_id,
        chunk,
        template=f"s3://{bucket}/templates/foil.png",
        segment=SegmentOptions(angles=parse_range("-3:3:1")),
    )
    return batch_id, S3Storage(bucket, f"results/{done.batch_id}")


def _wait_success(batch: S3Storage, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not batch.exists("_SUCCESS"):
        assert time.monotonic() < deadline, f"{batch.location} did not finish in {timeout:.0f} s"
        time.sleep(0.5)
    return time.monotonic()


def _wait_for(what: str, condition: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _check_batch(batch: S3Storage) -> dict[str, Verdict]:
    """Exactly one verdict per input (at its item key), nothing else; the summary matches the files."""
    keys = manifest_keys(batch)
    items = batch.child("items")
    objects = {o.key for o in items.objects()}
    verdict_files = {k for k in objects if k.endswith(".json")}
    assert verdict_files == {f"{item_key(k)}.json" for k in keys}
    verdicts = {k: Verdict.model_validate_json(items.get(f"{item_key(k)}.json")) for k in keys}
    summary = json.loads(batch.get("summary.json"))
    assert summary["images"] == len(keys)
    counted: dict[str, int] = {}
    for verdict in verdicts.values():
        counted[verdict.verdict] = counted.get(verdict.verdict, 0) + 1
        for name in [*verdict.outputs.values(), *(i.heatmap for i in verdict.instances if i.heatmap)]:
            assert name in objects, name  # every picture a verdict names exists
    assert counted == summary["verdicts"]
    errors = {printable(k): v.error.code for k, v in verdicts.items() if v.error is not None}
    assert {f["key"]: f["code"] for f in summary["failures"]} == errors
    assert not any(k.endswith(".part") for k in objects)
    return verdicts


def _after_success(batch: S3Storage) -> list[str]:
    """Objects written after ``_SUCCESS``."""

    def modified(key: str) -> float:
        head = batch.client.head_object(Bucket=batch.bucket, Key=f"{batch.prefix}/{key}")
        return float(head["LastModified"].timestamp())

    success = modified("_SUCCESS")
    return [o.key for o in batch.objects() if o.key != "_SUCCESS" and modified(o.key) > success]


def _running_leases(batch_id: str) -> list[object]:
    return BatchBook(batch_id, connect(wait_s=5)).leases()


def test_a_sigkilled_worker_costs_seconds_and_its_late_chunk_writes_nothing(cluster: Cluster) -> None:
    _, batch, book = _running(cluster, "kill/", 12, 41, 4, ("k1", "k2"))
    victim = book.leases()[0].worker.split("@")[0]
    held = book.leases()[0].keys
    cluster.signal_worker(victim, signal.SIGKILL)  # the whole process group, as a node lost
    killed = time.monotonic()
    TIMINGS["sigkill"] = round(_wait_success(batch, 600) - killed, 1)
    verdicts = _check_batch(batch)
    assert all(v.verdict in ("ok", "defect") for v in verdicts.values())
    assert book.leases() == []
    send_chunk(batch.location, held)  # the killed chunk's late redelivery, after the batch finished
    skipped = f"batch {book.batch_id} is finished: a chunk of {len(held)} images skipped"
    _wait_for(  # polled: the worker says it took the chunk and wrote nothing, however fast it is
        "the late chunk to be skipped",
        lambda: any(skipped in log.read_text(errors="replace") for log in cluster.logs.glob("*.log")),
    )
    assert _after_success(batch) == []
    cluster.stop_all()


def test_a_sigterm_mid_chunk_finishes_the_chunk_then_stops(cluster: Cluster) -> None:
    _, batch, book = _running(cluster, "term/", 8, 42, 4, ("t1",))
    held = book.leases()[0].keys
    stopped = time.monotonic()
    cluster.signal_worker("t1", signal.SIGTERM)  # warm shutdown: the running chunk is finished
    assert book.recorded([item_key(k) for k in held]) == {item_key(k) for k in held}
    cluster.start_worker("t2")
    TIMINGS["sigterm"] = round(_wait_success(batch, 600) - stopped, 1)
    _check_batch(batch)
    cluster.stop_all()


def test_a_redis_restart_mid_batch_is_ridden_through_without_a_rerun(cluster: Cluster) -> None:
    _, batch, _ = _running(cluster, "restart/", 12, 43, 3, ("r1", "r2"))
    restarted = time.monotonic()
    cluster.redis.restart(down_s=3.0)
    TIMINGS["redis_restart"] = round(_wait_success(batch, 600) - restarted, 1)
    _check_batch(batch)
    for name in ("r1", "r2"):
        log = (cluster.logs / f"{name}.log").read_text(errors="replace")
        assert "Traceback" not in log or "ConnectionError" not in log.split("Traceback", 1)[1][:2000]
    cluster.stop_all()


def test_an_s3_outage_of_30_s_mid_batch_is_ridden_through(cluster: Cluster) -> None:
    _, batch, _ = _running(cluster, "outage/", 8, 44, 2, ("s1",))
    cluster.s3.stop()
    began = time.monotonic()
    time.sleep(30)
    cluster.s3.start(again=True)
    TIMINGS["s3_outage_30s"] = round(_wait_success(batch, 900) - began, 1)
    _check_batch(batch)
    cluster.stop_all()


def test_a_poison_input_gets_its_own_verdict_and_the_rest_of_its_chunk_goes_on(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input that takes far longer than its chunk's time limit (an 84 MP sheet with short limits; a
    53 MP one finished inside them on a quiet machine):
    the chunk is resumed, the input alone, and then given a ``timeout`` verdict; the batch finishes."""
    _sheets(cluster, "poison/", 5, seed=45)
    big = generate_sheet(46, 0, 0.0, SPEC).image
    S3Storage(cluster.bucket, "poison").put("sheet_002b.png", encode_png(_tile(big, 20, 10)))
    limits = {"DEFECTSCAN_CHUNK_BASE_S": "10", "DEFECTSCAN_IMAGE_S": "1"}  # where chunks are sent
    for name, value in limits.items():
        monkeypatch.setenv(name, value)
    cluster.start_worker("p1", **limits)
    _, batch = _enqueue(cluster, "poison/", 6)
    began = time.monotonic()
    TIMINGS["poison_batch"] = round(_wait_success(batch, 600) - began, 1)
    verdicts = _check_batch(batch)
    assert verdicts["sheet_002b.png"].error is not None
    assert verdicts["sheet_002b.png"].error.code == "timeout"
    assert all(v.verdict in ("ok", "defect") for k, v in verdicts.items() if k != "sheet_002b.png")
    cluster.stop_all()


def _tile(image: object, rows: int, cols: int) -> object:
    import numpy as np

    return np.tile(image, (rows, cols, 1))


def test_a_batch_of_awkward_inputs_finishes_with_their_codes(cluster: Cluster) -> None:
    cases = [c for c in corpus() if not c.local_only]
    store = S3Storage(cluster.bucket, "awkward")
    for case in cases:
        store.put(case.name, case.data)
    # folder markers, as S3 consoles create them: not inputs
    for marker in ("awkward/line1/", "awkward/line1.png/"):
        store.client.put_object(Bucket=cluster.bucket, Key=marker, Body=b"")
    cluster.start_worker("a1")
    _, batch = _enqueue(cluster, "awkward/", 8)
    began = time.monotonic()
    TIMINGS["awkward_batch"] = round(_wait_success(batch, 600) - began, 1)
    verdicts = _check_batch(batch)
    listed = {o.key for o in store.objects()}
    # SeaweedFS stores a backslash in a key as a slash (its own rule): take the key it lists
    stored = {c.name: c.name if c.name in listed else c.name.replace("\\", "/") for c in cases}
    assert sorted(verdicts) == sorted(stored.values())
    for case in cases:
        verdict = verdicts[stored[case.name]]
        if case.expect == VALID:
            assert verdict.verdict in ("ok", "defect") and len(verdict.instances) == 2, case.name
        else:
            assert verdict.error is not None and verdict.error.code == case.expect, case.name
    cluster.stop_all()
