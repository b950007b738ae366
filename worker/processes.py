"""Stopping the servers we start (embedded S3, Redis, RabbitMQ): by PID, their whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence


def stop_group(process: subprocess.Popen[bytes], timeout: float = 15.0, signum: int = signal.SIGTERM) -> None:
    """Send ``signum`` to the process group of ``process`` (started with ``start_new_session``), wait up to
    ``timeout`` seconds, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def until_interrupted(processes: Sequence[subprocess.Popen[bytes] | None], poll_s: float = 0.5) -> bool:
    """Wait until SIGINT or SIGTERM (True) or until one of ``processes`` ends (False)."""
    stop = False

    def on_signal(signum: int, _: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop and all(p is not None and p.poll() is None for p in processes):
        time.sleep(poll_s)
    return stop
