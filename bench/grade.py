"""Grading quality on synthetic sheets: defect-type accuracy per type, and severity against strength.

Trains the default patchcore model on defect-free sheet crops, then grades crops of every synthetic
defect type at strengths spread over (0.2, 1], each with the sheet's jitter, illumination and noise.
A crop counts as typed right when its worst defect has the expected type (``color`` and ``scratch``
are both ``color_scratch``); a crop with no defect counts as wrong. Severity is compared with the
synthetic strength by Spearman rank correlation, per type and over all.

    .venv/bin/python bench/grade.py [--train 80] [--per-type 30] [--method patchcore] [--image-size 256]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from itertools import islice
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from defectscan.pipeline.grade import grade  # noqa: E402
from defectscan.pipeline.model import AnomalyModel, ModelConfig  # noqa: E402
from defectscan.pipeline.synth import DEFECT_TYPES, instance_crops  # noqa: E402

EXPECTED = {
    "blurry_text": "blurry_text",
    "structural": "structural",
    "color": "color_scratch",
    "scratch": "color_scratch",
}


def defect_crops(kind: str, count: int, seed: int) -> tuple[list[np.ndarray], list[float]]:
    found = ((c, i.defect) for c, i in instance_crops(seed, 1.0, (kind,)) if i.defect is not None)
    pairs = list(islice(found, count))
    return [c for c, _ in pairs], [d.strength for _, d in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=80)
    parser.add_argument("--per-type", type=int, default=30)
    parser.add_argument("--method", default="patchcore", help="Any method of `defectscan train`.")
    parser.add_argument("--image-size", type=int, default=256, help="The model's input size (px).")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ok = [c for c, _ in islice(instance_crops(1), args.train)]
    model = AnomalyModel.fit(ok, ModelConfig(method=args.method, image_size=args.image_size))
    report: dict[str, object] = {}
    all_sev: list[float] = []
    all_str: list[float] = []
    for kind in DEFECT_TYPES:
        crops, strengths = defect_crops(kind, args.per_type, 11)
        severities, right, found, details = [], 0, [], []
        for crop, res in zip(crops, model.score(crops), strict=True):
            defects = grade(
                crop, res.anomaly_map, model.calibration.threshold, model.reference, model.regions
            )
            worst = max(defects, key=lambda d: d.severity) if defects else None
            right += int(worst is not None and worst.type == EXPECTED[kind])
            found.append(worst.type if worst else "none")
            severities.append(worst.severity if worst else 0.0)
            details.append(
                worst.model_dump(include={"type", "severity", "area_pct", "peak", "evidence"})
                if worst
                else None
            )
        rho = float(spearmanr(severities, strengths).statistic)
        report[kind] = {
            "crops": len(crops),
            "type_accuracy": right / len(crops),
            "severity_spearman": rho,
            "found": {t: found.count(t) for t in sorted(set(found))},
            "crops_detail": [{"strength": s, "worst": d} for s, d in zip(strengths, details, strict=True)],
        }
        all_sev += severities
        all_str += strengths
        print(
            f"{kind:12} accuracy {right / len(crops):.3f}  severity~strength Spearman {rho:.3f}",
            report[kind]["found"],
            flush=True,
        )
    overall = float(spearmanr(all_sev, all_str).statistic)
    report["severity_spearman_all"] = overall
    print(f"all types: severity~strength Spearman {overall:.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
