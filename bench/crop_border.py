"""Crops cut by an image's edge: which treatment of the pixels from outside the image rejects the fewest
good instances.

Clean synthetic sheets are cut so every instance (2 x 4, rotated, shifted, scaled) reaches 5 px or more
past an edge of the photograph; each is segmented as ``inspect`` does, and its crop scored four ways by a
model trained on whole crops of other clean sheets:

* ``none``: the crop as cut (black fill), every pixel scores;
* ``mask``: the same map, but only pixels from inside the image count;
* ``inpaint+mask``: the fill replaced by OpenCV inpainting (Telea) of the crop, inside pixels count;
* ``reference+mask`` (the product's): the fill replaced by the model's reference at the crop's
  brightness (:meth:`pipeline.model.AnomalyModel.score` with ``inside``), inside pixels count.

Prints the good instances each rejects (score above the model's threshold) and the worst score, and,
for scale, what the same model rejects on the same sheets uncut.

    .venv/bin/python bench/crop_border.py [--sheets 10]
"""

from __future__ import annotations

import argparse
import os
import warnings

import cv2
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from defectscan.pipeline.model import AnomalyModel, ModelConfig  # noqa: E402
from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range  # noqa: E402
from defectscan.pipeline.synth import generate_sheet, reference_template  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sheets", type=int, default=10, help="edge-cut sheets to inspect")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    options = SegmentOptions(angles=parse_range("-5:5:1"), scales=parse_range("0.95:1.05:0.05"))
    segmenter = Segmenter(reference_template(), options)
    cut = [(i, c) for i in range(6) for c in segmenter.whole_crops(generate_sheet(args.seed, i, 0.0).image)]
    config = ModelConfig(image_size=128, coreset_ratio=0.1, tta_views=("identity",))
    model = AnomalyModel.fit([c for _, c in cut], config, groups=[f"sheet{i}" for i, _ in cut])
    threshold = model.calibration.threshold
    names = ("none", "mask", "inpaint+mask", "reference+mask", "(the same sheets whole)")
    scores: dict[str, list[float]] = {k: [] for k in names}
    partial = 0
    for index in range(6, 6 + args.sheets):
        sheet = generate_sheet(args.seed, index, 0.0)
        x, y, _, _ = sheet.instances[0].box
        bx, by, bw, bh = sheet.instances[-1].box
        image = np.ascontiguousarray(
            sheet.image[int(y) + 5 : int(by + bh) - 5, int(x) + 5 : int(bx + bw) - 5]
        )
        found = segmenter.find(image)
        crops, inside = segmenter.crops(image, found), segmenter.inside(image, found)
        partial += sum(m is not None for m in inside)
        full = [np.ones(c.shape[:2], bool) if m is None else m for c, m in zip(crops, inside, strict=True)]
        plain = model.score(crops)
        scores["none"] += [r.score for r in plain]
        scores["mask"] += [float(r.anomaly_map[m].max()) for r, m in zip(plain, full, strict=True)]
        inpainted = [
            np.asarray(cv2.inpaint(c, (~m).astype(np.uint8), 3, cv2.INPAINT_TELEA))
            for c, m in zip(crops, full, strict=True)
        ]
        scores["inpaint+mask"] += [
            float(r.anomaly_map[m].max()) for r, m in zip(model.score(inpainted), full, strict=True)
        ]
        scores["reference+mask"] += [r.score for r in model.score(crops, inside=inside)]
        scores["(the same sheets whole)"] += [
            r.score for r in model.score(segmenter.whole_crops(sheet.image))
        ]
    total = len(scores["none"])
    print(f"{total} good instances on {args.sheets} edge-cut sheets, {partial} reaching past an edge")
    print(f"threshold {threshold:.4g}")
    print(f"{'treatment':<24} {'rejected':>9} {'worst score':>12}")
    for name, values in scores.items():
        rejected = sum(s > threshold for s in values)
        print(f"{name:<24} {rejected:>5} / {len(values):<3} {max(values):>10.4g}")


if __name__ == "__main__":
    main()
