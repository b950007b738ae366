"""``defectscan augment`` and ``retrain --style-from``: generated training images from a store's OK
images (:mod:`pipeline.augment`), written beside their manifest, ``augment.json``, which is written
last (its presence marks a complete set)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.augment import generate, generated_sources, manifest, typical_size
from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.images import encode_png
from defectscan.pipeline.nuisance import NuisanceRanges
from defectscan.pipeline.style import DEFAULT_METHOD, Method, Style, fit_style
from defectscan.worker.datasets import read_images
from defectscan.worker.storage import open_storage

AUGMENT_JSON = "augment.json"
SIZE_TOLERANCE = 0.25  # relative, per dimension, between the median sizes of the two sets


def read_set(location: str, what: str) -> tuple[list[NDArray[np.uint8]], list[str]]:
    """The readable images under ``location``; an error where there are none."""
    images, names, skipped = read_images(location)
    if not images:
        detail = f" ({len(skipped)} unreadable: {skipped[0]})" if skipped else ""
        raise InvalidArgumentError(what, f"{location} holds no readable images{detail}")
    return images, names


def style_for(
    ok: Sequence[NDArray[np.uint8]], targets: Sequence[NDArray[np.uint8]], method: Method = DEFAULT_METHOD
) -> Style:
    """The new condition's style, learned from its images ``targets``, for the OK images ``ok``. Their
    typical sizes must agree within :data:`SIZE_TOLERANCE` (sharpness and noise are measured per pixel:
    whole photographs against crops would not compare)."""
    size, target_size = typical_size(ok), typical_size(targets)
    if any(abs(t / o - 1) > SIZE_TOLERANCE for o, t in zip(size, target_size, strict=True)):
        raise InvalidArgumentError(
            "--style-from",
            f"its images are {target_size[1]}x{target_size[0]}, the OK images {size[1]}x{size[0]} (medians): "
            "give images of the new condition cut as the OK images are",
        )
    return fit_style(ok, targets, method)


def augment_location(
    ok: str,
    out: str,
    n: int,
    seed: int = 0,
    style_from: str | None = None,
    kinds: Sequence[str] = (),
    ranges: NuisanceRanges | None = None,
    method: Method = DEFAULT_METHOD,
) -> dict[str, Any]:
    """Write ``n`` generated images from the OK images under ``ok`` to ``out``, then the manifest;
    returns the manifest."""
    ranges = ranges or NuisanceRanges()
    images, names = read_set(ok, "--ok")
    style: Style | None = None
    style_names: list[str] = []
    if style_from:
        targets, style_names = read_set(style_from, "--style-from")
        style = style_for(images, targets, method)
    store = open_storage(out)
    records = []
    for made in generate(list(zip(names, images, strict=True)), n, seed, style, kinds, ranges):
        store.put(made.name, encode_png(made.image), "image/png")
        records.append(made.record())
    doc = manifest(records, seed, style, style_names, kinds, ranges)
    store.put(AUGMENT_JSON, json.dumps(doc, indent=1).encode(), "application/json")
    return doc


def aux_sources(aux: str, names: Sequence[str], ok_names: Sequence[str]) -> list[int]:
    """For auxiliary images read from ``aux`` (their keys ``names``): the index in ``ok_names`` of the OK
    image each was generated from, by the manifest ``defectscan augment`` wrote there, or -1 (no
    manifest, or made from other images)."""
    store = open_storage(aux)
    if not store.exists(AUGMENT_JSON):
        return [-1] * len(names)
    try:
        doc = json.loads(store.get(AUGMENT_JSON))
    except ValueError:
        return [-1] * len(names)
    return generated_sources(doc, names, ok_names) if isinstance(doc, dict) else [-1] * len(names)
