"""Segmentation benchmark: accuracy on jittered synthetic sheets, and pyramid vs full-resolution speed.

Both searches use the same angles (-5..5 step 1) and scales (0.95..1.05 step 0.05) on the same
2400x1200 sheets with 8 instances each, timed alternately in one run so machine noise hits both.

    .venv/bin/python bench/segment.py                 # 50 sheets for accuracy, 5 for timing
    .venv/bin/python bench/segment.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from defectscan.pipeline.geometry import iou
from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range
from defectscan.pipeline.synth import generate_sheet, reference_template

ANGLES, SCALES = "-5:5:1", "0.95:1.05:0.05"


def accuracy(segmenter: Segmenter, sheets: int, seed: int) -> dict[str, float]:
    """Recall and precision at IoU >= 0.9, centre and angle errors, over ``sheets`` sheets."""
    tp = fp = fn = 0
    centre, angle, ious, seconds = [], [], [], []
    for index in range(sheets):
        sheet = generate_sheet(seed, index, defect_rate=0.25)
        start = time.perf_counter()
        found = segmenter.find(sheet.image)
        seconds.append(time.perf_counter() - start)
        used: set[int] = set()
        for inst in sheet.instances:
            scored = [(iou(d.box, inst.box), j) for j, d in enumerate(found) if j not in used]
            best_iou, j = max(scored, default=(0.0, -1))
            if best_iou < 0.9:
                fn += 1
                continue
            used.add(j)
            tp += 1
            det = found[j]
            ious.append(best_iou)
            centre.append(float(np.hypot(det.pose.cx - inst.pose.cx, det.pose.cy - inst.pose.cy)))
            angle.append(abs(det.pose.angle - inst.pose.angle))
        fp += len(found) - len(used)
    return {
        "sheets": sheets,
        "instances": tp + fn,
        "recall": tp / max(tp + fn, 1),
        "precision": tp / max(tp + fp, 1),
        "min_iou": min(ious),
        "centre_err_max_px": max(centre),
        "centre_err_mean_px": statistics.fmean(centre),
        "angle_err_max_deg": max(angle),
        "angle_err_mean_deg": statistics.fmean(angle),
        "seconds_per_sheet": statistics.fmean(seconds),
    }


def speed(sheets: int, seed: int) -> dict[str, float]:
    """Median seconds per sheet for the pyramid and the full-resolution search, timed alternately."""
    options = SegmentOptions(angles=parse_range(ANGLES), scales=parse_range(SCALES))
    pyramid = Segmenter(reference_template(), options)
    full = Segmenter(reference_template(), SegmentOptions(**{**options.model_dump(), "pyramid": False}))
    warm = generate_sheet(seed, 10_000, 0.25).image
    pyramid.find(warm)  # fill both template caches before timing
    full.find(warm)
    times: dict[str, list[float]] = {"pyramid": [], "full": []}
    for index in range(sheets):
        image = generate_sheet(seed, index, 0.25).image
        for name, segmenter in (("pyramid", pyramid), ("full", full)):
            start = time.perf_counter()
            found = segmenter.find(image)
            times[name].append(time.perf_counter() - start)
            assert len(found) == 8, (name, index, len(found))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "sheets": sheets,
        "pyramid_factor": pyramid.factor,
        "pyramid_s_per_sheet": med["pyramid"],
        "full_s_per_sheet": med["full"],
        "speedup": med["full"] / med["pyramid"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sheets", type=int, default=50, help="sheets for the accuracy figures")
    parser.add_argument("--timing-sheets", type=int, default=5, help="sheets timed with both searches")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    options = SegmentOptions(angles=parse_range(ANGLES), scales=parse_range(SCALES))
    acc = accuracy(Segmenter(reference_template(), options), args.sheets, args.seed)
    spd = speed(args.timing_sheets, args.seed + 1)
    jitter = "+-3 deg / +-3% / +-15 px jitter"
    print(f"accuracy over {acc['sheets']} sheets ({acc['instances']} instances, {jitter}):")
    recall, precision = acc["recall"], acc["precision"]
    print(f"  recall {recall:.3f}  precision {precision:.3f}  at IoU >= 0.9 (min IoU {acc['min_iou']:.3f})")
    print(f"  centre error max {acc['centre_err_max_px']:.3f} px, mean {acc['centre_err_mean_px']:.3f} px")
    print(f"  angle error  max {acc['angle_err_max_deg']:.3f} deg, mean {acc['angle_err_mean_deg']:.3f} deg")
    print(
        f"speed, 2400x1200 sheet, 8 instances, angles {ANGLES}, scales {SCALES} (median of {spd['sheets']}):"
    )
    print(f"  pyramid (1/{spd['pyramid_factor']} coarse)  {spd['pyramid_s_per_sheet']:.3f} s/sheet")
    print(f"  full resolution          {spd['full_s_per_sheet']:.3f} s/sheet")
    print(f"  speed-up                 {spd['speedup']:.1f}x  (target >= 5x)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"accuracy": acc, "speed": spd}, handle, indent=2)


if __name__ == "__main__":
    main()
