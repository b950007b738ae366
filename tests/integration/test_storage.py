"""Local storage: keys stay inside the root; writes are whole."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from defectscan.pipeline.errors import UnreadableError
from defectscan.worker.dev_s3 import DevS3, S3Credentials, free_ports
from defectscan.worker.storage import (
    BadKeyError,
    LocalStorage,
    S3Settings,
    S3Storage,
    Storage,
    StorageUnavailableError,
    open_storage,
    read_local,
    safe_key,
)


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../up.json", "a/../../b", "a//b", "a/./b", "a/..", "x\x00y"]
)
def test_keys_cannot_escape_their_root(key: str, tmp_path: Path) -> None:
    with pytest.raises(BadKeyError) as info:
        LocalStorage(tmp_path).put(key, b"x")
    assert info.value.code == "bad_key"
    assert list(tmp_path.iterdir()) == []


def test_plain_keys_are_accepted() -> None:
    assert safe_key("line3/2026-11-29/0001.png") == "line3/2026-11-29/0001.png"


def test_a_backslash_is_part_of_a_name_and_stays_inside_the_root(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root")
    store.put("a\\..\\..\\b.png", b"x")
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["a\\..\\..\\b.png"]
    assert store.get("a\\..\\..\\b.png") == b"x"


def test_put_writes_whole_objects_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put("items/a/b.json", b"first")
    store.put("items/a/b.json", b"second")
    assert store.get("items/a/b.json") == b"second"
    assert sorted(p.name for p in (tmp_path / "items/a").iterdir()) == ["b.json"]


def test_missing_file_is_unreadable_and_named(tmp_path: Path) -> None:
    with pytest.raises(UnreadableError) as info:
        read_local(tmp_path / "nope.png")
    assert info.value.code == "unreadable" and "nope.png" in str(info.value)


def _fill(store: Storage) -> None:
    for key in ("b/2.png", "a/1.png", "a/sub/3.png", "c.txt", "a/0.png"):
        store.put(key, key.encode())


def test_local_listing_is_sorted_recursive_and_skips_temp_files(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    _fill(store)
    (tmp_path / "a" / ".x.png.123.part").write_bytes(b"half")
    assert [o.key for o in store.objects()] == ["a/0.png", "a/1.png", "a/sub/3.png", "b/2.png", "c.txt"]
    assert [o.key for o in store.objects("a")] == ["a/0.png", "a/1.png", "a/sub/3.png"]
    assert store.folders() == ["a/", "b/"] and store.folders("a") == ["a/sub/"]
    assert store.child("a").get("sub/3.png") == b"a/sub/3.png"


def test_s3_storage_round_trips_lists_in_pages_and_keeps_keys_under_its_prefix(
    dev_s3: DevS3, bucket: str
) -> None:
    assert dev_s3.credentials is not None
    root = S3Storage(bucket, "", dev_s3.credentials.settings(), dev_s3.credentials.client(), page_size=2)
    store = root.child("nightly/2026-11-29")
    _fill(store)
    assert store.get("a/sub/3.png") == b"a/sub/3.png" and store.exists("c.txt") and not store.exists("d.txt")
    listed = list(store.objects())
    assert [o.key for o in listed] == ["a/0.png", "a/1.png", "a/sub/3.png", "b/2.png", "c.txt"]
    assert all(o.size == len(o.key) and len(o.etag) == 32 for o in listed)  # ETag: MD5 of a plain PUT
    assert [o.key for o in store.objects("a")] == ["a/0.png", "a/1.png", "a/sub/3.png"]
    assert store.folders() == ["a/", "b/"] and store.folders("a") == ["a/sub/"]
    assert next(o.key for o in root.objects()) == "nightly/2026-11-29/a/0.png"
    store.put("a/0.png", b"rewritten")
    assert store.get("a/0.png") == b"rewritten"
    for key in ("../escape.png", "a/../../b", "/abs"):
        with pytest.raises(BadKeyError):
            store.put(key, b"x")
    with pytest.raises(UnreadableError) as info:
        store.get("nope.png")
    assert f"s3://{bucket}/nightly/2026-11-29/nope.png" in str(info.value)


def test_open_storage_reads_locations(dev_s3: DevS3, bucket: str, tmp_path: Path) -> None:
    assert isinstance(open_storage(tmp_path), LocalStorage)
    assert dev_s3.credentials is not None
    store = open_storage(f"s3://{bucket}/results/", dev_s3.credentials.settings())
    assert isinstance(store, S3Storage) and store.location == f"s3://{bucket}/results"
    with pytest.raises(BadKeyError):
        open_storage("s3:///no-bucket")
    with pytest.raises(BadKeyError):
        open_storage(f"s3://{bucket}/a/../b")


def test_stores_share_one_client_per_process_settings_and_credentials(
    dev_s3: DevS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert dev_s3.credentials is not None
    for key, value in dev_s3.credentials.env().items():
        monkeypatch.setenv(key, value)
    stores = [open_storage(f"s3://{bucket}/a"), open_storage(f"s3://{bucket}/b").child("c")]
    with ThreadPoolExecutor(4) as pool:  # threads asking at once get the one client too
        clients = list(pool.map(lambda i: open_storage(f"s3://{bucket}/t{i}").client, range(8)))
    assert len({id(c) for c in [*clients, *(s.client for s in stores)]}) == 1
    stores[0].put("x.json", b"{}")
    assert open_storage(f"s3://{bucket}/a").get("x.json") == b"{}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "another-key")  # other credentials: another client
    assert open_storage(f"s3://{bucket}/a").client is not clients[0]


def test_an_unreachable_store_is_unavailable_not_unreadable(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    settings = S3Settings(endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", max_attempts=2)
    store = S3Storage("bucket", "", settings)
    with pytest.raises(StorageUnavailableError) as info:
        store.get("a.png")
    assert info.value.code == "storage_unavailable" and "s3://bucket/a.png" in str(info.value)


def test_dev_s3_command_serves_until_interrupted_and_stops_its_store(tmp_path: Path) -> None:
    data = tmp_path / "s3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "defectscan.producer.cli", "dev-s3", str(data), "--bucket", "nightly-images"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        env_file = data / "s3.env"
        deadline = time.monotonic() + 60
        while not (env_file.is_file() and "AWS_SECRET_ACCESS_KEY" in env_file.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.stderr else ""
            )
            time.sleep(0.2)
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        env = dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
        creds = S3Credentials(env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        assert [b["Name"] for b in creds.client().list_buckets()["Buckets"]] == ["nightly-images"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _, stderr = proc.communicate()
        assert env["AWS_SECRET_ACCESS_KEY"] not in stderr.decode()  # the secret is never printed
        port = int(env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0  # the store is gone
    finally:
        if proc.poll() is None:
            proc.kill()


def test_health_and_bucket_ensure_for_containers(
    dev_s3: DevS3, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from defectscan.producer.cli import cli

    assert dev_s3.credentials is not None
    for key, value in dev_s3.credentials.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DEFECTSCAN_BROKER_URL", redis_url)
    healthy = CliRunner().invoke(cli, ["health"])
    assert healthy.exit_code == 0 and "healthy" in healthy.stdout
    name = f"ensure-{uuid.uuid4().hex[:8]}"
    assert "created" in CliRunner().invoke(cli, ["bucket", "ensure", name]).stdout
    assert "exists" in CliRunner().invoke(cli, ["bucket", "ensure", name]).stdout  # idempotent
    (port,) = free_ports(1)
    monkeypatch.setenv("DEFECTSCAN_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    broken = CliRunner().invoke(cli, ["health"])
    assert broken.exit_code == 1 and dev_s3.credentials.secret_key not in broken.output
