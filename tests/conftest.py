"""Shared fixtures. Every test runs offline: sockets may reach loopback addresses only."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from defectscan.pipeline.images import encode_png
from defectscan.pipeline.synth import Sheet, generate_sheet, reference_template, render_instance
from defectscan.producer.batch_cli import worker_argv
from defectscan.worker.app import app
from defectscan.worker.dev_redis import DevRedis
from defectscan.worker.dev_s3 import DevS3

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Before worker.app reads it: a port nothing listens on, until the `env` fixture points everything at
# the tests' own server. Nothing here connects to a Redis the machine happens to run.
os.environ["DEFECTSCAN_BROKER_URL"] = "redis://127.0.0.1:9/0"
os.environ["DEFECTSCAN_REDIS_WAIT_S"] = "20"
for _name in ("DEFECTSCAN_RESULT_BACKEND", "DEFECTSCAN_REDIS_URL"):
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any connection that would leave this machine; tests must need no network."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None:
            try:
                loopback = ipaddress.ip_address(socket.gethostbyname(str(host))).is_loopback
            except (OSError, ValueError):
                loopback = False
            if not loopback:
                raise ConnectionRefusedError(f"tests may not reach the network ({address!r})")
        real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def template() -> np.ndarray:
    return reference_template()


@pytest.fixture(scope="session")
def sheets() -> list[Sheet]:
    """A few jittered sheets with a quarter of the instances defective."""
    return [generate_sheet(seed=101, index=i, defect_rate=0.25) for i in range(4)]


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A golden-template set in deeppcb's layout: defective renders in test/mixed, each with the clean
    template in test/good, masks in ground_truth/mixed, and pairs.csv (with a header) listing them."""
    root = tmp_path_factory.mktemp("pairs")
    template = reference_template()
    rows = ["tested_image,its_template"]
    for folder in ("test/mixed", "test/good", "ground_truth/mixed"):
        (root / folder).mkdir(parents=True)
    for i, kind in enumerate(("scratch", "color", "structural", "blurry_text")):
        image, defect = render_instance(kind, 0.9, np.random.default_rng([7, i]))
        assert defect is not None
        (root / f"test/mixed/{i:03d}_test.png").write_bytes(
            encode_png(np.clip(image, 0, 255).astype(np.uint8))
        )
        (root / f"test/good/{i:03d}_temp.png").write_bytes(encode_png(template))
        mask = np.repeat((defect.mask * 255).astype(np.uint8)[..., None], 3, axis=2)
        (root / f"ground_truth/mixed/{i:03d}_test_mask.png").write_bytes(encode_png(mask))
        rows.append(f"test/mixed/{i:03d}_test.png,test/good/{i:03d}_temp.png")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def dev_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevS3]:
    """One SeaweedFS ``weed mini`` for the session on 127.0.0.1, stopped by PID at the end."""
    store = DevS3(tmp_path_factory.mktemp("weed"))
    store.start()
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture
def bucket(dev_s3: DevS3) -> str:
    """A new, empty bucket of the session's store for one test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    dev_s3.create_bucket(name)
    return name


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dev_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevRedis]:
    """The tests' own Redis-compatible server (valkey) on a free port, with AOF, stopped by PID."""
    server = DevRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(dev_redis: DevRedis) -> str:
    return dev_redis.url(11)


@pytest.fixture(scope="session")
def env(dev_s3: DevS3, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment a worker node gets: broker, S3 endpoint and keys, a model cache."""
    assert dev_s3.credentials is not None
    values = {
        **dev_s3.credentials.env(),
        "DEFECTSCAN_BROKER_URL": redis_url,
        "DEFECTSCAN_CACHE": str(tmp_path_factory.mktemp("cache")),
        "HF_HUB_OFFLINE": "1",
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    app.conf.update(broker_url=redis_url, result_backend=redis_url)
    yield values
    for key, old in saved.items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def start_worker(
    name: str, env: dict[str, str], log: Path, queues: str = "inference"
) -> subprocess.Popen[bytes]:
    """A real Celery worker subprocess (solo pool) on ``queues``, logging to ``log``: the command line
    ``defectscan worker`` runs."""
    args = worker_argv(queues, 1, "info", f"{name}@%h", "solo")
    return subprocess.Popen(
        args, cwd=ROOT, env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (a warm shutdown), then kill what is still running after 30 s."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
