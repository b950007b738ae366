"""The batch report at nightly scale: the size of ``report.html`` for a synthetic batch of ``--images``
sheets (8 instances each, a tenth of them defective, a few failures) and, in headless chromium opened
from disk, the time to first render (the gallery's first page drawn), the time to the load event, and
the time one filter takes over every instance. Thumbnails are not written (the page loads only the
first page's, lazily); the figures are the page's own.

    .venv/bin/python bench/report.py [--images 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from defectscan.pipeline.verdict import Defect, ErrorInfo, ImageInfo, Instance, ModelInfo, Verdict
from defectscan.worker.report import REPORT, ModelFacts, write_report
from defectscan.worker.results import Summary
from defectscan.worker.storage import LocalStorage

KINDS = ("blurry_text", "structural", "color_scratch", "other")


def batch(images: int, seed: int = 0) -> list[Verdict]:
    rng = np.random.default_rng(seed)
    model = ModelInfo(product="foil", version="20261201T000000Z-abcdef", method="patchcore")
    out = []
    for n in range(images):
        key = f"line{n % 4}/2026-12-01/cam{n % 3}/sheet_{n:06d}.png"
        if n % 997 == 0:
            error = ErrorInfo(code="decode_error", message=f"{key}: truncated")
            out.append(Verdict(image=ImageInfo(key=key), model=model, verdict="error", error=error))
            continue
        instances = []
        for k in range(8):
            bad = rng.random() < 0.1
            severity = float(rng.uniform(5, 95)) if bad else 0.0
            level = "critical" if severity >= 70 else "major" if severity >= 40 else "minor"
            defects = (
                [
                    Defect(
                        type=KINDS[int(rng.integers(4))],
                        level=level,
                        severity=severity,
                        box=(10, 10, 20, 20),
                        area_px=400,
                        area_pct=0.5,
                        peak=20.0,
                        mean=18.0,
                    )
                ]
                if bad
                else []
            )
            instances.append(
                Instance(
                    index=k,
                    box=(k * 300.0, 0.0, 448.0, 352.0),
                    score=float(rng.gumbel(14.0, 0.6) + (6.0 if bad else 0.0)),
                    threshold=17.1,
                    confidence=0.5,
                    is_anomalous=bad,
                    severity=severity,
                    level=level if bad else "none",
                    defects=defects,
                    heatmap=f"{key}.{k}.heatmap.png",
                )
            )
        verdict = "defect" if any(i.is_anomalous for i in instances) else "ok"
        out.append(
            Verdict(
                image=ImageInfo(key=key),
                model=model,
                verdict=verdict,
                instances=instances,
                outputs={"heatmap": f"{key}.heatmap.png"},
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    verdicts = batch(args.images)
    summary = Summary(batch_id="bench")
    for v in verdicts:
        summary.add(v)
    facts = ModelFacts(
        version=verdicts[1].model.version, method="patchcore", threshold=17.1, expected_frr=0.01
    )
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_report(LocalStorage(folder), verdicts, summary, facts, "items/")
        written = time.perf_counter() - start
        page_path = Path(folder) / REPORT
        size = page_path.stat().st_size
        first, loaded, filtering = [], [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            for _ in range(args.runs):
                page = browser.new_page()
                start = time.perf_counter()
                page.goto(page_path.as_uri(), wait_until="load")
                loaded.append(1000 * (time.perf_counter() - start))
                first.append(float(page.evaluate("document.body.dataset.firstRender")))
                filtering.append(
                    page.evaluate(
                        """() => { const t = performance.now(); const s = document.getElementById('f-type');
                        s.value = 'structural'; s.dispatchEvent(new Event('change'));
                        return performance.now() - t; }"""
                    )
                )
                page.close()
            browser.close()
    instances = summary.instances
    print(f"batch: {args.images} images, {instances} instances, {summary.anomalous_instances} anomalous")
    print(
        f"report.html: {size / 1e6:.2f} MB ({size / args.images:.0f} B per image), written in {written:.2f} s"
    )
    print(
        f"chromium, from disk (median of {args.runs}): first render {statistics.median(first):.0f} ms "
        f"after navigation, load event {statistics.median(loaded):.0f} ms, "
        f"one filter over every instance {statistics.median(filtering):.0f} ms"
    )


if __name__ == "__main__":
    main()
