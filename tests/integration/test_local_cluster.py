"""`defectscan local-cluster`: broker, S3 store and a worker that answer, and all of them gone on Ctrl-C."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery

BIN = Path(sys.executable).parent / "defectscan"


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = shlex.split(value)[0]
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _descendants(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    children = {int(p) for p in found.split()}
    return children.union(*(_descendants(c) for c in children))


def test_local_cluster_runs_the_distributed_path_and_stops_everything(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    log = (tmp_path / "cluster.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN), "local-cluster", str(directory)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while (
            not (directory / "cluster.env").is_file() and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert (directory / "cluster.env").is_file(), (tmp_path / "cluster.log").read_text()
        assert (directory / "cluster.env").stat().st_mode & 0o077 == 0  # the S3 secret is the user's only
        env = _env_file(directory / "cluster.env")
        assert env["DEFECTSCAN_REGISTRY"] == "s3://defectscan/models"
        secret = env["AWS_SECRET_ACCESS_KEY"]
        health = subprocess.run(
            [str(BIN), "health"], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
        )
        assert health.returncode == 0 and health.stdout.strip() == "healthy", health.stderr
        probe = Celery("probe", broker=env["DEFECTSCAN_BROKER_URL"])  # not the shared app: its pool stays
        replies: list[object] = []
        try:
            while not replies and time.monotonic() < deadline:
                replies = probe.control.ping(timeout=2.0) or []
        finally:
            probe.close()
        assert replies, (directory / "worker.log").read_text()[-3000:]
        started = _descendants(proc.pid)
        assert len(started) >= 4  # broker, S3 store, worker and its pool
    finally:
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(90)
    assert code == 0
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in started if _alive(p)]
    assert not (directory / "cluster.env").exists()
    output = (tmp_path / "cluster.log").read_text()
    assert "stopped" in output and secret not in output
