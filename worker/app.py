"""The Celery app: JSON only, late acks, one task at a time per process, and time limits that nest.

Configuration comes from the environment, so a worker node needs only variables:

* ``DEFECTSCAN_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``) and ``DEFECTSCAN_RESULT_BACKEND``
  (default: the broker). Batch bookkeeping (:mod:`worker.batches`) lives in the broker's Redis.
* ``DEFECTSCAN_REDIS_URL``: the Redis that keeps batch bookkeeping (:mod:`worker.batches`); by default
  the broker's URL when the broker is Redis. With RabbitMQ as the broker it must be set.
* Time limits are set per chunk from its size (:func:`chunk_limits`): a soft limit of
  ``DEFECTSCAN_CHUNK_BASE_S`` (default 120 s, model loading) plus ``DEFECTSCAN_IMAGE_S`` (default 60 s)
  per image, capped at ``DEFECTSCAN_SOFT_TIME_LIMIT`` (default 1500 s); the hard limit 60 s later, at
  most ``DEFECTSCAN_TIME_LIMIT`` (default 1800 s). Redis's ``visibility_timeout`` is 10 minutes above the
  largest hard limit, so Redis never redelivers a task that is still running (``acks_late``: a task is
  acknowledged when it has finished). A worker that dies mid-chunk is not waited for that long: its
  chunk's lease stops beating and another worker re-sends the rest of the chunk within about a minute
  (:mod:`worker.chunk_watch`).

**Brokers.** Redis (``redis://``) or RabbitMQ (``amqp://``). With RabbitMQ every queue is a *quorum*
queue (replicated, durable) on a topic exchange, so retries' countdowns use Celery's native delayed
delivery, and a chunk whose worker's connection drops is redelivered at once; RabbitMQ's
``consumer_timeout`` (30 minutes by default) must stay above ``DEFECTSCAN_TIME_LIMIT``. The batch
bookkeeping stays in Redis (``DEFECTSCAN_REDIS_URL``).

Tasks are routed by name: ``defectscan.inspect_chunk`` and ``defectscan.finalize_batch`` to the
``inference`` queue, ``defectscan.retrain`` to ``retrain``, and the nightly enqueue to ``schedule``,
which only the ``defectscan beat`` process consumes.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from defectscan.worker.settings import settings

INFERENCE_QUEUE, RETRAIN_QUEUE, SCHEDULE_QUEUE = "inference", "retrain", "schedule"


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def broker_url() -> str:
    return settings().broker_url


def bookkeeping_url() -> str:
    """The Redis of the batch bookkeeping: ``DEFECTSCAN_REDIS_URL``, else the broker when it is Redis."""
    explicit = settings().redis_url
    if explicit:
        return explicit
    broker = broker_url()
    if broker.startswith(REDIS_SCHEMES):
        return broker
    raise ValueError("with a broker that is not Redis, set DEFECTSCAN_REDIS_URL for the batch bookkeeping")


def _limits() -> tuple[int, int]:
    current = settings()
    return current.soft_time_limit, current.time_limit


def chunk_limits(images: int) -> tuple[int, int]:
    """``(soft, hard)`` time limits in seconds for a chunk of ``images`` images."""
    soft_cap, hard_cap = _limits()
    base, per_image = settings().chunk_base_s, settings().image_s
    soft = min(int(base + per_image * max(images, 1)), soft_cap)
    return soft, min(soft + 60, hard_cap)


def make_app() -> Celery:
    soft, hard = _limits()
    broker = broker_url()
    celery = Celery("defectscan", include=["defectscan.worker.tasks", "defectscan.worker.retrain"])
    celery.conf.update(
        broker_url=broker,
        result_backend=settings().result_backend or _result_backend(broker),
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
            "defectscan.enqueue_nightly": {"queue": SCHEDULE_QUEUE},  # the beat process (producer/nightly.py)
        },
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,  # a broker restart is waited for, however long
        worker_cancel_long_running_tasks_on_connection_loss=False,  # they are idempotent: let them finish
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_track_started=True,
    )
    celery.conf.update(broker_settings(broker))
    return celery


def broker_settings(broker: str) -> dict[str, object]:
    """The settings that depend on the broker: with RabbitMQ, quorum queues on topic exchanges."""
    if not broker.startswith(("amqp://", "amqps://", "pyamqp://")):
        return {"broker_url": broker}
    queues = [
        Queue(
            name, Exchange(name, type="topic"), routing_key=name, queue_arguments={"x-queue-type": "quorum"}
        )
        for name in (INFERENCE_QUEUE, RETRAIN_QUEUE, SCHEDULE_QUEUE)
    ]
    return {
        "broker_url": broker,
        "task_queues": queues,
        "task_default_queue_type": "quorum",
        "task_default_exchange_type": "topic",
        "worker_detect_quorum_queues": True,
    }


def _result_backend(broker: str) -> str:
    """Results (only retrain requests keep any) go to the broker when it is Redis, else bookkeeping's."""
    if broker.startswith(REDIS_SCHEMES):
        return broker
    try:
        return bookkeeping_url()
    except ValueError:
        return "rpc://"


app = make_app()


def send_chunk(location: str, keys: list[str], attempt: int = 0, queue: str | None = None) -> None:
    """One ``defectscan.inspect_chunk`` task, with time limits set from its size."""
    soft, hard = chunk_limits(len(keys))
    app.send_task(
        "defectscan.inspect_chunk",
        args=[location, keys],
        kwargs={"attempt": attempt} if attempt else {},
        queue=queue,
        soft_time_limit=soft,
        time_limit=hard,
    )
