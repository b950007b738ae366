"""Nightly runs: a Celery beat schedule that enqueues the previous day's prefix (``defectscan beat``).

``defectscan beat --inputs s3://bucket/nightly/ --model ... --out ... --at 02:30`` runs one small
process: Celery beat with an embedded worker on its own ``schedule`` queue. At ``--at`` (UTC) beat sends
``defectscan.enqueue_nightly``, and that task enqueues ``<inputs>/<yesterday, YYYY-MM-DD>/`` as the batch
``nightly-<yesterday>``. The batch id is derived from the day, so a repeated tick (a restart, a second
beat by mistake) is a rerun of the same batch: it enqueues only images without a verdict.

The inference workers never import this module: the task runs in the beat process, which only lists
and enqueues. The same job from cron, without beat::

    30 2 * * *  defectscan enqueue s3://bucket/nightly/$(date -u -d yesterday +\\%F)/ \\
                  --model s3://bucket/models/foil@latest --out s3://bucket/results/ \\
                  --batch-id nightly-$(date -u -d yesterday +\\%F)
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

from celery.schedules import crontab
from pydantic import BaseModel

from defectscan.producer.enqueue import enqueue_batch
from defectscan.worker.app import SCHEDULE_QUEUE, app
from defectscan.worker.settings import settings

ENV = "DEFECTSCAN_NIGHTLY"


class Nightly(BaseModel):
    inputs: str
    model: str
    out: str
    template: str | None = None
    product: str | None = None
    chunk: int = 16
    queue: str | None = None  # default: the inference queue
    at: str = "02:30"  # UTC, HH:MM

    def crontab(self) -> crontab:
        hour, _, minute = self.at.partition(":")
        if not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
            raise ValueError(f"--at {self.at!r} is not HH:MM")
        return crontab(hour=int(hour), minute=int(minute))


def day_prefix(inputs: str, today: date) -> tuple[str, str]:
    """``(location of yesterday's prefix, its batch id)``.

    Example:
        >>> day_prefix("s3://b/nightly/", date(2026, 11, 29))
        ('s3://b/nightly/2026-11-28/', 'nightly-2026-11-28')
    """
    day = (today - timedelta(days=1)).isoformat()
    return f"{inputs.rstrip('/')}/{day}/", f"nightly-{day}"


@app.task(name="defectscan.enqueue_nightly", ignore_result=True)
def enqueue_nightly(job: dict[str, Any], today: str | None = None) -> str:
    nightly = Nightly.model_validate(job)
    prefix, batch_id = day_prefix(
        nightly.inputs, date.fromisoformat(today) if today else datetime.now(UTC).date()
    )
    enqueue_batch(
        prefix,
        nightly.model,
        nightly.out,
        batch_id,
        nightly.chunk,
        nightly.template,
        nightly.product,
        queue=nightly.queue,
    )
    return batch_id


def beat_schedule(nightly: Nightly) -> dict[str, Any]:
    return {
        "defectscan-nightly": {
            "task": "defectscan.enqueue_nightly",
            "schedule": nightly.crontab(),
            "args": [nightly.model_dump()],
            "options": {"queue": SCHEDULE_QUEUE},
        }
    }


def beat_argv(schedule_file: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "defectscan.producer.nightly:app", "worker", "--beat",
        f"--queues={SCHEDULE_QUEUE}", "--pool=solo", "--concurrency=1", f"--schedule={schedule_file}",
        "--hostname=beat@%h", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


if settings().nightly:  # the beat process: its schedule comes from `defectscan beat`
    app.conf.update(
        beat_schedule=beat_schedule(Nightly.model_validate(json.loads(settings().nightly or "{}"))),
        timezone="UTC",
    )
