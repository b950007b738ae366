"""An embedded RabbitMQ broker for tests and trying the distributed path with RabbitMQ.

:class:`DevRabbitMQ` runs Debian's ``rabbitmq-server`` (the ``rabbitmq-server`` package, its script in
``/usr/lib/rabbitmq/bin``) as the current user, with its own Erlang port mapper (``epmd``), node name,
ports (all free ones on 127.0.0.1), data, logs and cookie under one folder, no plugins, and the
built-in ``guest`` user (which RabbitMQ lets in from loopback only). It stops both processes by PID.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from defectscan.worker.dev_redis import free_port
from defectscan.worker.processes import stop_group

SERVER_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)


def server_script() -> str | None:
    """The RabbitMQ server start script, or None where RabbitMQ is not installed."""
    for path in SERVER_SCRIPTS:
        if os.access(path, os.X_OK):
            return path
    return None


class DevRabbitMQ:
    """One RabbitMQ node and its epmd; ``with DevRabbitMQ(dir) as mq:`` starts and stops them."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"defectscan{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        base = self.data_dir
        return {
            **os.environ,
            "HOME": str(base / "home"),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
        }

    def start(self, timeout: float = 90.0) -> str:
        """Start epmd and the node, wait until AMQP answers; returns the broker URL."""
        script = server_script()
        epmd = shutil.which("epmd")
        if script is None or epmd is None:
            raise FileNotFoundError("RabbitMQ is not installed (Debian: apt-get install rabbitmq-server)")
        (self.data_dir / "home").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "enabled_plugins").write_text("[].\n")
        env = self._env()
        log = (self.data_dir / "server.log").open("ab")
        self.epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.process = subprocess.Popen(
            [script], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.data_dir, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"RabbitMQ did not start; see {self.data_dir}/server.log")
            time.sleep(0.3)
        return self.url()

    def _answers(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            try:
                sock.connect(("127.0.0.1", self.port))
            except OSError:
                return False
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the node's process group (Erlang shuts down cleanly on it), then epmd; SIGKILL what is
        left after ``timeout``."""
        for proc in (self.process, self.epmd):
            if proc is not None:
                stop_group(proc, timeout)
        self.process = self.epmd = None

    def __enter__(self) -> DevRabbitMQ:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
