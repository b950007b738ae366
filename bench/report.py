"""The batch report at nightly scale, in one run:

* the inspection time of a sheet: ``--sheets`` synthetic 2400x1200 sheets (8 instances) inspected with
  the model of ``make demo`` (TTA on), through the local run, which writes their report too;
* the time to write ``report.html`` for ``--images`` synthetic verdicts of such sheets (a tenth of the
  instances defective, a few failures), as a share of inspecting that many sheets (target: under 5 %),
  and its size;
* in headless chromium, opened from disk: the time to first render (the gallery's first page drawn),
  to the load event, and of one filter over every instance. The 20,000-image page's thumbnails are not
  written (the page loads only the first page's, lazily).

``--screenshot PATH`` saves a picture of the inspected sheets' report (docs/report.png).

    make demo && .venv/bin/python bench/report.py [--images 20000] [--runs 3] [--screenshot docs/report.png]
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


def inspect_sheets(model_dir: Path, template: Path, sheets: int, out: Path) -> float:
    """Seconds per sheet for the local inspect run (its report included) on synthetic sheets."""
    from defectscan.pipeline.images import decode_image
    from defectscan.pipeline.inspection import Inspector
    from defectscan.pipeline.model import AnomalyModel
    from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range
    from defectscan.pipeline.synth import SheetSpec
    from defectscan.producer.inspect_files import run_inspection
    from defectscan.producer.synth_files import write_sheet_images

    model = AnomalyModel.load(model_dir)
    reference = decode_image(template.read_bytes(), str(template))
    segmenter = Segmenter(reference, SegmentOptions(scales=parse_range("0.95:1.05:0.05")))  # as the demo
    keys = write_sheet_images(LocalStorage(out / "in"), sheets, 7, 0.25, SheetSpec())
    info = ModelInfo(product="demo-foil", version=model.version, method=model.config.method)
    facts = ModelFacts.of(model.version, model.config.method, model.calibration)
    start = time.perf_counter()
    run_inspection(
        [(k, out / "in" / k) for k in keys],
        Inspector(model, segmenter, "demo-foil").many,
        info,
        LocalStorage(out / "results"),
        facts=facts,
    )
    return (time.perf_counter() - start) / sheets


def browser_times(page_path: Path, runs: int, screenshot: tuple[Path, Path] | None) -> dict[str, float]:
    """Median first render, load and filter times (ms) of a report in headless chromium."""
    from playwright.sync_api import sync_playwright

    first, loaded, filtering = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        if screenshot is not None:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(screenshot[0].as_uri(), wait_until="networkidle")
            page.screenshot(path=str(screenshot[1]))
            page.close()
        for _ in range(runs):
            page = browser.new_page()
            start = time.perf_counter()
            page.goto(page_path.as_uri(), wait_until="load")
            loaded.append(1000 * (time.perf_counter() - start))
            first.append(float(page.evaluate("document.body.dataset.firstRender")))
            filtering.append(float(page.evaluate(FILTER)))
            page.close()
        browser.close()
    return {k: statistics.median(v) for k, v in (("first", first), ("load", loaded), ("filter", filtering))}


FILTER = """() => { const t = performance.now(); const s = document.getElementById('f-type');
s.value = 'structural'; s.dispatchEvent(new Event('change')); return performance.now() - t; }"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sheets", type=int, default=4)
    parser.add_argument("--model", type=Path, default=Path("demo-output/model"))
    parser.add_argument("--template", type=Path, default=Path("demo-output/good/template.png"))
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    verdicts = batch(args.images)
    summary = Summary(batch_id="bench")
    for v in verdicts:
        summary.add(v)
    facts = ModelFacts(
        version=verdicts[1].model.version, method="patchcore", threshold=17.1, expected_frr=0.01
    )
    with tempfile.TemporaryDirectory() as folder:
        per_sheet = inspect_sheets(args.model, args.template, args.sheets, Path(folder) / "sheets")
        start = time.perf_counter()
        write_report(LocalStorage(folder), verdicts, summary, facts, "items/")
        written = time.perf_counter() - start
        page_path = Path(folder) / REPORT
        size = page_path.stat().st_size
        shot = (Path(folder) / "sheets" / "results" / REPORT, args.screenshot) if args.screenshot else None
        times = browser_times(page_path, args.runs, shot)
    inspection = per_sheet * args.images
    print(f"inspection: {per_sheet:.2f} s per sheet ({args.sheets} sheets, TTA on, their report included)")
    print(
        f"batch: {args.images} images, {summary.instances} instances, {summary.anomalous_instances} anomalous"
    )
    print(
        f"report.html: {size / 1e6:.2f} MB ({size / args.images:.0f} B per image), "
        f"written in {written:.2f} s: "
        f"{written / inspection:.5f} of the batch's inspection time ({inspection / 3600:.1f} h here; "
        "target < 0.05)"
    )
    print(
        f"chromium, from disk (median of {args.runs}): first render {times['first']:.0f} ms "
        "after navigation, "
        f"load event {times['load']:.0f} ms, one filter over every instance {times['filter']:.0f} ms"
    )


if __name__ == "__main__":
    main()
