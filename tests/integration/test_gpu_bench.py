"""``bench/gpu.sh``, the device bench, runs end to end on the CPU (``--device cpu``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_device_bench_runs_on_the_cpu_and_its_verdicts_agree(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    args = ["bash", "bench/gpu.sh", "--device", "cpu", "--quick", "--sheets", "3", "--out", str(out)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((out / "gpu-figures.json").read_text())
    assert figures["device_asked"] == "cpu"
    sheet, gpu = figures["sheet"], figures["gpu"]
    assert sheet["sheets_per_s"] > 0 and sheet["scoring_over_floor"] > 0
    assert gpu["device"] == "cpu" and gpu["scoring"]["crops"] == 3 * 8
    assert gpu["scoring"]["crops_per_s_tta_off"] > gpu["scoring"]["crops_per_s_tta_on"] > 0
    job = gpu["whole_job"]
    assert job["processes"] == gpu["cores"] and job["threads_per_process"] == [1] * gpu["cores"]
    assert job["sheets_per_s"] > 0 and {"segment", "score", "render"} <= set(job["stage_ms_per_sheet"])
    agreement = gpu["agreement"]
    assert agreement["agree"] and agreement["images"] == 3 and agreement["instances"] == 24
    assert agreement["max_relative_score_difference"] <= agreement["tolerance"]


def test_asking_for_cuda_without_it_fails_at_once(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = {**os.environ, "PYTHON": sys.executable}
    args = ["bash", "bench/gpu.sh", "--device", "cuda", "--out", str(tmp_path)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "no CUDA device" in done.stderr
