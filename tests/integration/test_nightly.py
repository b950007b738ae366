"""Nightly runs: beat's schedule, and the task that enqueues yesterday's prefix as a day-named batch."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis
from celery.schedules import crontab
from click.testing import CliRunner

from defectscan.pipeline.images import encode_png
from defectscan.pipeline.synth import reference_template
from defectscan.pipeline.verdict import ImageInfo, ModelInfo, Verdict
from defectscan.producer.cli import cli
from defectscan.producer.nightly import Nightly, beat_schedule, enqueue_nightly
from defectscan.worker.app import app
from defectscan.worker.batches import PREFIX
from tests.stand_in import stand_in_model


def test_the_schedule_fires_daily_at_the_hour_given() -> None:
    entry = beat_schedule(Nightly(inputs="s3://b/n/", model="m", out="o", at="03:15"))["defectscan-nightly"]
    assert entry["schedule"] == crontab(hour=3, minute=15) and entry["options"] == {"queue": "schedule"}
    with pytest.raises(ValueError):
        Nightly(inputs="i", model="m", out="o", at="25:00").crontab()


def test_the_nightly_task_enqueues_yesterdays_prefix_once(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEFECTSCAN_BROKER_URL", redis_url)
    app.conf.update(broker_url=redis_url)
    queue = f"nightly-test-{uuid.uuid4().hex[:8]}"  # our own queue: its messages are ours to drop
    for day in ("2026-11-27", "2026-11-28"):
        (tmp_path / "in" / day).mkdir(parents=True)
        (tmp_path / "in" / day / "a.png").write_bytes(encode_png(reference_template()))
    model = tmp_path / "model"
    stand_in_model(model)
    job = Nightly(
        inputs=str(tmp_path / "in"), model=str(model), out=str(tmp_path / "out"), queue=queue
    ).model_dump()
    client = redis.Redis.from_url(redis_url)
    try:
        assert enqueue_nightly(job, today="2026-11-29") == "nightly-2026-11-28"
        batch = json.loads((tmp_path / "out" / "nightly-2026-11-28" / "batch.json").read_text())
        assert batch["inputs"] == str(tmp_path / "in" / "2026-11-28") and batch["images"] == 1
        assert client.llen(queue) == 1
        verdict = Verdict(image=ImageInfo(key="a.png"), model=ModelInfo(method="patchcore"), verdict="ok")
        (tmp_path / "out" / "nightly-2026-11-28" / "items").mkdir()
        (tmp_path / "out" / "nightly-2026-11-28" / "items" / "a.png.json").write_bytes(verdict.to_json())
        enqueue_nightly(job, today="2026-11-29")  # a second tick: the same batch, no image sent again
        sent = [json.loads(m)["headers"]["task"] for m in client.lrange(queue, 0, -1)]
        assert sorted(sent) == ["defectscan.finalize_batch", "defectscan.inspect_chunk"]  # all done: finalize
        client.delete(*client.scan_iter(f"{PREFIX}nightly-2026-11-28:*"))  # as if the broker's keys expired
        args = ["status", "nightly-2026-11-28", "--json"]
        assert CliRunner().invoke(cli, args).exit_code != 0  # the broker alone no longer knows it
        counted = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "out")])
        expected = {"batch": "nightly-2026-11-28", "state": "running", "total": 1}
        counts = {"done": 1, "failed": 0, "pending": 0, "chunks": 0, "stalled_chunks": 0, "chunk_list": []}
        assert json.loads(counted.stdout) == expected | counts
    finally:
        ours = [
            *client.scan_iter(f"{PREFIX}nightly-2026-11-28:*"),
            *client.scan_iter(f"_kombu.binding*.{queue}"),
        ]
        client.delete(queue, *ours)
