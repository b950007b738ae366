"""The Celery app: JSON only, late acks, one task at a time per process, and time limits that nest.

Configuration comes from the environment, so a worker node needs only variables:

* ``DEFECTSCAN_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``) and ``DEFECTSCAN_RESULT_BACKEND``
  (default: the broker). Batch bookkeeping (:mod:`worker.batches`) lives in the broker's Redis.
* ``DEFECTSCAN_SOFT_TIME_LIMIT`` (default 1500 s) and ``DEFECTSCAN_TIME_LIMIT`` (default 1800 s) per task;
  the broker's ``visibility_timeout`` is set 10 minutes above the hard limit, so Redis never redelivers a
  task that is still running (``acks_late``: a task is acknowledged when it has finished, and a worker
  that dies mid-task has its task redelivered, ``task_reject_on_worker_lost``).

Tasks are routed by name: ``defectscan.inspect_chunk`` and ``defectscan.finalize_batch`` to the
``inference`` queue, ``defectscan.retrain`` to ``retrain``, and the nightly enqueue to ``schedule``,
which only the ``defectscan beat`` process consumes.
"""

from __future__ import annotations

import os

from celery import Celery

INFERENCE_QUEUE, RETRAIN_QUEUE = "inference", "retrain"


def broker_url() -> str:
    return os.environ.get("DEFECTSCAN_BROKER_URL", "redis://127.0.0.1:6379/0")


def make_app() -> Celery:
    soft = int(os.environ.get("DEFECTSCAN_SOFT_TIME_LIMIT", "1500"))
    hard = int(os.environ.get("DEFECTSCAN_TIME_LIMIT", "1800"))
    if not 0 < soft < hard:
        raise ValueError(f"DEFECTSCAN_SOFT_TIME_LIMIT ({soft}) must be below DEFECTSCAN_TIME_LIMIT ({hard})")
    broker = broker_url()
    celery = Celery("defectscan", include=["worker.tasks", "worker.retrain"])
    celery.conf.update(
        broker_url=broker,
        result_backend=os.environ.get("DEFECTSCAN_RESULT_BACKEND", broker),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=soft,
        task_time_limit=hard,
        broker_transport_options={"visibility_timeout": hard + 600},
        result_backend_transport_options={"visibility_timeout": hard + 600},
        result_expires=7 * 24 * 3600,
        task_default_queue=INFERENCE_QUEUE,
        task_routes={
            "defectscan.inspect_chunk": {"queue": INFERENCE_QUEUE},
            "defectscan.finalize_batch": {"queue": INFERENCE_QUEUE},
            "defectscan.retrain": {"queue": RETRAIN_QUEUE},
            "defectscan.enqueue_nightly": {"queue": "schedule"},  # the beat process (producer/nightly.py)
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_track_started=True,
    )
    return celery


app = make_app()
