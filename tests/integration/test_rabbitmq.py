"""RabbitMQ as the broker (quorum queues), Redis keeping the bookkeeping: a batch runs on two workers,
and a worker SIGKILLed mid-chunk has its chunk redelivered by RabbitMQ as soon as its connection drops
(the watchdog is slowed down here, so the recovery is the broker's)."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from defectscan.pipeline.segment import SegmentOptions, parse_range
from defectscan.producer.enqueue import enqueue_batch
from defectscan.worker.app import broker_settings
from defectscan.worker.dev_rabbitmq import DevRabbitMQ, server_script
from defectscan.worker.dev_redis import DevRedis
from defectscan.worker.dev_s3 import DevS3
from defectscan.worker.storage import S3Storage
from tests.integration.test_faults import (
    Cluster,
    _check_batch,
    _mid_chunk,
    _new_cluster,
    _sheets,
    _wait_success,
    pointed_at,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        server_script() is None, reason="RabbitMQ is not installed (apt-get install rabbitmq-server)"
    ),
]


@pytest.fixture(scope="module")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("rabbit")
    mq, server, s3 = DevRabbitMQ(root / "mq"), DevRedis(root / "redis"), DevS3(root / "s3")
    mq.start()
    server.start()
    creds = s3.start()
    env = {
        **creds.env(),
        "DEFECTSCAN_BROKER_URL": mq.url(),
        "DEFECTSCAN_REDIS_URL": server.url(0),
        "DEFECTSCAN_CACHE": str(root / "cache"),
        "DEFECTSCAN_DEAD_AFTER_S": "600",  # the watchdog stays out of it: recovery is the broker's
        "HF_HUB_OFFLINE": "1",
    }
    with pointed_at(env, broker_settings(mq.url())):
        made = _new_cluster(server, s3, env, root, "rabbit")
        try:
            yield made
        finally:
            made.stop_all()
    s3.stop()
    server.stop()
    mq.stop()


def test_a_batch_on_rabbitmq_survives_a_sigkilled_worker(rabbit_cluster: Cluster) -> None:
    cluster = rabbit_cluster
    _sheets(cluster, "mq/", 10, seed=51)
    cluster.start_worker("m1", DEFECTSCAN_DEAD_AFTER_S="600")
    cluster.start_worker("m2", DEFECTSCAN_DEAD_AFTER_S="600")
    batch_id = f"mq{uuid.uuid4().hex[:8]}"
    done = enqueue_batch(
        f"s3://{cluster.bucket}/mq/",
        f"s3://{cluster.bucket}/models/foil@latest",
        f"s3://{cluster.bucket}/results",
        batch_id,
        3,
        template=f"s3://{cluster.bucket}/templates/foil.png",
        segment=SegmentOptions(angles=parse_range("-3:3:1")),
    )
    batch = S3Storage(cluster.bucket, f"results/{done.batch_id}")
    book = _mid_chunk(batch_id)
    victim = book.leases()[0].worker.split("@")[0]
    cluster.signal_worker(victim, signal.SIGKILL)
    killed = time.monotonic()
    seconds = _wait_success(batch, 300) - killed
    print(f"\nRabbitMQ: SIGKILL of a worker mid-chunk to _SUCCESS in {seconds:.1f} s")
    assert seconds < 120  # far below the watchdog's 600 s here: the broker redelivered it
    verdicts = _check_batch(batch)
    assert all(v.verdict in ("ok", "defect") for v in verdicts.values())
    cluster.stop_all()
