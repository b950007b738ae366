"""Command-line options shared by several sub-commands."""

from __future__ import annotations

from collections.abc import Callable

import click

from defectscan.pipeline.images import DEFAULT_MAX_PIXELS
from defectscan.pipeline.model_config import DEFAULT_BUDGET_MIN, RUNTIMES
from defectscan.pipeline.search_options import SegmentOptions, parse_range


def segment_options(fn: Callable[..., None]) -> Callable[..., None]:
    """The template-search options shared by ``segment`` and ``inspect``."""
    for option in reversed(
        [
            click.option("--max-instances", default=64, show_default=True, type=click.IntRange(1, 10_000)),
            click.option(
                "--min-score", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True)
            ),
            click.option(
                "--angles",
                default="-5:5:1",
                show_default=True,
                help="Degrees: start:stop:step, a list, or one.",
            ),
            click.option(
                "--scales", default="1", show_default=True, help="Factors: start:stop:step, a list, or one."
            ),
            click.option(
                "--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(1)
            ),
            click.option(
                "--pyramid/--no-pyramid", default=True, show_default=True, help="Coarse-to-fine search."
            ),
        ]
    ):
        fn = option(fn)
    return fn


def auto_options(fn: Callable[..., None]) -> Callable[..., None]:
    """``--auto`` and ``--budget-min``, shared by ``train`` and ``retrain``."""
    fn = click.option(
        "--budget-min",
        default=DEFAULT_BUDGET_MIN,
        show_default=True,
        type=click.FloatRange(min=0, min_open=True),
        help="With --auto: the search's time budget in minutes (costlier candidates past it are skipped).",
    )(fn)
    return click.option(
        "--auto",
        is_flag=True,
        help="Choose the method, image size and layers by measuring candidates on defects planted on "
        "held-out OK images.",
    )(fn)


def pictures_option(fn: Callable[..., None]) -> Callable[..., None]:
    """``--pictures``, shared by ``inspect`` and ``enqueue``."""
    return click.option(
        "--pictures",
        type=click.Choice(["all", "defects", "none"]),
        default="defects",
        show_default=True,
        help="Heatmaps and type masks of every image and instance, of anomalous ones only, or none "
        "(the verdicts are the same).",
    )(fn)


def search_options(
    angles: str, scales: str, min_score: float, max_instances: int, pyramid: bool
) -> SegmentOptions:
    """The template search the options ask for."""
    return SegmentOptions(
        angles=parse_range(angles, "--angles"),
        scales=parse_range(scales, "--scales"),
        min_score=min_score,
        max_instances=max_instances,
        pyramid=pyramid,
    )


def runtime_option(fn: Callable[..., None]) -> Callable[..., None]:
    """``--runtime``: where the networks run (default: ``DEFECTSCAN_RUNTIME``, itself ``auto``)."""
    return click.option(
        "--runtime",
        type=click.Choice(RUNTIMES),
        help="Where the networks run: auto (OpenVINO on a CPU, torch on CUDA), torch or openvino "
        "[default: $DEFECTSCAN_RUNTIME, else auto].",
    )(fn)
