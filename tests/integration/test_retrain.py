"""Retraining on its own queue, the registry, and promotion: Redis, SeaweedFS and worker subprocesses."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from defectscan.pipeline.auto_config import cost
from defectscan.pipeline.images import decode_image, encode_png
from defectscan.pipeline.model_config import ModelConfig
from defectscan.pipeline.synth import SheetSpec, generate_sheet, reference_template
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
    new_line = replace(SPEC, gradient=(0.25, 0.35), colour_gain=(1.1, 0.95, 0.8), noise_sigma=5.0)
    for folder, seed, rate, count, spec in (
        ("ok", 99, 0.0, 8, SPEC),
        ("inspect", 5, 0.3, 4, SPEC),
        ("new-line", 17, 0.0, 5, new_line),  # a new light and camera: five sheets of ten OK instances
    ):
        for key in write_sheet_images(LocalStorage(local / folder), count, seed, rate, spec):
            store.put(f"{folder}/{key}", (local / folder / key).read_bytes())
    # one blatant defect (a red square on a good instance), so that the batch has a rejected instance
    # whatever the small model's margins on the sheets' own defects
    sheet = generate_sheet(5, 0, 0.3, SPEC)
    marked = sheet.image.copy()
    cx, cy = round(sheet.instances[1].pose.cx), round(sheet.instances[1].pose.cy)
    marked[cy - 35 : cy + 35, cx - 35 : cx + 35] = (230, 60, 60)
    store.put("inspect/line0/sheet_000.png", encode_png(marked))
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
    data: dict[str, str], workers: dict[str, Path], env: dict[str, str], tmp_path: Path
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
        "--template", f"s3://{bucket}/templates/foil.png", "--angles", "-3:3:1", "--product", "foil",
    ]  # fmt: skip
    assert CliRunner().invoke(cli, enqueue).exit_code == 0
    registry.promote("foil", v1)  # a promotion while the batch runs does not change it
    assert CliRunner().invoke(cli, ["wait", batch_id, "--timeout", "300"]).exit_code == 0
    results = S3Storage(bucket, f"results/{batch_id}/items")
    verdicts = [json.loads(results.get(o.key)) for o in results.objects() if o.key.endswith(".png.json")]
    assert len(verdicts) == 4 and {v["model"]["version"] for v in verdicts} == {v2}

    _review_feeds_back(data, batch_id, verdicts, v2, tmp_path)

    taken = "Task defectscan.retrain["  # Celery logs each task a worker receives
    assert taken in workers["retrain"].read_text()
    assert taken not in workers["inference"].read_text()  # inference workers never take a retrain
    client = redis.Redis.from_url(env["DEFECTSCAN_BROKER_URL"])
    client.delete(*client.scan_iter(f"{PREFIX}{batch_id}:*"))


def _review_feeds_back(
    data: dict[str, str], batch_id: str, verdicts: list[dict[str, Any]], version: str, tmp_path: Path
) -> None:
    """Reviewers' decisions on the batch: recorded under it, their crops fed to the registry, used by
    the next retrain and by a new operating point."""
    bucket, registry = data["bucket"], Registry(data["registry"])
    out = f"s3://{bucket}/results/"
    rejected = [
        (v["image"]["key"], i["index"]) for v in verdicts for i in v["instances"] if i["is_anomalous"]
    ]
    passed = [
        (v["image"]["key"], i["index"]) for v in verdicts for i in v["instances"] if not i["is_anomalous"]
    ]
    assert rejected and len(passed) >= 2, (rejected, passed)
    common = ["--out", out, "--registry", data["registry"]]
    wrong = CliRunner().invoke(cli, ["review", batch_id, *common, "--set", "nope.png:0=correct"])
    assert wrong.exit_code == 2 and "no verdict" in wrong.stderr
    runs = S3Storage(bucket, f"results/{batch_id}")
    assert not list(runs.objects("review"))
    sets = [
        "--set",
        f"{rejected[0][0]}:{rejected[0][1]}=false_reject",
        "--set",
        f"{passed[0][0]}:{passed[0][1]}=missed_defect",
    ]
    done = CliRunner().invoke(cli, ["review", batch_id, *common, "--reviewer", "ana", *sets])
    assert done.exit_code == 0, done.output
    (recorded,) = [json.loads(runs.get(o.key)) for o in runs.objects("review")]
    assert recorded["reviewer"] == "ana" and recorded["recorded_at"] and len(recorded["decisions"]) == 2
    downloaded = tmp_path / "review.json"  # as the report downloads it
    decision = {
        "key": passed[1][0],
        "instance": passed[1][1],
        "decision": "missed_defect",
        "type": "structural",
    }
    downloaded.write_text(
        json.dumps({"schema": "defectscan.review/1", "batch_id": batch_id, "decisions": [decision]})
    )
    applied = CliRunner().invoke(cli, ["review", "apply", str(downloaded), *common])
    assert applied.exit_code == 0, applied.output
    assert len(list(runs.objects("review"))) == 2  # append-only: a second submission beside the first
    feedback = {o.key for o in registry.store.objects("foil/feedback")}
    oks = [k for k in feedback if "/feedback/ok/" in k]
    defects = [k for k in feedback if "/feedback/defects/" in k and not k.endswith("_mask.png")]
    assert len(oks) == 1 and len(defects) == 2 and len(feedback) == 5  # each defect with its weak mask
    crop = decode_image(registry.store.get(oks[0]), oks[0])
    assert crop.shape == reference_template().shape  # the aligned crop, cut again at the instance's pose
    items = runs.child("items")
    after = [json.loads(items.get(o.key)) for o in items.objects() if o.key.endswith(".png.json")]
    assert after == verdicts  # a review never edits a verdict

    state = _finished(_retrain(data, "--promote", "never"))
    assert state["state"] == "done", state
    v3 = state["version"]
    metrics = json.loads(registry.store.get(f"foil/{v3}/metrics.json"))
    assert metrics["training"]["feedback"] == {"ok": 1, "defects": 2} and metrics["training"]["crops"] == 17
    assert (
        "Trained with reviewers' feedback: 1 confirmed false rejects"
        in registry.store.get(f"foil/{v3}/MODEL_CARD.md").decode()
    )

    moved = CliRunner().invoke(
        cli,
        [
            "threshold",
            f"{data['registry']}/foil@{version}",
            "--target-frr",
            "0.05",
            "--reviews",
            f"{out}{batch_id}",
        ],
    )
    assert moved.exit_code == 0, moved.output
    v4 = moved.stdout.strip().splitlines()[-1]
    doc = json.loads(registry.store.get(f"foil/{v4}/model.json"))
    reviewed = doc["calibration_scores"]
    assert doc["derived_from"] == version and len(reviewed["reviewed_defects"]) == 2  # the two missed
    # the passed instances nobody marked missed, and the false reject
    assert len(reviewed["reviewed_ok"]) == len(passed) - 2 + 1
    assert "Reviewed in production" in registry.store.get(f"foil/{v4}/MODEL_CARD.md").decode()


@pytest.mark.slow
def test_retrain_style_from_calibrates_on_the_restyled_crops(
    data: dict[str, str], workers: dict[str, Path]
) -> None:
    """Every OK crop restyled as the new line looks, held out with its source, and the threshold holds
    for them; the new line's own ten instances are scored as a check."""
    registry = Registry(data["registry"])
    state = _finished(
        _retrain(data, "--promote", "never", "--style-from", f"s3://{data['bucket']}/new-line/")
    )
    assert state["state"] == "done", state
    version = state["version"]
    metrics = json.loads(registry.store.get(f"foil/{version}/metrics.json"))
    assert metrics["training"]["restyled_aux"] == 16 and metrics["new_condition_check"]["images"] == 10
    doc = json.loads(registry.store.get(f"foil/{version}/model.json"))
    assert doc["calibration"]["generated_count"] == 16 and len(doc["calibration_scores"]["generated"]) == 16
    cal, kept = doc["calibration"], doc["calibration_scores"]["new_condition"]
    assert cal["new_condition_count"] == 10 and len(kept) == 10  # their own tail: it holds for them
    assert cal["new_condition_rejected"] == sum(s > cal["threshold"] for s in kept)
    assert metrics["new_condition_check"]["above_threshold"] == cal["new_condition_rejected"]
    card = registry.store.get(f"foil/{version}/MODEL_CARD.md").decode()
    assert "Generated images" in card and "The new condition's own OK images" in card


@pytest.mark.slow
def test_retrain_auto_chooses_on_planted_defects_within_its_budget(
    data: dict[str, str], workers: dict[str, Path]
) -> None:
    """What this asserts holds on a machine of any speed: how many candidates a 3-second budget lets
    run depends on how fast the first one trains (the rule itself is tested on a fake clock in
    tests/unit/test_auto_config.py)."""
    registry = Registry(data["registry"])
    state = _finished(_retrain(data, "--promote", "never", "--auto", "--budget-min", "0.05"))
    assert state["state"] == "done", state
    version = state["version"]
    search = json.loads(registry.store.get(f"foil/{version}/metrics.json"))["auto"]
    tried = search["candidates"]
    measured = [c for c in tried if c["skipped"] is None]
    assert tried[0]["name"] == "patchcore-256" and tried[0] == measured[0]  # the default always runs
    assert measured == tried[: len(measured)]  # cheapest first: once one is over the budget, the rest are
    assert all("over the budget (0.05 min)" in c["skipped"] for c in tried[len(measured) :])
    unit = measured[0]["seconds"] / cost(_config(measured[0]))
    for i, cand in enumerate(measured[1:], start=1):  # ran only where the time already spent allowed it
        spent = sum(c["seconds"] for c in measured[:i])
        assert spent + unit * cost(_config(cand)) <= 0.05 * 60 + 0.2 * len(tried), (cand, unit, spent)
    chosen = next(c for c in measured if c["name"] == search["chosen"])
    assert search["held_out"] >= 8 and sum(search["planted"].values()) == search["held_out"]
    doc = json.loads(registry.store.get(f"foil/{version}/model.json"))
    assert doc["training"]["auto"] == search
    assert doc["config"]["image_size"] == chosen["image_size"] != 128  # --auto's, not --image-size 128
    assert doc["calibration"]["target_frr"] == 0.01
    assert "(--auto)" in registry.store.get(f"foil/{version}/MODEL_CARD.md").decode()


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


def _config(candidate: dict[str, object]) -> ModelConfig:
    return ModelConfig(
        method=str(candidate["method"]),
        image_size=int(str(candidate["image_size"])),
        layers=tuple(candidate["layers"]),  # type: ignore[arg-type]
    )
