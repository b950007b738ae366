"""The registry's sub-commands: ``retrain``, ``models list`` and ``models promote``."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from defectscan.producer.batch_cli import broker_answers
from defectscan.producer.console import err
from defectscan.producer.options import auto_options
from defectscan.worker.app import app
from defectscan.worker.registry import Registry, registry_location
from defectscan.worker.retrain import RetrainBook, RetrainRequest
from defectscan.worker.storage import join_key


def registry_option(fn):  # type: ignore[no-untyped-def]
    return click.option("--registry", help="Registry root (default: $DEFECTSCAN_REGISTRY).")(fn)


@click.command()
@click.argument("product")
@click.option("--ok", help="OK images (s3://... or a folder), read recursively.")
@click.option(
    "--manifest",
    help="A Lookout for Vision manifest (s3://... or a path) instead of --ok: its normal images train, "
    "its anomalous ones count escapes at the threshold.",
)
@click.option("--template", help="Template image: train on aligned crops of every instance.")
@click.option("--aux", help="Auxiliary (augmented) OK images.")
@click.option("--aux-weight", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0))
@click.option(
    "--style-from",
    help="A few OK images of a new condition (camera, light, substrate): the OK images restyled as they "
    "look join the training as auxiliary images at --aux-weight.",
)
@click.option("--val", help="Validation data in MVTec layout (test/<type>/, ground_truth/<type>/).")
@click.option("--promote", type=click.Choice(["auto", "never", "always"]), default="auto", show_default=True)
@click.option("--method", default="patchcore", show_default=True)
@click.option("--image-size", default=256, show_default=True, type=click.IntRange(32, 1024))
@auto_options
@registry_option
def retrain(
    product: str,
    ok: str | None,
    manifest: str | None,
    template: str | None,
    aux: str | None,
    aux_weight: float,
    style_from: str | None,
    val: str | None,
    promote: str,
    method: str,
    image_size: int,
    auto: bool,
    budget_min: float,
    registry: str | None,
) -> None:
    """Retrain PRODUCT on the retrain queue; print the request id (`defectscan status ID` follows it).

    One retrain per product at a time: a second request is refused while one runs."""
    join_key(product)  # a product name is one key segment
    if (ok is None) == (manifest is None):
        raise click.UsageError("give exactly one of --ok and --manifest")
    location = registry_location(registry)
    broker_answers()
    request_id = f"retrain-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
    req = RetrainRequest(
        request_id=request_id,
        product=product,
        registry=location,
        ok=ok,
        manifest=manifest,
        template=template,
        aux=aux,
        aux_weight=aux_weight,
        style_from=style_from,
        val=val,
        promote=promote,
        method=method,
        image_size=image_size,
        auto=auto,
        budget_min=budget_min,
        requested_at=datetime.now(UTC).replace(microsecond=0).isoformat(),
    )
    book = RetrainBook(product, request_id)
    book.acquire()
    try:
        book.update(state="queued", product=product, request=req.model_dump_json())
        app.send_task("defectscan.retrain", args=[req.model_dump()])
    except BaseException:
        book.release()
        raise
    err.print(f"retrain of {product} queued ({promote=}); follow it with: defectscan status {request_id}")
    click.echo(request_id)


@click.group()
def models() -> None:
    """The model registry: versions per product, and the promoted one (LATEST)."""


@models.command(name="list")
@click.argument("product")
@click.option("--json", "as_json", is_flag=True)
@registry_option
def list_versions(product: str, as_json: bool, registry: str | None) -> None:
    """Every version of PRODUCT, oldest first; * marks LATEST."""
    found = Registry(registry_location(registry))
    versions = found.versions(product)
    if not versions:
        found.require(product)
    if as_json:
        click.echo(json.dumps([v.__dict__ for v in versions], indent=2))
        return
    table = Table(title=f"{product}: {len(versions)} versions")
    for column in ("", "version", "method", "created", "image AUROC", "promoted by retrain"):
        table.add_column(column)
    for v in versions:
        validation = v.metrics.get("validation") or {}
        auroc = validation.get("image_auroc") if isinstance(validation, dict) else None
        table.add_row(
            "*" if v.latest else "",
            v.version,
            v.method,
            v.created_at,
            f"{auroc:.4f}" if isinstance(auroc, float) else "-",
            str(v.metrics.get("reason", "-")),
        )
    Console().print(table)


@models.command()
@click.argument("product")
@click.argument("version")
@registry_option
def promote(product: str, version: str, registry: str | None) -> None:
    """Make VERSION the LATEST of PRODUCT (a rollback is a promote of an older version)."""
    reg = Registry(registry_location(registry))
    before = reg.latest(product)
    reg.promote(product, version)
    click.echo(f"{product}: LATEST {before or 'none'} -> {version}")


MODEL_COMMANDS = (retrain, models)
