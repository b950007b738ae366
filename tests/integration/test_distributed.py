"""The distributed batch on real parts: Redis, SeaweedFS (``weed mini``) and worker subprocesses."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from defectscan.pipeline.errors import ModelNotFoundError
from defectscan.pipeline.images import encode_png
from defectscan.pipeline.model import AnomalyModel, ModelConfig
from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range
from defectscan.pipeline.synth import SheetSpec, reference_template
from defectscan.producer.cli import cli
from defectscan.producer.enqueue import enqueue_batch
from defectscan.producer.synth_files import aligned_ok_crops, publish_model, write_sheet_images
from defectscan.worker.batch_spec import BatchSpec
from defectscan.worker.batches import PREFIX
from defectscan.worker.chunks import inspect_keys
from defectscan.worker.dev_s3 import DevS3, free_ports
from defectscan.worker.storage import LocalStorage, S3Storage
from tests.conftest import start_worker, stop_workers

SPEC = SheetSpec(width=1000, height=420, rows=1, cols=2)
METRICS_PORTS: list[int] = []  # each worker's Prometheus port
SHEETS = 40
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nightly(env: dict[str, str], dev_s3: DevS3, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A bucket with 40 synthetic sheets and a corrupt file, a promoted model and the template."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    dev_s3.create_bucket(bucket)
    store = S3Storage(bucket)
    local = tmp_path_factory.mktemp("nightly")
    keys = write_sheet_images(LocalStorage(local), SHEETS, seed=31, defect_rate=0.3, spec=SPEC)
    for key in keys:
        store.put(f"nightly/2026-11-29/{key}", (local / key).read_bytes())
    store.put("nightly/2026-11-29/line0/broken.png", b"\x89PNG\r\n\x1a\n truncated")
    store.put("nightly/2026-11-29/notes.txt", b"not an image: not listed")
    segmenter = Segmenter(reference_template(), SegmentOptions(angles=parse_range("-3:3:1")))
    ok = aligned_ok_crops(segmenter, 12, seed=99, spec=SPEC)  # as `defectscan train` cuts them
    config = ModelConfig(image_size=128, coreset_ratio=0.1, tta_views=("identity",))
    model_dir = AnomalyModel.fit(ok, config).save(local.parent / "model")
    version = publish_model(model_dir, store.child("models"), "foil")
    store.put("templates/foil.png", encode_png(reference_template()))
    return {"bucket": bucket, "local": str(local), "model_dir": str(model_dir), "version": version}


@pytest.fixture(scope="module")
def workers(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    logs = tmp_path_factory.mktemp("workers")
    paths = [logs / "w1.log", logs / "w2.log"]
    ports = free_ports(2)
    procs = [
        start_worker(f"w{i + 1}", {**env, "DEFECTSCAN_METRICS_PORT": str(port)}, path)
        for i, (path, port) in enumerate(zip(paths, ports, strict=True))
    ]
    METRICS_PORTS[:] = ports
    yield paths
    stop_workers(procs)


@pytest.mark.slow
def test_a_nightly_batch_runs_on_two_workers_and_reruns_idempotently(
    nightly: dict[str, str], workers: list[Path], env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    bucket, batch_id = nightly["bucket"], f"t{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    try:
        args = [
            "enqueue",
            f"s3://{bucket}/nightly/2026-11-29/",
            "--model",
            f"s3://{bucket}/models/foil@latest",
            "--out",
            f"s3://{bucket}/results/",
            "--batch-id",
            batch_id,
            "--chunk",
            "2",
            "--template",
            f"s3://{bucket}/templates/foil.png",
            "--product",
            "foil",
            "--angles",
            "-3:3:1",
            "--lookout-compat",
        ]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().splitlines()[-1] == batch_id
        waited = CliRunner().invoke(cli, ["wait", batch_id, "--timeout", "600", "--interval", "0.5"])
        assert waited.exit_code == 1, waited.output  # finished, with broken.png's error verdict
        assert "1 failed" in waited.stdout and "summary.json" in waited.stderr

        batch = S3Storage(bucket, f"results/{batch_id}")
        spec = json.loads(batch.get("batch.json"))
        assert spec["model_version"] == nightly["version"] and spec["model"].endswith(nightly["version"])
        manifest = [json.loads(line)["key"] for line in batch.get("manifest.jsonl").decode().splitlines()]
        assert len(manifest) == SHEETS + 1 and "notes.txt" not in manifest
        verdicts = {k: json.loads(batch.get(f"items/{k}.json")) for k in manifest}
        summary = json.loads(batch.get("summary.json"))
        assert summary["images"] == SHEETS + 1 and summary["batch_id"] == batch_id
        counted = {v: sum(d["verdict"] == v for d in verdicts.values()) for v in ("ok", "defect", "error")}
        assert {k: n for k, n in counted.items() if n} == summary["verdicts"]
        assert counted["error"] == 1 and verdicts["line0/broken.png"]["error"]["code"] == "decode_error"
        assert counted["defect"] > 0 and counted["ok"] > 0
        page = batch.get("report.html").decode()  # the morning page, written before _SUCCESS
        data = json.loads(
            re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)[1]
        )
        assert len(data["images"]) == SHEETS + 1 and data["batch"] == batch_id
        assert len(data["rows"]) == summary["instances"] and nightly["version"] in page
        assert "expected false-reject rate" in page
        assert all(img[2].startswith("items/") for img in data["images"])  # the verdicts' own folder
        objects = {o.key: o for o in batch.objects()}
        latest = max(s3_time(batch, k) for k in objects if k != "_SUCCESS")
        assert "_SUCCESS" in objects and s3_time(batch, "_SUCCESS") >= latest  # written last

        chunks = [_chunk_lines(path) for path in workers]
        assert all(n > 0 for n in chunks) and sum(chunks) == (SHEETS + 1 + 1) // 2  # both took chunks

        scraped = [_scrape(port) for port in METRICS_PORTS]  # every worker counted what it did
        assert sum(m.get('defectscan_images_total{verdict="error"}', 0) for m in scraped) == 1
        assert (
            sum(v for m in scraped for k, v in m.items() if k.startswith("defectscan_images_total"))
            == SHEETS + 1
        )
        assert all(m['defectscan_queue_depth{queue="inference"}'] == 0 for m in scraped)
        assert all(m["defectscan_chunk_seconds_count"] > 0 for m in scraped)

        status = CliRunner().invoke(cli, ["status", batch_id, "--json"])
        assert json.loads(status.stdout) == {
            "batch": batch_id,
            "state": "finished",
            "total": SHEETS + 1,
            "done": SHEETS,
            "failed": 1,
            "pending": 0,
            "chunks": 0,
            "stalled_chunks": 0,
            "chunk_list": [],
        }

        again = enqueue_batch(
            f"s3://{bucket}/nightly/2026-11-29/",
            f"s3://{bucket}/models/foil@latest",
            f"s3://{bucket}/results/",
            batch_id,
        )
        assert again.sent_images == 0 and again.sent_chunks == 0 and not again.finalize_sent
        assert client.llen("inference") == 0

        local_out, template = tmp_path / "local", tmp_path / "t.png"
        template.write_bytes(encode_png(reference_template()))
        local_args = ["inspect", nightly["local"], "--model", nightly["model_dir"], "--out", str(local_out)]
        local_args += [
            "--template",
            str(template),
            "--product",
            "foil",
            "--angles",
            "-3:3:1",
            "--lookout-compat",
        ]
        local = CliRunner().invoke(cli, local_args)
        assert local.exit_code == 0, local.output
        for key in ("line0/sheet_000.png", "line1/sheet_013.png"):
            mine = json.loads((local_out / f"{key}.json").read_text())
            theirs = verdicts[key]
            mine.pop("timings_ms"), theirs.pop("timings_ms")
            assert mine == theirs  # the same verdict, whichever path wrote it
            drawn = "heatmap" in theirs["outputs"]  # by default, a sheet with a defect only
            assert (local_out / f"{key}.heatmap.png").is_file() == drawn == (theirs["verdict"] == "defect")
            if drawn:
                assert (local_out / f"{key}.heatmap.png").read_bytes() == batch.get(
                    f"items/{key}.heatmap.png"
                )
            response = batch.get(f"items/{key}.lookout.json")  # Lookout's DetectAnomalies body, per image
            assert (local_out / f"{key}.lookout.json").read_bytes() == response
            assert json.loads(response) == {"DetectAnomalyResult": theirs["DetectAnomalyResult"]}
    finally:
        keys = list(client.scan_iter(f"{PREFIX}{batch_id}:*"))
        if keys:
            client.delete(*keys)


def s3_time(store: S3Storage, key: str) -> float:
    head = store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
    return float(head["LastModified"].timestamp())


def _chunk_lines(log: Path, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = sum("chunk of" in line for line in log.read_text(errors="replace").splitlines())
        if count or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def test_an_unknown_model_version_is_refused_at_enqueue_and_named(
    nightly: dict[str, str], env: dict[str, str]
) -> None:
    bucket = nightly["bucket"]
    args = ["enqueue", f"s3://{bucket}/nightly/2026-11-29/", "--model", f"s3://{bucket}/models/foil@20990101"]
    result = CliRunner().invoke(cli, [*args, "--out", f"s3://{bucket}/results/"], standalone_mode=False)
    assert isinstance(result.exception, ModelNotFoundError)
    assert "models/foil/20990101" in str(result.exception)


def test_a_model_gone_after_enqueue_gives_each_image_an_error_verdict(
    nightly: dict[str, str], env: dict[str, str]
) -> None:
    bucket = nightly["bucket"]
    spec = BatchSpec(
        batch_id="gone",
        inputs=f"s3://{bucket}/nightly/2026-11-29",
        out=f"s3://{bucket}/results",
        model=f"s3://{bucket}/models/foil/19990101",
        model_version="19990101",
        created_at="2026-11-29T00:00:00Z",
    )
    results = list(inspect_keys(spec, None, ["line0/sheet_000.png", "line1/sheet_001.png"]))
    assert [r.verdict.verdict for r in results] == ["error", "error"]
    assert {r.verdict.error.code for r in results if r.verdict.error} == {"model_not_found"}
    assert all(
        "models/foil/19990101" in (r.verdict.error.message if r.verdict.error else "") for r in results
    )


def _scrape(port: int) -> dict[str, float]:
    """A worker's /metrics as {sample with labels: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
