"""``defectscan report``: write a run's ``report.html`` again from its stored verdicts, and give a link
to open it (a presigned one for S3, so a reviewer needs no credentials)."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from defectscan.producer.console import err


@click.command()
@click.argument("location")
@click.option("--out", help="Results root: LOCATION is then a batch id under it (as for enqueue --out).")
@click.option(
    "--url",
    is_flag=True,
    help="Print a link that opens the report: for S3, a page whose every link is presigned.",
)
@click.option(
    "--expires-h",
    type=click.IntRange(1, 168),
    default=72,
    show_default=True,
    help="With --url on S3: how long the links work (at most 7 days).",
)
def report(location: str, out: str | None, url: bool, expires_h: int) -> None:
    """Write report.html for LOCATION: a batch folder (s3://bucket/results/BATCH_ID, or a path) or a
    local inspect output folder. With --url, print a link to open it.

    On S3, --url writes reports/shared-<time>.html beside it, whose thumbnails and links are presigned
    for --expires-h hours, and prints its presigned address."""
    from defectscan.worker.report import REPORT, report_html, stored_run, write_report
    from defectscan.worker.results import require_run
    from defectscan.worker.storage import is_remote, open_storage

    where = f"{out.rstrip('/')}/{location}" if out else location
    store = open_storage(where)
    require_run(store)
    run = stored_run(store)
    if not run.verdicts:
        raise click.UsageError(f"{where} holds no verdicts (a batch folder or an inspect output folder)")
    write_report(store, run.verdicts, run.summary, run.model, run.prefix)
    err.print(f"{len(run.verdicts)} verdicts; {where}/{REPORT}")
    if not url:
        return
    if not is_remote(where):
        click.echo(store.url(REPORT))
        return
    expires = expires_h * 3600
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    shared = f"reports/shared-{stamp}.html"
    page = report_html(
        run.verdicts, run.summary, run.model, run.prefix, links=lambda key: store.url(key, expires)
    )
    store.put(shared, page.encode(), "text/html; charset=utf-8")
    click.echo(store.url(shared, expires))
