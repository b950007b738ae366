"""``defectscan lookout import``, and Lookout manifests as data sets for ``train`` and ``evaluate``
(:mod:`worker.lookout_import` does the copying)."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import click

from defectscan.producer.console import err


def print_import(report: Any, where: str) -> None:
    """What an import took (by folder) and skipped (by manifest and line), on the terminal."""
    folders = Counter(t.to.rsplit("/", 1)[0] for t in report.taken)
    taken = ", ".join(f"{folder} {n}" for folder, n in sorted(folders.items()))
    err.print(f"imported {len(report.taken)} images ({taken}); {len(report.skipped)} lines skipped")
    for skip in report.skipped[:20]:
        err.print(f"  skipped {skip.manifest} line {skip.line}: {skip.reason}")
    if len(report.skipped) > 20:
        err.print(f"  and {len(report.skipped) - 20} more in {where}/lookout-import.json")


@contextmanager
def staged_manifest(manifest: str | None, role: Literal["train", "test"]) -> Iterator[Path | None]:
    """A manifest's data set in the MVTec layout in a temporary folder (None without a manifest)."""
    if manifest is None:
        yield None
        return
    from defectscan.worker.lookout_import import import_manifests
    from defectscan.worker.storage import LocalStorage

    with tempfile.TemporaryDirectory(prefix="defectscan-manifest-") as folder:
        report = import_manifests([(manifest, role)], LocalStorage(folder))
        print_import(report, folder)
        yield Path(folder)


@click.group()
def lookout() -> None:
    """Migrating from Amazon Lookout for Vision."""


@lookout.command("import")
@click.option(
    "--train", "train_manifests", multiple=True, help="A training dataset's manifest (path or s3://)."
)
@click.option("--test", "test_manifests", multiple=True, help="A test dataset's manifest (path or s3://).")
@click.option("--out", required=True, help="Where the MVTec-layout data set goes (a folder or s3://...).")
def import_project(train_manifests: tuple[str, ...], test_manifests: tuple[str, ...], out: str) -> None:
    """Copy a Lookout project's datasets into the MVTec layout at OUT: normal images of a training
    manifest to train/good, of a test manifest to test/good, anomalous ones to test/<type> with their
    masks in ground_truth/<type>. Lines that cannot be used are reported and skipped."""
    from defectscan.worker.lookout_import import import_manifests
    from defectscan.worker.storage import open_storage

    if not train_manifests and not test_manifests:
        raise click.UsageError("give at least one --train or --test manifest")
    manifests: list[tuple[str, Literal["train", "test"]]] = [(m, "train") for m in train_manifests]
    manifests += [(m, "test") for m in test_manifests]
    report = import_manifests(manifests, open_storage(out))
    print_import(report, out)
    click.echo(f"{out.rstrip('/')}/lookout-import.json")
