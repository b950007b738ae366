"""``defectscan augment``: generated training images, in a new condition's style and with nuisance
variation, for ``train --aux`` / ``retrain --aux`` at a low weight."""

from __future__ import annotations

from typing import cast

import click

from defectscan.producer.console import err


@click.command()
@click.option("--ok", "ok", required=True, help="OK images of the old condition (a folder or s3://).")
@click.option("--out", required=True, help="Where the generated images and augment.json go.")
@click.option("--n", "count", default=100, show_default=True, type=click.IntRange(1), help="Images to make.")
@click.option(
    "--style-from",
    help="A few OK images of the new condition (5-10 do), cut as the OK images are: their look is learned "
    "and put on the OK images.",
)
@click.option(
    "--kinds",
    default="",
    help="Nuisance variation, comma-separated: illumination, colour, blur, noise, jpeg, warp.",
)
@click.option("--range", "ranges", multiple=True, help="KIND=LOW:HIGH, a kind's range (repeatable).")
@click.option(
    "--style-method",
    default="histogram",
    show_default=True,
    type=click.Choice(["histogram", "stats"]),
    help="How colours are mapped (see docs/how-it-works.md).",
)
@click.option("--seed", default=0, show_default=True, type=int)
def augment(
    ok: str,
    out: str,
    count: int,
    style_from: str | None,
    kinds: str,
    ranges: tuple[str, ...],
    style_method: str,
    seed: int,
) -> None:
    """Make N training images from the OK images: restyled as --style-from's images look (a new camera,
    light or substrate), and/or varied by --kinds within --range. Each image's source, kind and
    parameters go to OUT/augment.json; the same inputs and seed make the same images.

    Train with them as auxiliary images: train --aux OUT --aux-weight 0.1."""
    from defectscan.pipeline.nuisance import NuisanceRanges, parse_kinds
    from defectscan.pipeline.style import Method
    from defectscan.worker.augmentation import augment_location

    chosen = parse_kinds(kinds)
    limits = NuisanceRanges()
    for text in ranges:
        limits = limits.changed(text)
    method = cast(Method, style_method)  # click.Choice checked it
    doc = augment_location(ok, out, count, seed, style_from, chosen, limits, method)
    made = f"{doc['count']} images in {out}"
    if doc["style"]:
        s = doc["style"]
        made += (
            f"; style of {len(doc['style_from'])} images ({s['method']}): focus {s['focus']:+.2f}, "
            f"noise added {s['noise_sigma']:.2f} (grain {s['noise_grain']:.2f} px), "
            f"{len(s['lighting'])} lights"
        )
    err.print(f"augment: {made}; manifest {out.rstrip('/')}/augment.json", highlight=False)
