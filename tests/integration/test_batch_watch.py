"""What a platform engineer sees of a batch in trouble: stalled chunks in ``status``, ``wait``'s distinct
exit for a stalled batch and its patience with a broker that is away, ``enqueue`` leaving work held by a
running chunk alone, and the watchdog's take-over of a dead chunk (all against a real Redis-compatible
server)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from defectscan.pipeline.images import encode_png
from defectscan.pipeline.synth import reference_template
from defectscan.pipeline.verdict import ImageInfo, ModelInfo, Verdict
from defectscan.producer import batch_cli
from defectscan.producer.cli import cli
from defectscan.producer.enqueue import enqueue_batch
from defectscan.worker.app import app
from defectscan.worker.batch_spec import BatchSpec
from defectscan.worker.batches import BatchBook, Lease, connect, server_time
from defectscan.worker.chunk_watch import sweep
from defectscan.worker.chunks import ChunkTimeoutError, resume
from defectscan.worker.dev_redis import DevRedis, free_port
from defectscan.worker.storage import LocalStorage
from defectscan.worker.tasks import finalize_batch
from tests.stand_in import stand_in_model


@pytest.fixture
def book(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchBook]:
    monkeypatch.setenv("DEFECTSCAN_BROKER_URL", redis_url)
    app.conf.update(broker_url=redis_url)
    made = BatchBook(f"w{uuid.uuid4().hex[:10]}", connect(redis_url, wait_s=2))
    yield made
    made.forget()


def _lease(book: BatchBook, task_id: str, keys: list[str], beat_age_s: float) -> Lease:
    """A lease as a running chunk holds it, whose last heartbeat was ``beat_age_s`` seconds ago."""
    now = server_time(book.client)
    lease = Lease(task_id, keys, "w9@node", "inference", now - 30, now - beat_age_s, 20.0, "/nowhere", 0)
    book.client.hset(f"defectscan:batch:{book.batch_id}:chunks", task_id, lease.dump())
    book.client.sadd("defectscan:running-batches", book.batch_id)
    return lease


def test_status_shows_a_chunk_whose_worker_stopped_beating(book: BatchBook) -> None:
    book.start(4)
    book.record({"a.png": "ok"})
    _lease(book, "t-live", ["b.png"], beat_age_s=1)
    _lease(book, "t-dead", ["c.png", "d.png"], beat_age_s=300)
    shown = CliRunner().invoke(cli, ["status", book.batch_id, "--json"])
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.stdout)
    assert (row["pending"], row["chunks"], row["stalled_chunks"]) == (3, 2, 2)  # overdue and dead
    states = {c["images"]: c["state"] for c in row["chunk_list"]}
    assert states == {1: "overdue", 2: "dead"}  # both started 30 s ago with a 20 s limit
    text = CliRunner().invoke(cli, ["status", book.batch_id]).stdout
    assert "dead" in text and "w9@node" in text and "last heartbeat 300" in text


def test_wait_exits_4_for_a_stalled_batch_and_keeps_waiting_while_a_chunk_runs(book: BatchBook) -> None:
    book.start(2)
    _lease(book, "t-live", ["a.png"], beat_age_s=0)
    args = ["wait", book.batch_id, "--interval", "0.2", "--stalled-after", "1", "--timeout", "3"]
    running = CliRunner().invoke(cli, args)
    assert running.exit_code == batch_cli.EXIT_TIMEOUT  # a live chunk: not stalled, just not done
    book.release("t-live")
    stalled = CliRunner().invoke(cli, args)
    assert stalled.exit_code == batch_cli.EXIT_STALLED
    assert "stalled" in stalled.output and f"--batch-id {book.batch_id}" in stalled.output


def test_a_batch_of_no_image_is_known_and_finishes(book: BatchBook) -> None:
    """A night the line did not run is a batch of none: known, and finished once its summary is written
    (not an unknown id, nor a batch that never finishes)."""
    book.start(0)
    running = CliRunner().invoke(cli, ["status", book.batch_id, "--json"])
    assert running.exit_code == 0 and json.loads(running.stdout)["state"] == "running"
    book.mark_finalized()
    done = CliRunner().invoke(cli, ["wait", book.batch_id, "--interval", "0.2", "--timeout", "10"])
    assert done.exit_code == 0 and "0 done, 0 failed, of 0" in done.stdout
    shown = CliRunner().invoke(cli, ["status", book.batch_id, "--json"])
    assert json.loads(shown.stdout)["state"] == "finished"


def test_wait_and_status_ride_out_a_broker_that_is_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = DevRedis(tmp_path / "redis", port=free_port())
    monkeypatch.setenv("DEFECTSCAN_BROKER_URL", server.url(0))
    monkeypatch.setattr(batch_cli, "FIRST_CONTACT_S", 1.0)
    away = CliRunner().invoke(cli, ["status", "b1"])
    assert away.exit_code == 6 and "unavailable" in away.output
    assert not isinstance(away.exception, redis.exceptions.RedisError)  # a message, not a traceback
    waited = CliRunner().invoke(cli, ["wait", "b1", "--interval", "0.2", "--timeout", "2"])
    assert waited.exit_code == batch_cli.EXIT_TIMEOUT and "waiting for it" in waited.output
    server.start()
    try:
        book = BatchBook("b1", connect(server.url(0)))
        book.start(1)
        book.record({"a.png": "ok"})
        book.mark_finalized()
        done = CliRunner().invoke(cli, ["wait", "b1", "--interval", "0.2", "--timeout", "10"])
        assert done.exit_code == 0 and "finished" in done.output
    finally:
        server.stop()


def test_enqueue_again_leaves_images_held_by_a_running_chunk(book: BatchBook, tmp_path: Path) -> None:
    queue = f"watch-test-{uuid.uuid4().hex[:8]}"
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(encode_png(reference_template()))
    model = tmp_path / "model"
    stand_in_model(model)
    args = (str(tmp_path / "in"), str(model), str(tmp_path / "out"), book.batch_id)
    first = enqueue_batch(*args, chunk=3, queue=queue, book_factory=lambda _: book)
    assert (first.sent_images, first.held_images) == (3, 0)
    _lease(book, "t-live", ["a.png", "b.png"], beat_age_s=0)
    again = enqueue_batch(*args, chunk=3, queue=queue, book_factory=lambda _: book)
    assert (again.sent_images, again.held_images) == (1, 2)
    client = redis.Redis.from_url(app.conf.broker_url)
    sent = [json.loads(m)["headers"]["argsrepr"] for m in client.lrange(queue, 0, -1)]
    client.delete(queue)
    assert len(sent) == 2 and "'c.png'" in sent[0] and "'a.png'" not in sent[0]  # the rerun sent c alone


def test_the_watchdog_takes_a_dead_chunk_over_once(book: BatchBook) -> None:
    book.start(3)
    book.record({"a.png": "ok"})
    dead = _lease(book, "t-dead", ["a.png", "b.png", "c.png"], beat_age_s=300)
    _lease(book, "t-live", ["x.png"], beat_age_s=0)
    resumed: list[tuple[str, str]] = []
    taken = sweep(book.client, lambda lease, batch: resumed.append((lease.task_id, batch)))
    assert taken >= 1 and (dead.task_id, book.batch_id) in resumed
    assert ("t-live", book.batch_id) not in resumed
    assert [lease.task_id for lease in book.leases()] == ["t-live"]
    again: list[tuple[str, str]] = []
    sweep(book.client, lambda lease, batch: again.append((lease.task_id, batch)))
    assert (dead.task_id, book.batch_id) not in again  # taken over exactly once


def test_resume_sends_again_what_a_chunk_left_except_what_another_live_chunk_holds(book: BatchBook) -> None:
    book.start(4)
    book.record({"a.png": "ok"})
    queue = f"resume-test-{uuid.uuid4().hex[:8]}"
    now = server_time(book.client)
    own = Lease("t-own", ["a.png", "b.png", "c.png", "d.png"], "w1@n", queue, now, now, 20.0, "/batch", 0)
    book.hold(own)  # still held, as when the chunk itself resumes after its time limit
    _lease(book, "t-other", ["d.png"], beat_age_s=0)
    resume(own, book.batch_id, ChunkTimeoutError)
    client = redis.Redis.from_url(app.conf.broker_url)
    sent = [json.loads(m) for m in client.lrange(queue, 0, -1)]
    client.delete(queue)
    assert len(sent) == 1
    body = json.loads(base64.b64decode(sent[0]["body"]))
    assert body[0] == ["/batch", ["b.png", "c.png"]] and body[1] == {"attempt": 1}


def test_finalize_gives_a_lost_verdict_its_own_error_and_finishes(book: BatchBook, tmp_path: Path) -> None:
    location = tmp_path / "batch"
    store = LocalStorage(location)
    spec = BatchSpec(
        batch_id=book.batch_id,
        inputs=str(tmp_path / "in"),
        out=str(tmp_path),
        model=str(tmp_path / "model"),
        model_version="v1",
        created_at="2026-12-01T00:00:00Z",
    )
    store.put("batch.json", spec.to_json())
    keys = ["a.png", "b.png", "c.png"]
    store.put("manifest.jsonl", "".join(json.dumps({"key": k}) + "\n" for k in keys).encode())
    ok = Verdict(image=ImageInfo(key="a.png"), model=ModelInfo(method="patchcore"), verdict="ok")
    store.put("items/a.png.json", ok.to_json())
    store.put("items/c.png.json", b"{ not json")  # corrupted after it was recorded; b.png deleted
    book.start(3)
    book.record(dict.fromkeys(keys, "ok"))
    assert book.claim_finalize()
    finalize_batch(str(location))
    summary = json.loads(store.get("summary.json"))
    assert summary["images"] == 3 and summary["verdicts"] == {"ok": 1, "error": 2}
    assert {f["key"]: f["code"] for f in summary["failures"]} == {
        "b.png": "verdict_lost",
        "c.png": "verdict_lost",
    }
    assert Verdict.model_validate_json(store.get("items/b.png.json")).error is not None
    assert store.exists("_SUCCESS") and book.finalized()
