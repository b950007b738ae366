"""``report.html``: the morning page of a batch or a local run, written beside ``summary.json``.

One self-contained file (no network, no CDN): the batch at a glance (counts by verdict, defect type and
level; a score histogram per product with the threshold marked, as inline SVG; the model version and
its expected false-reject rate; failures with their codes), and a gallery of instances sorted by
severity with filters (verdict, type, level, image prefix), pages, lazy thumbnails (relative links to
the run's own heatmaps, so the page works opened from disk or served from the results' folder) and
keyboard navigation. A reviewer marks instances ``correct``, ``false_reject`` or ``missed_defect``
(and may change the type) and downloads the decisions as ``review.json``
(:mod:`worker.review` records them).

The rows go into the page as compact JSON (one array per instance, image names once), so a
20,000-image batch stays a few megabytes; the page renders one page of the gallery at a time. Built
with Jinja2 (autoescaped); the data leaves Python through ``tojson``, which escapes ``<``, ``>`` and
``&``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel

from defectscan.pipeline.calibration import Calibration
from defectscan.pipeline.errors import DefectscanError
from defectscan.pipeline.outputs import is_verdict_key
from defectscan.pipeline.verdict import Verdict
from defectscan.worker.batch_spec import BATCH_JSON, ITEMS, BatchSpec, manifest_keys
from defectscan.worker.item_keys import item_key
from defectscan.worker.model_cache import model_doc
from defectscan.worker.results import SUMMARY, Summary
from defectscan.worker.storage import Storage, open_storage

log = logging.getLogger("defectscan.report")

REPORT = "report.html"
TYPES = ("blurry_text", "structural", "color_scratch", "other")
LEVELS = ("none", "minor", "major", "critical")
VERDICTS = ("ok", "defect", "error")
BINS = 40
HEATMAP = ".heatmap.png"

_ENV = Environment(
    loader=PackageLoader("defectscan.worker", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


class ModelFacts(BaseModel):
    """What the page says of the model: its version and operating point."""

    version: str | None = None
    method: str | None = None
    threshold: float | None = None
    target_frr: float | None = None
    expected_frr: float | None = None
    frr_interval: tuple[float, float] | None = None

    @classmethod
    def of(cls, version: str | None, method: str | None, calibration: Calibration | None) -> ModelFacts:
        if calibration is None:
            return cls(version=version, method=method)
        return cls(
            version=version,
            method=method,
            threshold=calibration.threshold,
            target_frr=calibration.target_frr,
            expected_frr=calibration.expected_frr,
            frr_interval=calibration.frr_interval,
        )


class Histogram(BaseModel):
    product: str
    threshold: float | None
    low: float
    high: float
    counts: list[int]
    ok_counts: list[int]
    instances: int


def link(path: str) -> str:
    """A relative link to a stored key (each segment quoted, so ``?``, ``#`` and ``%`` stay names)."""
    return quote(path, safe="/")


def report_html(
    verdicts: Sequence[Verdict],
    summary: Summary,
    model: ModelFacts,
    prefix: str = "",
    title: str | None = None,
    links: Callable[[str], str] = link,
) -> str:
    """The page for a run's ``verdicts`` (any order); ``prefix`` is where the verdicts' own files lie
    relative to the page (``items/`` in a batch), ``links`` turns a key into an address (relative by
    default; presigned for a shared page)."""
    images: list[list[object]] = []
    rows: list[list[object]] = []
    relative = links is link  # then a file's address is its image's base address plus its suffix
    for v in verdicts:
        stored = v.image.stored_as or v.image.key
        base = f"{prefix}{stored}"
        images.append(
            [
                v.image.key,
                VERDICTS.index(v.verdict),
                links(base) if relative else None,
                _address(f"{base}.json", base, ".json", links, relative),
                _address(f"{prefix}{v.outputs['heatmap']}", base, HEATMAP, links, relative)
                if "heatmap" in v.outputs
                else 0,
            ]
        )
        for inst in v.instances:
            mask = sum(1 << TYPES.index(t) for t in {d.type for d in inst.defects})
            own = f".{inst.index}{HEATMAP}"
            thumb = _address(f"{prefix}{inst.heatmap}", base, own, links, relative) if inst.heatmap else 0
            level = LEVELS.index(inst.level)
            rows.append(
                [
                    len(images) - 1,
                    inst.index,
                    round(inst.score, 4),
                    round(inst.severity, 1),
                    level,
                    mask,
                    thumb,
                    int(inst.is_anomalous),
                ]
            )
    rows.sort(key=lambda r: (-float(r[3]), -float(r[2])))  # type: ignore[arg-type]
    data = {
        "images": images,
        "rows": rows,
        "types": TYPES,
        "levels": LEVELS,
        "verdicts": VERDICTS,
        "batch": summary.batch_id or "",
    }
    failures = [f.model_dump() for f in summary.failures]
    return _ENV.get_template("report.html.j2").render(
        title=title or (f"defectscan batch {summary.batch_id}" if summary.batch_id else "defectscan run"),
        summary=summary,
        model=model,
        histograms=histograms(verdicts),
        failures=failures,
        data=data,
        created=datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        pct=_pct,
    )


def write_report(
    out: Storage, verdicts: Sequence[Verdict], summary: Summary, model: ModelFacts, prefix: str = ""
) -> bool:
    """Write ``report.html`` into ``out``; a failure is logged and never stops a run or a batch (the
    verdicts and the summary are the record; ``defectscan report`` writes the page again)."""
    try:
        page = report_html(verdicts, summary, model, prefix)
        out.put(REPORT, page.encode(), "text/html; charset=utf-8")
    except Exception:
        log.exception("writing %s failed", REPORT)
        return False
    return True


def batch_model_facts(spec: BatchSpec) -> ModelFacts:
    """A batch's pinned model as its report states it (from its document; the version alone if that
    cannot be read)."""
    try:
        doc = model_doc(open_storage(spec.model), spec.model)
    except DefectscanError as exc:
        log.warning("batch %s: the report names the model version only (%s)", spec.batch_id, exc)
        return ModelFacts(version=spec.model_version)
    return ModelFacts.of(doc.version, doc.config.method, doc.calibration)


class StoredRun(BaseModel):
    """A finished run read back from storage: its verdicts and what the report needs beside them."""

    verdicts: list[Verdict]
    summary: Summary
    model: ModelFacts
    prefix: str


def stored_run(store: Storage) -> StoredRun:
    """The verdicts of a batch folder (``batch.json``: its manifest's inputs, from ``items/``) or of a
    local ``inspect`` output (every verdict JSON under it), with their summary counted again."""
    if store.exists(BATCH_JSON):
        spec = BatchSpec.model_validate_json(store.get(BATCH_JSON))
        items = store.child(ITEMS)
        verdicts = []
        for key in manifest_keys(store):
            try:
                verdicts.append(Verdict.model_validate_json(items.get(f"{item_key(key)}.json")))
            except (DefectscanError, ValueError) as exc:
                log.warning("%s: no readable verdict (%s); left out of the report", key, exc)
        model, prefix, batch_id = batch_model_facts(spec), f"{ITEMS}/", spec.batch_id
    else:
        verdicts = []
        for info in store.objects():
            if is_verdict_key(info.key) and info.key != SUMMARY:
                try:
                    verdicts.append(Verdict.model_validate_json(store.get(info.key)))
                except ValueError:
                    continue  # not a verdict (a segment record, a review)
        first = verdicts[0].model if verdicts else None
        model = ModelFacts(version=first.version, method=first.method) if first else ModelFacts()
        prefix, batch_id = "", None
    summary = Summary(batch_id=batch_id)
    for verdict in verdicts:
        summary.add(verdict)
    return StoredRun(verdicts=verdicts, summary=summary, model=model, prefix=prefix)


def _address(key: str, base: str, suffix: str, links: Callable[[str], str], relative: bool) -> str | int:
    """A file's address in the page's data: ``1`` where the page derives it (its image's base address
    and the ``suffix`` the page knows for that file), so a 20,000-image batch repeats no path."""
    return 1 if relative and key == base + suffix else links(key)


def histograms(verdicts: Sequence[Verdict]) -> list[Histogram]:
    """Per product, instance scores in ``BINS`` bins from the lowest score to the highest (or 1.5x the
    threshold, so the threshold is always on the chart); the share of each bin that is not anomalous."""
    by_product: dict[str, list[tuple[float, bool]]] = {}
    thresholds: dict[str, float] = {}
    for v in verdicts:
        product = v.model.product or "default"
        for inst in v.instances:
            by_product.setdefault(product, []).append((inst.score, inst.is_anomalous))
            thresholds[product] = inst.threshold
    out = []
    for product, pairs in sorted(by_product.items()):
        scores = np.array([s for s, _ in pairs], dtype=np.float64)
        found = thresholds.get(product)
        threshold = found if found is not None and math.isfinite(found) else None
        low, high = float(scores.min()), float(scores.max())
        if threshold is not None:
            low, high = min(low, threshold), max(high, 1.5 * threshold)
        edges = np.linspace(low, high if high > low else low + 1.0, BINS + 1)
        counts, _ = np.histogram(scores, edges)
        ok = np.array([s for s, bad in pairs if not bad], dtype=np.float64)
        ok_counts, _ = np.histogram(ok, edges)
        out.append(
            Histogram(
                product=product,
                threshold=threshold,
                low=float(edges[0]),
                high=float(edges[-1]),
                counts=[int(c) for c in counts],
                ok_counts=[int(c) for c in ok_counts],
                instances=len(pairs),
            )
        )
    return out


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.2f} %"
