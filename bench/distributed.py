"""Throughput of a distributed batch against the local ``inspect``, on the same images, in one run.

Sets up real parts: SeaweedFS (``weed mini``) with the sheets, the local Redis (its database 12), and
worker subprocesses. Trains a model on aligned crops of clean sheets and publishes it. Then measures:

1. **local**: the local ``inspect`` (:func:`producer.inspect_files.run_inspection`) over the sheets on
   disk, model already loaded, writing verdicts and pictures to disk;
2. **1 worker** and **2 workers**: ``enqueue`` of the sheets in S3, until the batch's ``_SUCCESS``,
   each worker warmed first (model loaded) with a small batch.

Torch threads: the local run uses all cores, and each of N workers ``cores / N``
(``DEFECTSCAN_TORCH_THREADS``), as one would deploy them; ``--threads`` sets one number for every
process. The store runs on the same machine, so its CPU time during each run is reported too.
Prints images/s and the ratios 1 worker / local and 2 workers / 1 worker.

    .venv/bin/python bench/distributed.py [--sheets 40] [--chunk 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import uuid
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import redis  # noqa: E402

from defectscan.pipeline.images import encode_png  # noqa: E402
from defectscan.pipeline.inspection import Inspection, inspect_image  # noqa: E402
from defectscan.pipeline.model import AnomalyModel, ModelConfig  # noqa: E402
from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range  # noqa: E402
from defectscan.pipeline.synth import SheetSpec, reference_template  # noqa: E402
from defectscan.pipeline.verdict import ModelInfo  # noqa: E402
from defectscan.producer.batch_cli import worker_argv  # noqa: E402
from defectscan.producer.enqueue import enqueue_batch  # noqa: E402
from defectscan.producer.inspect_files import run_inspection  # noqa: E402
from defectscan.producer.synth_files import aligned_ok_crops, publish_model, write_sheet_images  # noqa: E402
from defectscan.worker.app import app  # noqa: E402
from defectscan.worker.batches import PREFIX, BatchBook  # noqa: E402
from defectscan.worker.dev_s3 import DevS3  # noqa: E402
from defectscan.worker.storage import LocalStorage, S3Storage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/12"
ANGLES = "-3:3:1"


def start_workers(count: int, env: dict[str, str], logs: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        args = worker_argv("inference", 1, "warning", f"bench{i}@%h", "solo")
        log = (logs / f"worker{count}-{i}.log").open("wb")
        procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def run_batch(bucket: str, prefix: str, chunk: int, client: redis.Redis) -> float:
    """Seconds from enqueue to the batch's finalize (``_SUCCESS`` written)."""
    batch_id = f"bench-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    enqueue_batch(
        f"s3://{bucket}/{prefix}",
        f"s3://{bucket}/models/foil@latest",
        f"s3://{bucket}/results",
        batch_id,
        chunk,
        f"s3://{bucket}/templates/foil.png",
        "foil",
        SegmentOptions(angles=parse_range(ANGLES)),
    )
    book = BatchBook(batch_id, client)
    while not (book.counts().finished and book.finalized()):
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    client.delete(*client.scan_iter(f"{PREFIX}{batch_id}:*"))
    return seconds


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sheets", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    spec = SheetSpec()
    client = redis.Redis.from_url(REDIS_URL)
    with tempfile.TemporaryDirectory() as tmp_name, DevS3(Path(tmp_name) / "weed") as s3:
        tmp = Path(tmp_name)
        assert s3.credentials is not None
        env = {**os.environ, **s3.credentials.env(), "DEFECTSCAN_BROKER_URL": REDIS_URL}
        env["DEFECTSCAN_CACHE"] = str(tmp / "cache")
        os.environ.update({k: v for k, v in env.items() if k.startswith(("AWS_", "DEFECTSCAN_"))})
        app.conf.update(broker_url=REDIS_URL, result_backend=REDIS_URL)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(bucket)
        store = S3Storage(bucket)

        segmenter = Segmenter(reference_template(), SegmentOptions(angles=parse_range(ANGLES)))
        model_dir = AnomalyModel.fit(aligned_ok_crops(segmenter, 8, 99, spec), ModelConfig()).save(
            tmp / "model"
        )
        publish_model(model_dir, store.child("models"), "foil")
        store.put("templates/foil.png", encode_png(reference_template()))
        local_in = tmp / "sheets"
        keys = write_sheet_images(LocalStorage(local_in), args.sheets, 31, 0.3, spec)
        warm = write_sheet_images(LocalStorage(tmp / "warm"), 4, 77, 0.3, spec)
        for key in keys:
            store.put(f"nightly/{key}", (local_in / key).read_bytes())
        for key in warm:
            store.put(f"warm/{key}", (tmp / "warm" / key).read_bytes())

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        model = AnomalyModel.load(model_dir)
        info = ModelInfo(product="foil", version=str(model.version), method=model.config.method)
        items = [(key, local_in / key) for key in keys]

        def inspect(data: bytes, key: str) -> Inspection:
            return inspect_image(data, key, model, segmenter, "foil")

        start = time.perf_counter()
        run_inspection(items, inspect, info, LocalStorage(tmp / "local-out"))
        local_s = time.perf_counter() - start
        results = {"images": len(keys), "local_img_s": len(keys) / local_s}
        print(
            f"local inspect: {len(keys)} images in {local_s:.1f} s = {results['local_img_s']:.2f} img/s",
            flush=True,
        )

        for count in (1, 2):
            threads = args.threads or max((os.cpu_count() or 1) // count, 1)
            procs = start_workers(count, {**env, "DEFECTSCAN_TORCH_THREADS": str(threads)}, tmp)
            try:
                run_batch(bucket, "warm", 1, client)  # every worker loads the model
                store_cpu = cpu_seconds(s3.pid)
                seconds = run_batch(bucket, "nightly", args.chunk, client)
                store_cpu = cpu_seconds(s3.pid) - store_cpu
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(30)
            results[f"workers_{count}_img_s"] = len(keys) / seconds
            results[f"workers_{count}_store_cpu_s"] = store_cpu
            print(
                f"{count} worker(s), {threads} torch thread(s) each: {len(keys)} images in {seconds:.1f} s = "
                f"{len(keys) / seconds:.2f} img/s; the S3 store used {store_cpu:.1f} CPU s meanwhile",
                flush=True,
            )
        results["ratio_1_worker_vs_local"] = results["workers_1_img_s"] / results["local_img_s"]
        results["scaling_2_vs_1"] = results["workers_2_img_s"] / results["workers_1_img_s"]
        print(
            f"1 worker / local = {results['ratio_1_worker_vs_local']:.3f} (target >= 0.9); "
            f"2 workers / 1 worker = {results['scaling_2_vs_1']:.3f} on {os.cpu_count()} cores"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
