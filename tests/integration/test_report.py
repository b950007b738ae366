"""The batch report in a real browser (Debian's chromium, driven by Playwright): what it shows, its
filters, pages and keys, the review marks and their download, and that it reaches for nothing but
the run's own files."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from defectscan.pipeline.images import decode_image, encode_png
from defectscan.pipeline.verdict import Defect, ErrorInfo, ImageInfo, Instance, ModelInfo, Verdict
from defectscan.worker.report import REPORT, ModelFacts, histograms, write_report
from defectscan.worker.results import Summary
from defectscan.worker.storage import LocalStorage

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)
HOSTILE = "line 3/</script><script>window.pwned = 1</script>#?.png"  # a name is data, never markup


def _defect(kind: str, severity: float) -> Defect:
    level = "critical" if severity >= 70 else "major" if severity >= 40 else "minor"
    return Defect(
        type=kind,  # type: ignore[arg-type]
        level=level,  # type: ignore[arg-type]
        severity=severity,
        box=(1, 1, 4, 4),
        area_px=16,
        area_pct=1.0,
        peak=20.0,
        mean=18.0,
    )


def _verdicts(out: Path, images: int) -> list[Verdict]:
    """``images`` images of 2 instances each: every 5th image has a defect on its second instance, its
    type and severity cycling; one image failed. Each instance's heatmap is a real PNG under ``out``."""
    rng = np.random.default_rng(0)
    kinds = ["structural", "color_scratch", "blurry_text"]
    picture = encode_png(np.full((8, 8, 3), 200, np.uint8))
    verdicts = []
    for i in range(images):
        key = HOSTILE if i == 7 else f"line {i % 3}/sheet_{i:03d}.png"
        instances = []
        for k in range(2):
            bad = k == 1 and i % 5 == 0
            defects = [_defect(kinds[(i // 5) % 3], 10.0 + (i * 7) % 90)] if bad else []
            heatmap = f"{key}.{k}.heatmap.png"
            (out / heatmap).parent.mkdir(parents=True, exist_ok=True)
            (out / heatmap).write_bytes(picture)
            instances.append(
                Instance(
                    index=k,
                    box=(0, 0, 8, 8),
                    score=float(20 + rng.random()) if bad else float(10 + rng.random() * 5),
                    threshold=17.0,
                    confidence=0.9 if bad else 0.1,
                    is_anomalous=bad,
                    severity=defects[0].severity if bad else 0.0,
                    level=defects[0].level if bad else "none",
                    defects=defects,
                    heatmap=heatmap,
                )
            )
        verdict = "defect" if any(x.is_anomalous for x in instances) else "ok"
        verdicts.append(
            Verdict(
                image=ImageInfo(key=key),
                model=ModelInfo(product="foil", version="v7", method="patchcore"),
                verdict=verdict,
                instances=instances,
                outputs={"heatmap": f"{key}.heatmap.png"},
            )
        )
    verdicts.append(
        Verdict(
            image=ImageInfo(key="broken.png"),
            model=ModelInfo(product="foil", version="v7", method="patchcore"),
            verdict="error",
            error=ErrorInfo(code="decode_error", message="broken.png: not an image"),
        )
    )
    return verdicts


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture()
def report(tmp_path: Path) -> tuple[Path, list[Verdict]]:
    verdicts = _verdicts(tmp_path, 150)
    summary = Summary(batch_id="nightly-2026-12-01")
    for v in verdicts:
        summary.add(v)
    facts = ModelFacts(
        version="v7", method="patchcore", threshold=17.0, expected_frr=0.0123, frr_interval=(0.005, 0.03)
    )
    assert write_report(LocalStorage(tmp_path), verdicts, summary, facts)
    return tmp_path / REPORT, verdicts


def _open(browser: Any, page_path: Path) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    reached: list[str] = []
    page.on("request", lambda request: reached.append(request.url))
    page.goto(page_path.as_uri())
    page.wait_for_selector(".card")
    return context, page, reached


def test_the_page_shows_the_batch_and_its_gallery_from_disk(
    browser: Any, report: tuple[Path, list[Verdict]]
) -> None:
    path, verdicts = report
    context, page, reached = _open(browser, path)
    try:
        anomalous = sorted(
            (i for v in verdicts for i in v.instances if i.is_anomalous),
            key=lambda i: (-i.severity, -i.score),
        )
        assert page.text_content("#count-images") == str(len(verdicts))
        assert page.text_content("#count-error") == "1" and page.text_content("#count-defect") == "30"
        assert "1.23 %" in (page.text_content("#expected-frr") or "")
        assert "decode_error" in (page.text_content("#failures") or "")
        assert page.locator(".histogram line.threshold").count() == 1
        assert page.text_content("#shown") == f"{2 * 150} of {2 * 150} instances"
        first = page.locator(".card").first
        assert f"severity {anomalous[0].severity:g}" in (first.text_content() or "")
        assert page.locator(".card").count() == 60  # one page at a time
        assert page.evaluate("window.pwned") is None  # the hostile name stayed text
        page.fill("#f-prefix", "line 3/")
        assert HOSTILE in (page.locator(".card .key").first.text_content() or "")
        page.fill("#f-prefix", "")
        page.select_option("#f-type", "color_scratch")
        wanted = sum(d.type == "color_scratch" for v in verdicts for i in v.instances for d in i.defects)
        assert page.text_content("#shown") == f"{wanted} of 300 instances"
        page.select_option("#f-type", "")
        page.select_option("#f-verdict", "anomalous")
        assert page.text_content("#shown") == f"{len(anomalous)} of 300 instances"
        page.select_option("#f-level", "critical")
        critical = sum(i.level == "critical" for i in anomalous)
        assert page.text_content("#shown") == f"{critical} of 300 instances"
        # thumbnails load from the run's own files, and nothing else is fetched
        page.select_option("#f-level", "")
        page.wait_for_function("document.querySelector('.card img').naturalWidth > 0")
        assert reached and all(url.startswith("file://") for url in reached)
        assert float(page.evaluate("document.body.dataset.firstRender")) > 0
    finally:
        context.close()


def test_a_reviewer_marks_with_keys_and_downloads_the_decisions(
    browser: Any, report: tuple[Path, list[Verdict]], tmp_path: Path
) -> None:
    path, verdicts = report
    context, page, _ = _open(browser, path)
    try:
        page.select_option("#f-verdict", "anomalous")
        page.fill("#reviewer", "ana")
        page.dispatch_event("#reviewer", "change")
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("f")  # the first (most severe) instance: a false reject
        page.keyboard.press("j")
        page.keyboard.press("j")
        page.keyboard.press("c")  # the third: correct
        assert "2 reviewed" in (page.text_content("#reviewed") or "")
        third = page.locator(".card").nth(2)
        third.locator("select").select_option("structural")  # the type as the reviewer sees it
        page.keyboard.press("n")
        assert (page.text_content("#page") or "").startswith("page 1")  # 30 anomalous: one page only
        with page.expect_download() as download:
            page.click("#export")
        saved = tmp_path / "review.json"
        download.value.save_as(saved)
        doc = json.loads(saved.read_text())
        anomalous = sorted(
            ((v.image.key, i) for v in verdicts for i in v.instances if i.is_anomalous),
            key=lambda p: (-p[1].severity, -p[1].score),
        )
        assert doc["schema"] == "defectscan.review/1" and doc["batch_id"] == "nightly-2026-12-01"
        assert doc["reviewer"] == "ana"
        got = {(d["key"], d["instance"]): (d["decision"], d.get("type")) for d in doc["decisions"]}
        assert got == {
            (anomalous[0][0], anomalous[0][1].index): ("false_reject", None),
            (anomalous[2][0], anomalous[2][1].index): ("correct", "structural"),
        }
        page.reload()  # the marks survive a reload (kept in the browser until downloaded)
        page.wait_for_selector(".card")
        assert "2 reviewed" in (page.text_content("#reviewed") or "")
    finally:
        context.close()


def test_histogram_bins_hold_every_instance_and_the_threshold() -> None:
    verdicts = [
        Verdict(
            image=ImageInfo(key=f"{i}.png"),
            model=ModelInfo(product="label", method="patchcore"),
            verdict="ok",
            instances=[
                Instance(
                    index=0,
                    box=(0, 0, 1, 1),
                    score=float(i),
                    threshold=30.0,
                    confidence=0.1,
                    is_anomalous=False,
                )
            ],
        )
        for i in range(10)
    ]
    (h,) = histograms(verdicts)
    assert h.product == "label" and sum(h.counts) == 10 == sum(h.ok_counts)
    assert h.low == 0.0 and h.high == 45.0 and h.low <= h.threshold <= h.high  # type: ignore[operator]


def test_report_rebuilds_a_run_in_s3_and_shares_it_through_presigned_links(
    browser: Any, env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from defectscan.producer.cli import cli
    from defectscan.worker.storage import open_storage

    local = tmp_path / "run"
    local.mkdir()
    verdicts = _verdicts(local, 12)
    store = open_storage(f"s3://{bucket}/results/run-1")
    for v in verdicts:
        store.put(f"{v.image.key}.json", v.to_json(), "application/json")
    for path in local.rglob("*.png"):
        store.put(path.relative_to(local).as_posix(), path.read_bytes(), "image/png")
    store.put("segments/sheet.json", b'{"schema": "defectscan.segments/1"}')  # not a verdict: skipped
    result = CliRunner().invoke(cli, ["report", f"s3://{bucket}/results/run-1", "--url", "--expires-h", "2"])
    assert result.exit_code == 0, result.output
    link = result.stdout.strip().splitlines()[-1]
    assert (
        link.startswith(env["AWS_ENDPOINT_URL"])
        and "X-Amz-Signature" in link
        and "X-Amz-Expires=7200" in link
    )
    assert store.exists("report.html")  # the plain page too, with relative links
    context = browser.new_context()
    page = context.new_page()
    reached: list[str] = []
    page.on("request", lambda request: reached.append(request.url))
    try:
        page.goto(link)
        page.wait_for_selector(".card")
        assert page.text_content("#count-images") == str(len(verdicts))
        page.wait_for_function("document.querySelector('.card img').naturalWidth > 0")  # presigned thumbnail
        assert all(url.startswith(env["AWS_ENDPOINT_URL"]) and "X-Amz-Signature" in url for url in reached)
    finally:
        context.close()


def test_from_the_page_to_the_registry_open_mark_download_apply(
    browser: Any, sheets: list[Any], template: np.ndarray, tmp_path: Path
) -> None:
    """A batch folder of real segmented sheets: open an instance from the page, mark two decisions,
    download them, apply the file, and find the aligned crops in the product's feedback folder."""
    from click.testing import CliRunner

    from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range
    from defectscan.producer.cli import cli
    from defectscan.worker.batch_spec import BatchSpec

    inputs, batch = tmp_path / "inputs", tmp_path / "results" / "b1"
    segmenter = Segmenter(template, SegmentOptions(angles=parse_range("-3:3:1")))
    store = LocalStorage(batch)
    picture = encode_png(np.full((8, 8, 3), 90, np.uint8))
    verdicts, crops = [], {}
    for n, sheet in enumerate(sheets[:2]):
        key = f"cam1/sheet_{n}.png"
        LocalStorage(inputs).put(key, encode_png(sheet.image))
        found = segmenter.find(sheet.image)
        instances = []
        for k, (det, crop) in enumerate(zip(found, segmenter.crops(sheet.image, found), strict=True)):
            crops[(key, k)] = crop
            store.put(f"items/{key}.{k}.heatmap.png", picture)
            bad = k < 2  # the two most severe instances of each sheet are rejected
            instances.append(
                Instance(
                    index=k,
                    box=tuple(round(v, 2) for v in det.box),  # as a verdict keeps them
                    angle=round(det.pose.angle, 4),
                    scale=round(det.pose.scale, 5),
                    score=25.0 - k - n if bad else 10.0,
                    threshold=17.0,
                    confidence=0.9 if bad else 0.1,
                    is_anomalous=bad,
                    severity=60.0 - 10 * k - n if bad else 0.0,
                    level="major" if bad else "none",
                    defects=[_defect("structural", 60.0 - 10 * k - n)] if bad else [],
                    heatmap=f"{key}.{k}.heatmap.png",
                )
            )
        outputs = {}
        if n == 1:  # this sheet kept its anomaly map (--save-maps): a hot square on instance 0's centre
            amap = np.zeros(sheet.image.shape[:2], np.float32)
            cx, cy = int(found[0].pose.cx), int(found[0].pose.cy)
            amap[cy - 20 : cy + 21, cx - 20 : cx + 21] = 30.0
            buffer = io.BytesIO()
            np.save(buffer, amap, allow_pickle=False)
            outputs["map"] = f"{key}.map.npy"
            store.put(f"items/{key}.map.npy", buffer.getvalue())
        verdicts.append(
            Verdict(
                image=ImageInfo(key=key),
                model=ModelInfo(product="foil", version="v1", method="patchcore"),
                verdict="defect",
                instances=instances,
                outputs=outputs,
            )
        )
        store.put(f"items/{key}.json", verdicts[-1].to_json())
    store.put("template.png", encode_png(template))
    spec = BatchSpec(
        batch_id="b1", inputs=str(inputs), out=str(tmp_path / "results"), model="m", model_version="v1",
        product="foil", template=True, created_at="2026-12-01T00:00:00Z",
    )  # fmt: skip
    store.put("batch.json", spec.to_json())
    summary = Summary(batch_id="b1")
    for v in verdicts:
        summary.add(v)
    assert write_report(store, verdicts, summary, ModelFacts(version="v1"), "items/")

    context, page, _ = _open(browser, batch / REPORT)
    try:
        with context.expect_page() as opened:  # open an instance: its heatmap in a new tab
            page.locator(".card img").first.click()
        assert opened.value.url.endswith("items/cam1/sheet_0.png.0.heatmap.png")
        page.bring_to_front()
        page.locator(".card").nth(0).locator("button[data-decision=false_reject]").click()
        page.locator(".card").nth(1).locator("button[data-decision=correct]").click()
        with page.expect_download() as download:
            page.click("#export")
        saved = tmp_path / "review.json"
        download.value.save_as(saved)
    finally:
        context.close()
    result = CliRunner().invoke(
        cli, ["review", "apply", str(saved), str(batch), "--registry", str(tmp_path / "models")]
    )
    assert result.exit_code == 0, result.output
    (recorded,) = (batch / "review").glob("*.json")
    decisions = {
        (d["key"], d["instance"], d["decision"]) for d in json.loads(recorded.read_text())["decisions"]
    }
    assert decisions == {("cam1/sheet_0.png", 0, "false_reject"), ("cam1/sheet_1.png", 0, "correct")}
    feedback = tmp_path / "models" / "foil" / "feedback"
    ok = feedback / "ok" / "b1" / "cam1__sheet_0.png.0.png"
    defect = feedback / "defects" / "b1" / "cam1__sheet_1.png.0.png"
    assert ok.is_file() and defect.is_file() and (defect.parent / "cam1__sheet_1.png.0_mask.png").is_file()
    for path, source in ((ok, ("cam1/sheet_0.png", 0)), (defect, ("cam1/sheet_1.png", 0))):
        got = decode_image(path.read_bytes(), path.name).astype(np.int16)
        want = crops[source].astype(np.int16)  # the crop segmentation cut, up to the verdict's rounding
        assert got.shape == want.shape and np.abs(got - want).mean() < 1.0
    mask = decode_image((defect.parent / "cam1__sheet_1.png.0_mask.png").read_bytes(), "mask")[..., 0] > 0
    height, width = mask.shape
    assert mask[height // 2, width // 2] and 1500 < mask.sum() < 2000  # the map's 41x41 square, not a box
