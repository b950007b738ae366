"""``defectscan local-cluster DIR``: the distributed path on one machine, for trying it.

It starts an embedded Redis-compatible broker (:mod:`worker.dev_redis`), an embedded S3 store
(:mod:`worker.dev_s3`, with a bucket) and one inference worker (a real ``celery worker`` subprocess),
each with its files under ``DIR``, then writes ``DIR/cluster.env`` (mode 0600: it holds the generated
S3 key pair) with the environment the other commands need, and prints how to use it, never the secret.
On Ctrl-C (or SIGTERM), or when a process it started dies, it stops them all, the worker first, each
by its PID's process group.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import click

from defectscan.producer.batch_cli import worker_argv
from defectscan.producer.console import err
from defectscan.worker.app import INFERENCE_QUEUE, RETRAIN_QUEUE
from defectscan.worker.dev_redis import DevRedis
from defectscan.worker.dev_s3 import DevS3
from defectscan.worker.processes import stop_group, until_interrupted

ENV_FILE = "cluster.env"


@click.command(name="local-cluster")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--bucket", default="defectscan", show_default=True, help="The bucket to create.")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1), help="Worker processes.")
def local_cluster(directory: Path, bucket: str, concurrency: int) -> None:
    """Run a broker, an S3 store and one worker on this machine until interrupted; DIR/cluster.env
    holds the environment for enqueue, status, wait and the registry commands (`source` it)."""
    directory = directory.resolve()  # the servers and the worker do not run where we do
    directory.mkdir(parents=True, exist_ok=True)
    broker = DevRedis(directory / "broker")
    store = DevS3(directory / "s3")
    worker: subprocess.Popen[bytes] | None = None
    try:
        env = {"DEFECTSCAN_BROKER_URL": broker.start()}
        env |= store.start(buckets=(bucket,)).env()
        env["DEFECTSCAN_REGISTRY"] = f"s3://{bucket}/models"
        log = (directory / "worker.log").open("ab")
        queues = f"{INFERENCE_QUEUE},{RETRAIN_QUEUE}"
        worker = subprocess.Popen(
            worker_argv(queues, concurrency, "info", "local@%h", "prefork"),
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        env_file = directory / ENV_FILE
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        err.print(
            f"broker {env['DEFECTSCAN_BROKER_URL']}, S3 {env['AWS_ENDPOINT_URL']} (bucket {bucket}), "
            f"worker pid {worker.pid} (log {directory / 'worker.log'}); in another shell: "
            f"source {env_file}; Ctrl-C stops them all",
            highlight=False,
        )
        if not until_interrupted([worker, broker.process, store.process]):
            err.print("a process of the cluster stopped; stopping the others", highlight=False)
    finally:
        if worker is not None:
            stop_group(worker, timeout=30)
        store.stop()
        broker.stop()
        (directory / ENV_FILE).unlink(missing_ok=True)
    err.print("stopped", highlight=False)
