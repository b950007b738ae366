"""Generated training images: OK images in a new condition's style (:mod:`pipeline.style`) and with
nuisance variation (:mod:`pipeline.nuisance`), each with a record of what made it.

Image ``j`` of ``n`` comes from source ``j mod len(sources)``, with its own random generator seeded by
``(seed, j)``: restyled when a style is given, then changed by kind ``j mod len(kinds)`` when kinds are
given. The same sources, style, kinds, ranges and seed make the same images, bit for bit, however
many are made and in whatever order they are read. These images train a model as auxiliary images at
a low weight (``--aux-weight``, 0.1 by default, as the method we build on weighted its generated
images).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.nuisance import NuisanceRanges, vary
from defectscan.pipeline.style import Style

MANIFEST_SCHEMA = "defectscan.augment/1"


@dataclass(frozen=True)
class Made:
    """One generated image, its file name and what made it."""

    name: str
    image: NDArray[np.uint8] = field(repr=False)
    source: str
    kind: str
    params: dict[str, Any]

    def record(self) -> dict[str, Any]:
        return {"image": self.name, "source": self.source, "kind": self.kind, "params": self.params}


def typical_size(images: Sequence[NDArray[np.uint8]]) -> tuple[int, int]:
    """The median ``(height, width)`` of ``images``."""
    if not images:
        raise InvalidArgumentError("images", "no images")
    return int(np.median([i.shape[0] for i in images])), int(np.median([i.shape[1] for i in images]))


def generate(
    sources: Sequence[tuple[str, NDArray[np.uint8]]],
    n: int,
    seed: int,
    style: Style | None = None,
    kinds: Sequence[str] = (),
    ranges: NuisanceRanges | None = None,
) -> Iterator[Made]:
    """``n`` generated images from ``sources`` (name, image), see the module docstring."""
    if n < 1:
        raise InvalidArgumentError("--n", "must be at least 1")
    if not sources:
        raise InvalidArgumentError("--ok", "no images")
    if style is None and not kinds:
        raise InvalidArgumentError("--kinds", "give --style-from, --kinds, or both")
    ranges = ranges or NuisanceRanges()
    for j in range(n):
        name, image = sources[j % len(sources)]
        rng = np.random.default_rng([seed, j])
        made, steps, params = image, [], dict[str, Any]()
        if style is not None:
            made = style.apply(made, rng)
            steps.append("style")
        if kinds:
            kind = kinds[j % len(kinds)]
            made, params = vary(made, kind, rng, ranges)
            steps.append(kind)
        stem = PurePosixPath(name).stem
        yield Made(f"{j:05d}-{stem}.{'+'.join(steps)}.png", made, name, "+".join(steps), params)


def manifest(
    records: Sequence[dict[str, Any]],
    seed: int,
    style: Style | None,
    style_from: Sequence[str],
    kinds: Sequence[str],
    ranges: NuisanceRanges,
) -> dict[str, Any]:
    """The augmentation's manifest: how it was asked for, the style's numbers, and each image's record."""
    return {
        "schema": MANIFEST_SCHEMA,
        "seed": seed,
        "count": len(records),
        "style": style.params() if style is not None else None,
        "style_from": list(style_from),
        "kinds": list(kinds),
        "ranges": {k: list(v) for k, v in ranges.model_dump().items()} if kinds else None,
        "images": list(records),
    }


def generated_sources(doc: dict[str, Any], names: Sequence[str], ok_names: Sequence[str]) -> list[int]:
    """For each of the images ``names`` (as read from an augmentation's output): the index in
    ``ok_names`` of the OK image the manifest ``doc`` says it was made from, or -1 (not made from one
    of them, or not in the manifest)."""
    if doc.get("schema") != MANIFEST_SCHEMA:
        return [-1] * len(names)
    index = {name: i for i, name in enumerate(ok_names)}
    made_from = {
        str(r.get("image")): str(r.get("source")) for r in doc.get("images", []) if isinstance(r, dict)
    }
    return [index.get(made_from.get(name, ""), -1) for name in names]
