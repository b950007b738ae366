"""Retraining on its own queue, the registry, and promotion: Redis, SeaweedFS and worker subprocesses."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from defectscan.pipeline.images import encode_png
from defectscan.pipeline.synth import SheetSpec, reference_template
from defectscan.producer.cli import cli
from defectscan.producer.synth_files import write_sheet_images, write_synthetic_set
from defectscan.worker.batches import PREFIX
from defectscan.worker.dev_s3 import DevS3
from defectscan.worker.registry import Registry
from defectscan.worker.retrain import RetrainBook, RetrainBusyError, gate
from defectscan.worker.storage import LocalStorage, S3Storage
from tests.conftest import start_worker, stop_workers

SPEC = SheetSpec(width=1000, height=420, rows=1, cols=2)
REQUESTS: list[str] = []  # the retrain requests this module made; their Redis state is deleted at the end


@pytest.fixture(scope="module")
def data(env: dict[str, str], dev_s3: DevS3, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """OK sheets, a template, validation crops in MVTec layout, a corrupt image, and sheets to inspect."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    dev_s3.create_bucket(bucket)
    store = S3Storage(bucket)
    local = tmp_path_factory.mktemp("retrain")
    for folder, seed, rate, count in (("ok", 99, 0.0, 8), ("inspect", 5, 0.3, 4)):
        for key in write_sheet_images(LocalStorage(local / folder), count, seed, rate, SPEC):
            store.put(f"{folder}/{key}", (local / folder / key).read_bytes())
    write_synthetic_set(LocalStorage(local / "synth"), sheets=4, defect_rate=0.4, seed=12, spec=SPEC)
    for path in sorted((local / "synth" / "mvtec").rglob("*.png")):
        if "/train/" not in path.as_posix():
            store.put(f"val/{path.relative_to(local / 'synth' / 'mvtec').as_posix()}", path.read_bytes())
    store.put("templates/foil.png", encode_png(reference_template()))
    store.put("bad/broken.png", b"\x89PNG\r\n\x1a\n truncated")
    return {"bucket": bucket, "registry": f"s3://{bucket}/models"}


@pytest.fixture(scope="module")
def workers(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    logs = tmp_path_factory.mktemp("retrain-workers")
    paths = {"retrain": logs / "retrain.log", "inference": logs / "inference.log"}
    procs = [start_worker(f"{q}-w", env, path, queues=q) for q, path in paths.items()]
    yield paths
    client = redis.Redis.from_url(env["DEFECTSCAN_BROKER_URL"])
    client.delete(*[RetrainBook.state_key(r) for r in REQUESTS] or ["-"])
    stop_workers(procs)


def _retrain(data: dict[str, str], *extra: str, ok: str = "ok/") -> str:
    bucket = data["bucket"]
    args = [
        "retrain",
        "foil",
        "--ok",
        f"s3://{bucket}/{ok}",
        "--template",
        f"s3://{bucket}/templates/foil.png",
    ]
    args += ["--registry", data["registry"], "--image-size", "128", *extra]
    result = CliRunner().invoke(cli, args, standalone_mode=False)
    assert result.exception is None, result.output
    request_id = result.stdout.strip().splitlines()[-1]
    REQUESTS.append(request_id)
    return request_id


def _finished(request_id: str, timeout: float = 300.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        state = RetrainBook.read(request_id)
        if state.get("state") in ("done", "failed"):
            return state
        assert time.monotonic() < deadline, f"retrain {request_id} still {state}"
        time.sleep(0.5)


@pytest.mark.slow
def test_retrain_registers_versions_promotes_by_the_gate_and_batches_use_latest(
    data: dict[str, str], workers: dict[str, Path], env: dict[str, str]
) -> None:
    bucket, registry = data["bucket"], Registry(data["registry"])
    first = _retrain(data, "--val", f"s3://{bucket}/val/")
    busy = CliRunner().invoke(
        cli,
        ["retrain", "foil", "--ok", f"s3://{bucket}/ok/", "--registry", data["registry"]],
        standalone_mode=False,
    )
    assert isinstance(busy.exception, RetrainBusyError) and first in str(busy.exception)
    state = _finished(first)
    assert state["state"] == "done" and state["promoted"] == "true", state
    v1 = state["version"]
    assert registry.latest("foil") == v1  # the first version of a product is promoted
    card = registry.store.get(f"foil/{v1}/MODEL_CARD.md").decode()
    assert "image_auroc" in card and "first version" in card and "## Operating point" in card
    metrics = json.loads(registry.store.get(f"foil/{v1}/metrics.json"))
    assert metrics["validation"]["image_auroc"] is not None and metrics["training"]["crops"] == 16

    second = _retrain(data, "--promote", "never")
    state = _finished(second)
    assert state["state"] == "done" and state["promoted"] == "false" and registry.latest("foil") == v1
    v2 = state["version"]
    listed = CliRunner().invoke(cli, ["models", "list", "foil", "--registry", data["registry"], "--json"])
    versions = json.loads(listed.stdout)
    assert [v["version"] for v in versions] == sorted([v1, v2]) and v1 < v2  # ids sort by time
    assert [v["latest"] for v in versions] == [True, False]
    promoted = CliRunner().invoke(cli, ["models", "promote", "foil", v2, "--registry", data["registry"]])
    assert promoted.exit_code == 0 and registry.latest("foil") == v2

    batch_id = f"t{uuid.uuid4().hex[:10]}"
    enqueue = [
        "enqueue", f"s3://{bucket}/inspect/", "--model", f"s3://{bucket}/models/foil@latest",
        "--out", f"s3://{bucket}/results/", "--batch-id", batch_id,
        "--template", f"s3://{bucket}/templates/foil.png", "--angles", "-3:3:1",
    ]  # fmt: skip
    assert CliRunner().invoke(cli, enqueue).exit_code == 0
    registry.promote("foil", v1)  # a promotion while the batch runs does not change it
    assert CliRunner().invoke(cli, ["wait", batch_id, "--timeout", "300"]).exit_code == 0
    results = S3Storage(bucket, f"results/{batch_id}/items")
    verdicts = [json.loads(results.get(o.key)) for o in results.objects() if o.key.endswith(".png.json")]
    assert len(verdicts) == 4 and {v["model"]["version"] for v in verdicts} == {v2}

    taken = "Task defectscan.retrain["  # Celery logs each task a worker receives
    assert taken in workers["retrain"].read_text()
    assert taken not in workers["inference"].read_text()  # inference workers never take a retrain
    client = redis.Redis.from_url(env["DEFECTSCAN_BROKER_URL"])
    client.delete(*client.scan_iter(f"{PREFIX}{batch_id}:*"))


@pytest.mark.slow
@pytest.mark.parametrize(("ok", "reason"), [("nothing-here/", "no images under it"), ("bad/", "broken.png")])
def test_a_failed_retrain_leaves_latest_alone_and_says_why(
    data: dict[str, str], workers: dict[str, Path], ok: str, reason: str
) -> None:
    registry = Registry(data["registry"])
    before = registry.latest("foil")
    state = _finished(_retrain(data, ok=ok))
    assert state["state"] == "failed" and state["error"] == "no_training_data"
    assert reason in state["message"]
    assert registry.latest("foil") == before


def test_the_promotion_gate() -> None:
    old = {"image_auroc": 0.90, "pixel_auroc": 0.95}
    assert gate("auto", {"image_auroc": 0.899, "pixel_auroc": 0.96}, old, True)[0]  # within the tolerance
    assert not gate("auto", {"image_auroc": 0.88, "pixel_auroc": 0.99}, old, True)[0]
    assert not gate("auto", {"image_auroc": 0.95, "pixel_auroc": 0.90}, old, True)[0]
    assert not gate("auto", None, None, True)[0] and gate("auto", None, None, False)[0]
    assert gate("always", None, None, True)[0] and not gate("never", old, old, False)[0]
