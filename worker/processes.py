"""Stopping the servers we start (embedded S3, Redis, RabbitMQ): by PID, their whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


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
