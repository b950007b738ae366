"""How far a real data set's image AUROC moves with *which* OK images train the model: configurations
trained as ``defectscan train`` trains them (out-of-fold calibration, every image in the bank) on
random draws of ``--train`` images, scored on the same test images. Printed per draw and
configuration: the image AUROC overall and per defect type; then each configuration's mean and range
over the draws and its paired difference from the first configuration.

    .venv/bin/python bench/draws.py --data DATA/magnetic_tile --train 267 --draws 1,2,3 --test-every 2 \
        --configs '{}' '{"intensity": "standardised"}'

A difference between configurations is to be read against the spread between draws of one.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from defectscan.pipeline.evaluate import Sample, summarize  # noqa: E402
from defectscan.pipeline.images import decode_image  # noqa: E402
from defectscan.pipeline.model import AnomalyModel, ModelConfig  # noqa: E402
from defectscan.worker.datasets import expand_inputs, mvtec_test_items  # noqa: E402
from defectscan.worker.storage import read_local  # noqa: E402


def load(path: Path) -> np.ndarray:
    return decode_image(read_local(path), str(path))


def per_type(model: AnomalyModel, tests: list[np.ndarray], kinds: list[str]) -> dict[str, float | None]:
    """Image AUROC of all defective images, and of each defect type against the good ones."""
    samples = [Sample(k, r.score) for k, r in zip(kinds, model.score(tests), strict=True)]
    summary = summarize(samples, model.calibration.threshold, model.config.image_size)
    by_type = {kind: figures["image_auroc"] for kind, figures in summary["per_type"].items()}
    return {"all": summary["image_auroc"], **by_type}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an MVTec-layout data set")
    parser.add_argument("--train", type=int, default=267, help="OK images per draw")
    parser.add_argument("--draws", default="1,2,3", help="comma list of draw seeds")
    parser.add_argument("--test-every", type=int, default=1, help="score every K-th test image")
    parser.add_argument("--configs", nargs="+", default=["{}"], help="ModelConfig changes, JSON each")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pool = expand_inputs([args.data / "train" / "good"])
    items = list(mvtec_test_items(args.data))[:: args.test_every]
    tests, kinds = [load(item.path) for item in items], [item.kind for item in items]
    configs = [json.loads(c) for c in args.configs]
    rows = []
    for draw in [int(d) for d in args.draws.split(",")]:
        picked = np.random.default_rng(draw).choice(len(pool), min(args.train, len(pool)), replace=False)
        ok = [load(pool[i]) for i in sorted(picked)]
        for changes in configs:
            start = time.perf_counter()
            model = AnomalyModel.fit(ok, ModelConfig().changed(**changes))
            figures = per_type(model, tests, kinds)
            took = round(time.perf_counter() - start)
            rows.append({"draw": draw, "changes": changes, **figures, "s": took})
            shown = " ".join(f"{k} {v:.4f}" for k, v in figures.items() if v is not None)
            print(f"draw {draw} {json.dumps(changes)}: {shown} ({took} s)", flush=True)
    first = [r["all"] for r in rows if r["changes"] == configs[0]]
    for changes in configs:
        values = [r["all"] for r in rows if r["changes"] == changes]
        paired = np.subtract(values, first)
        print(
            f"{json.dumps(changes)}: mean {np.mean(values):.4f} (range {min(values):.4f}-{max(values):.4f}); "
            f"against the first: mean {paired.mean():+.4f} (range {paired.min():+.4f} to {paired.max():+.4f})"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
