"""PyTorch against OpenVINO on one data set, in one run: the same OK images trained in each runtime, and
the torch-trained model scoring the test images in each.

Printed: training seconds in each runtime and their ratio, and the two thresholds; scoring seconds per
image in each and their ratio; how many verdicts differ and the largest relative image-score
difference; image AUROC, the false-reject rate and the escape rate at the model's own threshold, in
each runtime.

    .venv/bin/python bench/runtime.py --data DATA/magnetic_tile --train 267 --test-every 2
    .venv/bin/python bench/runtime.py --data DATA/deeppcb --train 160 --test-every 4
    .venv/bin/defectscan synth /tmp/sheets --sheets 40
    .venv/bin/python bench/runtime.py --data /tmp/sheets/mvtec
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from defectscan.pipeline.evaluate import auroc  # noqa: E402
from defectscan.pipeline.images import decode_image  # noqa: E402
from defectscan.pipeline.model import AnomalyModel, ModelConfig  # noqa: E402
from defectscan.pipeline.runtime import Runtime  # noqa: E402
from defectscan.worker.datasets import expand_inputs, mvtec_test_items  # noqa: E402
from defectscan.worker.storage import read_local  # noqa: E402


def load(path: Path) -> np.ndarray:
    return decode_image(read_local(path), str(path))


def rates(scores: list[float], defective: list[bool], threshold: float) -> dict[str, float]:
    good = [s for s, d in zip(scores, defective, strict=True) if not d]
    bad = [s for s, d in zip(scores, defective, strict=True) if d]
    return {
        "image_auroc": auroc([int(d) for d in defective], scores),
        "frr": float(np.mean([s > threshold for s in good])),
        "escapes": float(np.mean([s <= threshold for s in bad])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an MVTec-layout data set")
    parser.add_argument("--train", type=int, default=0, help="OK images, evenly spaced (0: all)")
    parser.add_argument("--test-every", type=int, default=1, help="score every K-th test image")
    parser.add_argument("--config", default="{}", help="ModelConfig changes, JSON")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pool = expand_inputs([args.data / "train" / "good"])
    step = max(len(pool) // args.train, 1) if args.train else 1
    ok = [load(p) for p in pool[::step][: args.train or None]]
    items = list(mvtec_test_items(args.data))[:: args.test_every]
    tests, defective = [load(i.path) for i in items], [i.kind != "good" for i in items]
    config = ModelConfig().changed(**json.loads(args.config))
    figures: dict[str, Any] = {"data": str(args.data), "train": len(ok), "test": len(tests)}
    with tempfile.TemporaryDirectory(prefix="defectscan-runtime-") as folder:
        cache = Path(folder)
        models = {}
        for name in ("torch", "openvino"):
            start = time.perf_counter()
            models[name] = AnomalyModel.fit(ok, config, runtime=Runtime(name, cache))
            figures[f"train_s_{name}"] = time.perf_counter() - start
            figures[f"threshold_{name}"] = models[name].calibration.threshold
        model = models["torch"].save(cache / "model")
        scores = {}
        for name in ("torch", "openvino"):
            scorer = AnomalyModel.load(model).use_runtime(name, cache)
            scorer.score(tests[:4])  # warm-up: caches, the bank index
            start = time.perf_counter()
            results = scorer.score(tests)
            figures[f"score_s_per_image_{name}"] = (time.perf_counter() - start) / len(tests)
            scores[name] = [r.score for r in results]
            figures[name] = rates(scores[name], defective, scorer.calibration.threshold)
            figures[f"verdicts_{name}"] = [r.is_anomalous for r in results]
    threshold = models["torch"].calibration.threshold
    pairs = zip(figures.pop("verdicts_torch"), figures.pop("verdicts_openvino"), strict=True)
    flips = sum(a != b for a, b in pairs)
    compared = zip(scores["torch"], scores["openvino"], strict=True)
    worst = max(abs(a - b) / max(abs(a), 1e-9) for a, b in compared)
    figures |= {"verdicts_differing": flips, "max_relative_score_difference": worst}
    train_ratio = figures["train_s_torch"] / figures["train_s_openvino"]
    score_ratio = figures["score_s_per_image_torch"] / figures["score_s_per_image_openvino"]
    print(f"{args.data}: {len(ok)} OK images trained, {len(tests)} test images ({sum(defective)} defective)")
    print(
        f"train: torch {figures['train_s_torch']:.1f} s, openvino {figures['train_s_openvino']:.1f} s: "
        f"{train_ratio:.2f}x; thresholds {figures['threshold_torch']:.6g} / "
        f"{figures['threshold_openvino']:.6g}"
    )
    print(
        f"scoring: torch {1000 * figures['score_s_per_image_torch']:.1f} ms/image, openvino "
        f"{1000 * figures['score_s_per_image_openvino']:.1f}: {score_ratio:.2f}x"
    )
    print(f"torch-trained model (threshold {threshold:.6g}) in both runtimes:")
    for name in ("torch", "openvino"):
        r = figures[name]
        print(
            f"  {name:<9} image AUROC {r['image_auroc']:.4f}, false rejects {r['frr']:.3f}, "
            f"escapes {r['escapes']:.3f}"
        )
    print(f"verdicts differing: {flips} of {len(tests)}; largest relative score difference {worst:.2g}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
