"""The operating point, measured: fit time of out-of-fold calibration against the holdout fit, and the
false-reject and escape rates its threshold gives on held-out test images, beside the oracle's.

For each target false-reject rate (0.01, 0.05): the threshold each rule sets from the out-of-fold OK
scores of training (the Gumbel tail the product uses; a Gaussian on the same median and IQR; the
empirical quantile), the realised false-reject rate on ``test/good`` (with its 95 % Wilson interval),
the escape rate on the defective test images, and the oracle escape rate: the fewest escapes any
threshold achieves at the same realised false-reject rate on the same scores. The holdout rule of
earlier versions (``max(mean + 3 std, max)`` of 20 % held out) is shown beside them.

    .venv/bin/python bench/operating_point.py                         # synthetic crops (420 sheets)
    .venv/bin/python bench/operating_point.py --data DATA/magnetic_tile
    .venv/bin/python bench/operating_point.py --data DATA/deeppcb
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from statistics import NormalDist

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from defectscan.pipeline.evaluate import auroc  # noqa: E402
from defectscan.pipeline.images import decode_image  # noqa: E402
from defectscan.pipeline.model import AnomalyModel, ModelConfig  # noqa: E402
from defectscan.pipeline.operating_point import fit_ok_tail, oracle_escape_rate, rates  # noqa: E402
from defectscan.producer.synth_files import write_synthetic_set  # noqa: E402
from defectscan.worker.datasets import expand_inputs, mvtec_test_items  # noqa: E402
from defectscan.worker.storage import LocalStorage, read_local  # noqa: E402

Z95 = 1.959964


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def thresholds(oof: np.ndarray, target: float) -> dict[str, float]:
    tail = fit_ok_tail(oof)
    q1, median, q3 = np.quantile(oof, [0.25, 0.5, 0.75])
    sigma = (q3 - q1) / 1.349
    return {
        "gumbel (used)": tail.threshold(target),
        "gaussian": float(median + NormalDist().inv_cdf(1 - target) * sigma),
        "empirical quantile": float(np.quantile(oof, 1 - target)),
    }


def load(root: Path, train_count: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    pool = expand_inputs([root / "train" / "good"])
    picked = [pool[int(i)] for i in np.linspace(0, len(pool) - 1, min(train_count, len(pool))).round()]
    train = [decode_image(read_local(p), str(p)) for p in picked]
    good, bad = [], []
    for item in mvtec_test_items(root):
        image = decode_image(read_local(item.path), str(item.path))
        (good if item.kind == "good" else bad).append(image)
    return train, good, bad


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="MVTec-layout folder (default: synthetic crops)")
    parser.add_argument(
        "--sheets", type=int, default=420, help="synthetic sheets (8 each; 420: 500+ good test crops)"
    )
    parser.add_argument("--train-count", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            root = Path(tmp) / "synth"
            write_synthetic_set(LocalStorage(root), args.sheets, 0.25, seed=11)
            root = root / "mvtec"
        train, good, bad = load(root, args.train_count)
    config = ModelConfig(image_size=args.image_size)
    start = time.perf_counter()
    holdout = AnomalyModel.fit(train, config.changed(folds=0))
    holdout_s = time.perf_counter() - start
    start = time.perf_counter()
    model = AnomalyModel.fit(train, config)
    oof_s = time.perf_counter() - start
    good_s = np.array([r.score for r in model.score(good)])
    bad_s = np.array([r.score for r in model.score(bad)])
    oof = np.asarray(model.calibration_scores)
    report: dict[str, object] = {
        "data": str(args.data or f"synthetic, {args.sheets} sheets"),
        "train": len(train),
        "test_good": len(good),
        "test_defective": len(bad),
        "fit_s": {"holdout": round(holdout_s, 1), "out_of_fold": round(oof_s, 1)},
        "fit_ratio": round(oof_s / holdout_s, 2),
        "image_auroc": round(auroc(np.r_[np.zeros(len(good)), np.ones(len(bad))], np.r_[good_s, bad_s]), 4),
    }
    rows = []
    old = holdout.calibration.threshold
    old_good = np.array([r.score for r in holdout.score(good)])
    old_bad = np.array([r.score for r in holdout.score(bad)])
    frr, esc = rates(old_good, old_bad, old)
    rows.append(_row("holdout max(mean+3std, max)", None, frr, esc, old_good, old_bad))
    for target in (0.01, 0.05):
        for rule, threshold in thresholds(oof, target).items():
            frr, esc = rates(good_s, bad_s, threshold)
            rows.append(_row(rule, target, frr, esc, good_s, bad_s))
    report["rows"] = rows
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def _row(rule: str, target: float | None, frr: float, esc: float, good: np.ndarray, bad: np.ndarray) -> dict:
    k = round(frr * len(good))
    low, high = wilson(k, len(good))
    oracle = oracle_escape_rate(good, bad, frr)
    return {
        "rule": rule,
        "target_frr": target,
        "realised_frr": round(frr, 4),
        "frr_95": [round(low, 4), round(high, 4)],
        "escape_rate": round(esc, 4),
        "oracle_escape_rate": round(oracle, 4),
        "escapes_vs_oracle": round(esc / oracle, 2) if oracle > 0 else (1.0 if esc == 0 else math.inf),
    }


if __name__ == "__main__":
    main()
