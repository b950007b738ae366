"""``train --auto`` measured: does the yardstick of planted defects choose the configuration that is
best on real defects?

For one data set, the search runs as ``train --auto`` runs it (``pipeline.auto_config.search``, no
budget), and each candidate model it trains (on the search's three quarters of the OK images) also
scores the data set's real test images. Printed per candidate: the criterion on planted defects
(image AUROC, AUPRO) beside the real defects' image AUROC, pixel AUROC and AUPRO; then the chosen
configuration, today's default (the first candidate), the best candidate on real image AUROC, and
the Spearman rank correlation between candidates' criterion and their real image AUROC, pixel AUROC
and AUPRO (how far the yardstick is to be trusted on this kind of product).

    .venv/bin/python bench/auto.py                          # synthetic sheets (1 px scratches included)
    .venv/bin/python bench/auto.py --data DATA/magnetic_tile --train 356 --test-every 2
    .venv/bin/python bench/auto.py --data DATA/deeppcb --train 160 --test-every 4
    .venv/bin/python bench/auto.py ... --only patchcore-256,patchcore-256-standardised   # some candidates

``--train N`` OK images are given to the search, which trains on about three quarters of them
(356 gives the 267 of the magnetic_tile target).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from augment import Item, real, synthetic  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from defectscan.pipeline.auto_config import candidates, choose, search, trained_for_search  # noqa: E402
from defectscan.pipeline.evaluate import GOOD, Sample, aupro, auroc, on_grid, pixel_auroc  # noqa: E402
from defectscan.pipeline.model_config import ModelConfig  # noqa: E402
from defectscan.pipeline.planted_defects import placement  # noqa: E402
from defectscan.pipeline.training_set import reference_image  # noqa: E402


def on_real(model: Any, items: list[Item]) -> dict[str, float | None]:
    results = model.score([img for img, _, _ in items])
    samples = [
        Sample(kind, r.score, r.anomaly_map, mask if kind != GOOD else None)
        for (_, kind, mask), r in zip(items, results, strict=True)
    ]
    maps, masks = on_grid(samples, 256)
    image = auroc([int(s.kind != GOOD) for s in samples], [s.score for s in samples])
    return {"image_auroc": image, "pixel_auroc": pixel_auroc(maps, masks), "aupro": aupro(maps, masks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="an MVTec-layout data set (default: synthetic sheets)")
    parser.add_argument("--train", type=int, default=96, help="OK images given to the search")
    parser.add_argument("--test-sheets", type=int, default=40, help="synthetic: test sheets (8 crops each)")
    parser.add_argument("--test-every", type=int, default=1, help="score every K-th real test image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma list of candidate names to run (default: all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = real(args.data, args.train) if args.data else synthetic(args.train, args.test_sheets)
    ok, tests = data["train"], data["test_a"][:: args.test_every]  # condition A: the data set as it is
    good = sum(kind == GOOD for _, kind, _ in tests)
    print(f"{len(ok)} OK images to the search; {len(tests)} test images ({good} good)", flush=True)
    tried = [
        (name, config)
        for name, config in candidates(ModelConfig(), aligned=placement(reference_image(ok)).printed)
        if not args.only or name in args.only.split(",")
    ]
    name_of = {config: name for name, config in tried}
    real_figures: dict[str, dict[str, float | None]] = {}

    def measure(config: ModelConfig, train: list[np.ndarray], crops: list[np.ndarray]) -> Any:
        model = trained_for_search(config, train)
        results = model.score(crops)
        real_figures[name_of[config]] = on_real(model, tests)
        return [r.score for r in results], [r.anomaly_map for r in results]

    start = time.perf_counter()
    _, record = search(ok, ModelConfig(), measure, budget_min=1e6, seed=args.seed, tried=tried, log=print)
    rows = []
    for cand in record.candidates:
        figures = real_figures[cand.name]
        rows.append({**cand.model_dump(mode="json"), "real": figures})
        print(
            f"{cand.name:24s} planted: image {cand.image_auroc:.4f} AUPRO {cand.aupro:.4f} criterion "
            f"{cand.criterion:.4f} | real: image {figures['image_auroc']:.4f} pixel "
            f"{figures['pixel_auroc'] or 0:.4f} AUPRO {figures['aupro'] or 0:.4f} | {cand.seconds:.0f} s"
        )
    chosen = next(r for r in rows if r["name"] == choose(record.candidates).name)
    default, best = rows[0], max(rows, key=lambda r: r["real"]["image_auroc"])
    rho = {
        key: float(spearmanr([r["criterion"] for r in rows], [r["real"][key] or 0.0 for r in rows]).statistic)
        for key in ("image_auroc", "pixel_auroc", "aupro")
    }
    print(
        f"chosen {chosen['name']} (real image AUROC {chosen['real']['image_auroc']:.4f}); default "
        f"{default['real']['image_auroc']:.4f}; best {best['name']} {best['real']['image_auroc']:.4f}; "
        f"chosen - best {chosen['real']['image_auroc'] - best['real']['image_auroc']:+.4f} (target >= -0.01)"
        "; "
        f"chosen - default {chosen['real']['image_auroc'] - default['real']['image_auroc']:+.4f}; "
        f"Spearman of the criterion with the real image AUROC {rho['image_auroc']:.2f}, pixel AUROC "
        f"{rho['pixel_auroc']:.2f}, AUPRO {rho['aupro']:.2f}; {time.perf_counter() - start:.0f} s"
    )
    if args.json:
        summary = {"chosen": chosen["name"], "spearman": rho, "held_out": record.held_out}
        args.json.write_text(json.dumps({"candidates": rows, **summary}, indent=2))


if __name__ == "__main__":
    main()
