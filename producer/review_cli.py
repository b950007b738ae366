"""``defectscan review``: record reviewers' decisions on a run, from the command line or from the
report's ``review.json``, and feed confirmed ones back to the product's registry (:mod:`worker.review`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import click

from defectscan.producer.console import err


class _DefaultSet(click.Group):
    """``defectscan review LOCATION --set ...`` is ``defectscan review set LOCATION --set ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["set", *args]
        return super().parse_args(ctx, args)


_common = [
    click.option("--out", help="Results root: the batch is then <out>/<batch id> (as for enqueue --out)."),
    click.option("--reviewer", help="Who decided (recorded with the decisions)."),
    click.option(
        "--feedback/--no-feedback",
        default=True,
        show_default=True,
        help="Copy confirmed crops to <registry>/<product>/feedback/ (a batch of a product).",
    ),
    click.option("--registry", help="Model registry root (default: DEFECTSCAN_REGISTRY)."),
]


def _options(fn: Any) -> Any:
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.group(cls=_DefaultSet)
def review() -> None:
    """Record decisions on a run's verdicts: correct, false_reject or missed_defect.

    \b
    defectscan review LOCATION --set KEY[:INSTANCE]=DECISION[:TYPE] ...
    defectscan review apply review.json [LOCATION]
    """


@review.command("set")
@click.argument("location")
@click.option(
    "--set",
    "decisions",
    multiple=True,
    required=True,
    help="KEY[:INSTANCE]=correct|false_reject|missed_defect[:TYPE]; without INSTANCE, every instance.",
)
@_options
def set_decisions(
    location: str,
    decisions: tuple[str, ...],
    out: str | None,
    reviewer: str | None,
    feedback: bool,
    registry: str | None,
) -> None:
    """Record decisions given on the command line for LOCATION (a batch id with --out, a batch folder,
    or a local inspect output)."""
    from defectscan.worker.review import Review, parse_decision

    where = f"{out.rstrip('/')}/{location}" if out else location
    _record(where, Review(decisions=[parse_decision(d) for d in decisions]), reviewer, feedback, registry)


@review.command("apply")
@click.argument("review_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("location", required=False)
@_options
def apply(
    review_file: Path,
    location: str | None,
    out: str | None,
    reviewer: str | None,
    feedback: bool,
    registry: str | None,
) -> None:
    """Record the decisions of REVIEW_FILE (the report's download) for LOCATION, or for the batch it
    names under --out."""
    from defectscan.worker.review import Review

    try:
        submission = Review.model_validate_json(review_file.read_bytes())
    except ValueError as exc:
        raise click.UsageError(f"{review_file} is not a review.json ({exc})") from None
    if location is None:
        if not (out and submission.batch_id):
            raise click.UsageError("give LOCATION, or --out with a review.json that names its batch")
        location = submission.batch_id
    where = f"{out.rstrip('/')}/{location}" if out else location
    _record(where, submission, reviewer, feedback, registry)


def _record(where: str, submission: Any, reviewer: str | None, feedback: bool, registry: str | None) -> None:
    from defectscan.worker.batch_spec import BATCH_JSON, BatchSpec
    from defectscan.worker.registry import registry_location
    from defectscan.worker.results import require_run
    from defectscan.worker.review import feed_back, in_force, record, reviews
    from defectscan.worker.settings import settings
    from defectscan.worker.storage import open_storage

    store = open_storage(where)
    require_run(store)
    key, named = record(store, submission, reviewer)
    calls = Counter(d.decision for d in submission.decisions)
    err.print(f"recorded {sum(calls.values())} decisions ({dict(calls)}) as {where}/{key}")
    if not feedback:
        return
    if not store.exists(BATCH_JSON) or not BatchSpec.model_validate_json(store.get(BATCH_JSON)).product:
        err.print("no feedback: not a batch of a named product (enqueue --product)")
        return
    if not (registry or settings().registry):
        err.print("no feedback: no registry (--registry or DEFECTSCAN_REGISTRY)")
        return
    verdicts = {k: v for (k, _), v in named.items()}
    decided = {pair: d for pair, d in in_force(reviews(store), verdicts).items() if pair in named}
    fed = feed_back(store, decided, named, registry_location(registry))
    err.print(f"feedback: {len(fed.ok)} OK crops, {len(fed.defects)} defect crops")
    for reason in fed.skipped:
        err.print(f"  left out {reason}")
