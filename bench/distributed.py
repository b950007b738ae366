"""Throughput of a distributed batch against the local ``inspect``, on the same images, in one run.

Sets up real parts: SeaweedFS (``weed mini``) with the sheets, the local Redis (its database 12), and
worker subprocesses. Trains a model on aligned crops of clean sheets and publishes it. Then measures:

1. **local**: the local ``inspect`` (:func:`producer.inspect_files.run_inspection`) over the sheets on
   disk, model already loaded, writing verdicts and pictures to disk;
2. **1 worker**, **1 worker on one core** and **2 workers**: ``enqueue`` of the sheets in S3, until the
   batch's ``_SUCCESS``, each worker warmed first (model loaded) with a small batch; with each run, the
   mean milliseconds per stage from its verdicts' ``timings_ms``.

Cores: the local run uses all of them; each worker process is given cores (its affinity: all of them
for the one worker, one for the one-core worker, a core each for two workers) and runs one compute
thread per core given (:mod:`worker.cores`); ``--threads`` sets one number for every worker instead.
The store runs on the same machine, so its CPU time during each run is reported too.
Prints images/s and the ratios 1 worker / local, 2 workers / 1 worker, and 2 workers / 1 worker of one core.

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
from defectscan.pipeline.inspection import Inspector  # noqa: E402
from defectscan.pipeline.model import AnomalyModel, ModelConfig  # noqa: E402
from defectscan.pipeline.outputs import is_verdict_key  # noqa: E402
from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range  # noqa: E402
from defectscan.pipeline.synth import SheetSpec, reference_template  # noqa: E402
from defectscan.pipeline.verdict import ModelInfo  # noqa: E402
from defectscan.producer.batch_cli import worker_argv  # noqa: E402
from defectscan.producer.enqueue import enqueue_batch  # noqa: E402
from defectscan.producer.inspect_files import run_inspection  # noqa: E402
from defectscan.producer.synth_files import aligned_ok_crops, publish_model, write_sheet_images  # noqa: E402
from defectscan.worker.app import app  # noqa: E402
from defectscan.worker.batch_spec import ITEMS  # noqa: E402
from defectscan.worker.batches import PREFIX, BatchBook  # noqa: E402
from defectscan.worker.cores import core_slices  # noqa: E402
from defectscan.worker.dev_s3 import DevS3  # noqa: E402
from defectscan.worker.results import SUMMARY  # noqa: E402
from defectscan.worker.storage import LocalStorage, S3Storage, Storage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/12"
ANGLES = "-3:3:1"


def start_workers(given: list[set[int]], env: dict[str, str], logs: Path) -> list[subprocess.Popen[bytes]]:
    """A solo worker process per entry of ``given``, given those cores (its affinity), from which it
    sets its threads (:mod:`worker.cores`), as ``defectscan worker`` does."""
    procs = []
    for i, cores in enumerate(given):
        args = worker_argv("inference", 1, "warning", f"bench{i}@%h", "solo")
        log = (logs / f"worker{len(given)}-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda c=cores: os.sched_setaffinity(0, c),  # type: ignore[misc]
            )
        )
    return procs


def run_batch(bucket: str, prefix: str, chunk: int, client: redis.Redis) -> tuple[float, str]:
    """Seconds from enqueue to the batch's finalize (``_SUCCESS`` written), and the batch's id."""
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
    return seconds, batch_id


def stage_means(items: Storage) -> dict[str, float]:
    """Mean milliseconds per stage over the verdicts under ``items`` (their ``timings_ms``)."""
    totals: dict[str, float] = {}
    verdicts = 0
    for obj in items.objects():
        if not is_verdict_key(obj.key) or obj.key == SUMMARY:
            continue
        timings = json.loads(items.get(obj.key)).get("timings_ms") or {}
        verdicts += 1
        for stage, ms in timings.items():
            totals[stage] = totals.get(stage, 0.0) + ms
    return {stage: round(ms / max(verdicts, 1), 1) for stage, ms in totals.items()}


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
    parser.add_argument(
        "--runs", default="workers_1,workers_1_one_core,workers_2", help="which worker runs, comma-separated"
    )
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

        inspect = Inspector(model, segmenter, "foil", pictures="defects").many  # as the workers write
        start = time.perf_counter()
        run_inspection(items, inspect, info, LocalStorage(tmp / "local-out"))
        local_s = time.perf_counter() - start
        results = {"images": len(keys), "local_img_s": len(keys) / local_s}
        results["local_stage_ms"] = stage_means(LocalStorage(tmp / "local-out"))
        print(
            f"local inspect: {len(keys)} images in {local_s:.1f} s = {results['local_img_s']:.2f} img/s; "
            f"mean ms per image: {results['local_stage_ms']}",
            flush=True,
        )

        all_cores = sorted(os.sched_getaffinity(0))
        runs = {  # name: the cores each worker is given
            "workers_1": [set(all_cores)],
            "workers_1_one_core": [{all_cores[0]}],
            "workers_2": core_slices(2),
        }
        for name, given in runs.items():
            if name not in args.runs.split(","):
                continue
            env_run = {**env, "DEFECTSCAN_TORCH_THREADS": str(args.threads)} if args.threads else env
            procs = start_workers(given, env_run, tmp)
            try:
                run_batch(bucket, "warm", 1, client)  # every worker loads the model
                store_cpu = cpu_seconds(s3.pid)
                seconds, batch_id = run_batch(bucket, "nightly", args.chunk, client)
                store_cpu = cpu_seconds(s3.pid) - store_cpu
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(30)
            results[f"{name}_img_s"] = len(keys) / seconds
            results[f"{name}_store_cpu_s"] = store_cpu
            results[f"{name}_stage_ms"] = stages = stage_means(store.child(f"results/{batch_id}/{ITEMS}"))
            print(
                f"{len(given)} worker(s) given {[sorted(c) for c in given]} cores: {len(keys)} images in "
                f"{seconds:.1f} s = {len(keys) / seconds:.2f} img/s; the S3 store used {store_cpu:.1f} CPU s"
                f" meanwhile; mean ms per image: {stages}",
                flush=True,
            )
        if set(runs) - set(args.runs.split(",")):
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
            return
        results["ratio_1_worker_vs_local"] = results["workers_1_img_s"] / results["local_img_s"]
        results["scaling_2_vs_1"] = results["workers_2_img_s"] / results["workers_1_img_s"]
        results["scaling_2_vs_1_one_core"] = results["workers_2_img_s"] / results["workers_1_one_core_img_s"]
        print(
            f"1 worker / local = {results['ratio_1_worker_vs_local']:.3f} (target >= 0.9); "
            f"2 workers / 1 worker = {results['scaling_2_vs_1']:.3f} on {len(all_cores)} cores "
            f"(target >= 1.7); 2 workers of one core / 1 worker of one core = "
            f"{results['scaling_2_vs_1_one_core']:.3f}"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
