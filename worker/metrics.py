"""Prometheus metrics of the workers (``prometheus_client``), served by each worker on ``/metrics``.

With ``DEFECTSCAN_METRICS_PORT`` set, a worker serves its metrics on that port from its first task on.
For the solo pool (one process per GPU, as deployed) that process's registry is the answer; with the
prefork pool set ``PROMETHEUS_MULTIPROC_DIR`` too (an empty folder per worker) and every process's
numbers are aggregated (``prometheus_client``'s multiprocess mode).

* ``defectscan_images_total{verdict}``: images inspected, by verdict (ok, defect, error).
* ``defectscan_defects_total{type,level}``: graded defects, by type and level.
* ``defectscan_stage_seconds{stage}``: time per image in each stage (decode, segment, score, grade,
  render), a histogram.
* ``defectscan_chunk_seconds``: time per chunk, fetch and write included, a histogram.
* ``defectscan_queue_depth{queue}``: messages waiting in each queue (``LLEN`` at scrape time; with a
  Redis broker: RabbitMQ's own metrics give its queues' depths).

Flower (``celery flower``, in the compose file) adds Celery's own task counts and runtimes on its
``/metrics``; these are the numbers Flower cannot know.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from defectscan.pipeline.verdict import Verdict
from defectscan.worker.app import REDIS_SCHEMES, broker_url
from defectscan.worker.batches import connect
from defectscan.worker.settings import settings

STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CHUNK_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

IMAGES = Counter("defectscan_images", "Images inspected, by verdict.", ["verdict"])
DEFECTS = Counter("defectscan_defects", "Graded defects, by type and level.", ["type", "level"])
STAGE_SECONDS = Histogram(
    "defectscan_stage_seconds", "Seconds per image in each stage.", ["stage"], buckets=STAGE_BUCKETS
)
CHUNK_SECONDS = Histogram("defectscan_chunk_seconds", "Seconds per chunk.", buckets=CHUNK_BUCKETS)


def observe(verdict: Verdict) -> None:
    """Count one image's verdict, defects and stage timings."""
    IMAGES.labels(verdict=verdict.verdict).inc()
    for instance in verdict.instances:
        for defect in instance.defects:
            DEFECTS.labels(type=defect.type, level=defect.level).inc()
    for stage, ms in verdict.timings_ms.items():
        STAGE_SECONDS.labels(stage=stage).observe(ms / 1000.0)


class QueueDepth(Collector):
    """``defectscan_queue_depth``: the length of each queue's Redis list, read when scraped."""

    def __init__(self, client: Any, queues: Iterable[str]) -> None:
        self.client = client
        self.queues = tuple(queues)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("defectscan_queue_depth", "Messages waiting, per queue.", labels=["queue"])
        for queue in self.queues:
            try:
                gauge.add_metric([queue], float(self.client.llen(queue)))
            except Exception:  # an unreachable broker: no sample rather than a failed scrape
                continue
        yield gauge


@lru_cache(maxsize=1)
def serve(queues: tuple[str, ...] = ("inference", "retrain")) -> int | None:
    """Start the metrics server once per process if ``DEFECTSCAN_METRICS_PORT`` is set; its port."""
    port = settings().metrics_port
    if not port:
        return None
    registry: CollectorRegistry | None = None
    if settings().prometheus_multiproc_dir:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    target = registry if registry is not None else _default_registry()
    if broker_url().startswith(REDIS_SCHEMES):  # RabbitMQ reports its own queue depths
        target.register(QueueDepth(connect(), queues))
    start_http_server(int(port), registry=target)
    return int(port)


def _default_registry() -> CollectorRegistry:
    from prometheus_client import REGISTRY

    return REGISTRY
