"""``defectscan threshold``: move a model's operating point without retraining, or see what moving it
would do on a labelled folder."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from defectscan.pipeline.model_doc import CalibrationScores, recalibrated
from defectscan.pipeline.saved_model import doc_files
from defectscan.producer.console import err
from defectscan.worker.model_cache import model_doc, registry_version
from defectscan.worker.storage import open_storage


@click.command()
@click.argument("model")
@click.option(
    "--target-frr",
    type=click.FloatRange(0.0, 0.5, min_open=True, max_open=True),
    help="Set the threshold for this share of good parts rejected (from its out-of-sample OK scores).",
)
@click.option("--value", type=float, help="Set the threshold to this image score.")
@click.option(
    "--report",
    "report_data",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="An MVTec-layout folder: print the rates a range of thresholds would give on it.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("threshold-report.png"),
    show_default=True,
    help="With --report: where the histogram picture goes.",
)
@click.option("--promote", is_flag=True, help="For a registry version: promote the new version too.")
@click.option(
    "--reviews",
    multiple=True,
    help="A reviewed run (batch folder or inspect output) of this model: its reviewed instances join "
    "the scores the threshold is set from (repeatable).",
)
def threshold(
    model: str,
    target_frr: float | None,
    value: float | None,
    report_data: Path | None,
    plot: Path,
    promote: bool,
    reviews: tuple[str, ...],
) -> None:
    """Set the operating point of MODEL (a model directory, or a registry version such as
    s3://bucket/models/PRODUCT@latest), or report on one (--report DATA).

    A model directory is rewritten in place; a registry version gets a new version with the same
    weights (batches that pinned the old one keep it), promoted only with --promote."""
    if sum(x is not None for x in (target_frr, value, report_data)) != 1:
        raise click.UsageError("give exactly one of --target-frr, --value and --report")
    if report_data is not None:
        _report(model, report_data, plot)
        return
    pinned = registry_version(model)
    if pinned is None:
        store = open_storage(model)
        doc = model_doc(store, model)
        new = recalibrated(doc, target_frr, value, _reviewed(reviews, doc.version))
        for name, data, content_type in doc_files(new):
            store.put(name, data, content_type)
        where = model
    else:
        registry, product, version = pinned
        doc = model_doc(registry.store.child(f"{product}/{version}"), f"{product}@{version}")
        new = recalibrated(doc, target_frr, value, _reviewed(reviews, doc.version))
        registry.derive(product, version, new)
        where = registry.model_location(product, new.version)
        if promote:
            registry.promote(product, new.version)
    old, cal = doc.calibration, new.calibration
    expected = f"; expected false-reject rate {cal.expected_frr:.2%}" if cal.expected_frr is not None else ""
    if cal.frr_interval is not None:
        expected += f" (90 %: {cal.frr_interval[0]:.2%}-{cal.frr_interval[1]:.2%})"
    if cal.defect_count and cal.escapes is not None:
        expected += f"; escapes {cal.escapes} of {cal.defect_count} labelled defects"
    err.print(f"threshold {old.threshold:.5g} -> {cal.threshold:.5g}{expected}; {where}")
    click.echo(new.version)


def _reviewed(locations: tuple[str, ...], version: str) -> CalibrationScores | None:
    """The scores of reviewed runs of model ``version``, as the document keeps them."""
    if not locations:
        return None
    from defectscan.worker.review import reviewed_scores

    scores = CalibrationScores()
    for location in locations:
        found = reviewed_scores(open_storage(location), version)
        scores.reviewed_ok += found.ok
        scores.reviewed_defects += found.defects
        left = f"; {found.unreviewed_rejects} rejected instances without a decision left out"
        err.print(f"{location}: {len(found.ok)} good, {len(found.defects)} defective instances{left}")
    return scores


def _report(model: str, data: Path, plot: Path) -> None:
    from defectscan.pipeline.threshold_report import report_png, report_rows
    from defectscan.worker.datasets import mvtec_test_items
    from defectscan.worker.evaluation import score_items
    from defectscan.worker.model_cache import ModelCache, resolve_model

    location, version = resolve_model(model)
    loaded = ModelCache(maxsize=1).get(location, version)
    samples, failures, _ = score_items(loaded, mvtec_test_items(data))
    for failure in failures:
        err.print(f"skipped {failure.get('subject', failure)}")
    good = [s.score for s in samples if s.kind == "good"]
    bad = [s.score for s in samples if s.kind != "good"]
    if not good or not bad:
        raise click.UsageError(f"{data} needs good and defective test images (test/good/, test/<type>/)")
    cal = loaded.calibration
    rows = report_rows(good, bad, cal.threshold, loaded.calibration_scores, current_target=cal.target_frr)
    table = Table(title=f"{version} on {data}: {len(good)} good, {len(bad)} defective")
    table.add_column("threshold for", no_wrap=True)
    for column in ("threshold", "expected FRR", "FRR here", "escapes here", "oracle escapes"):
        table.add_column(column, justify="right")
    for row in rows:
        expected = f"{row.expected_frr:.2%}" if row.expected_frr is not None else "-"
        table.add_row(
            f"[bold]{row.label}[/bold]" if row.current else row.label,
            f"{row.threshold:.5g}",
            expected,
            f"{row.frr:.2%}",
            f"{row.escape_rate:.2%}",
            f"{row.oracle_escape_rate:.2%}",
        )
    Console().print(table)
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot.write_bytes(report_png(good, bad, rows, f"{version}: image scores on {data.name}"))
    err.print(f"histograms: {plot}")
