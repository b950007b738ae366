"""Pictures of the planted defects (``pipeline.planted_defects``): each kind on a synthetic print crop and
on a plain textured surface, the defect's exact mask outlined in red beside it.

Usage: ``.venv/bin/python bench/planted_gallery.py [--out docs/planted-defects.jpg] [--seed 3]``
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.planted_defects import KINDS, Placement, placement, plant
from defectscan.pipeline.synth import instance_crops

_CELL = 260  # px: the width of one picture in the gallery


def _surface(seed: int, count: int) -> list[NDArray[np.uint8]]:
    """Brushed, mottled grey surfaces (no print), 256 px square."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        grain = cv2.GaussianBlur(rng.standard_normal((256, 256)).astype(np.float32), (0, 0), 1.2)
        grain = cv2.GaussianBlur(grain, (41, 1), 0) * 90.0
        mottle = cv2.GaussianBlur(rng.standard_normal((256, 256)).astype(np.float32), (0, 0), 12.0) * 250.0
        grey = np.clip(110.0 + grain + mottle, 0, 255).astype(np.uint8)
        out.append(np.repeat(grey[..., None], 3, axis=2))
    return out


def _outlined(image: NDArray[np.uint8], mask: NDArray[np.bool_]) -> NDArray[np.uint8]:
    out = image.copy()
    edge = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edge] = (255, 40, 40)
    return out


def _cell(image: NDArray[np.uint8], label: str) -> NDArray[np.uint8]:
    height = round(image.shape[0] * _CELL / image.shape[1])
    cell = cv2.resize(image, (_CELL, height), interpolation=cv2.INTER_AREA)
    band = np.full((22, _CELL, 3), 255, np.uint8)
    cv2.putText(band, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([band, cell])


def _row(crop: NDArray[np.uint8], kind: str, at: Placement, seed: int, what: str) -> list[NDArray[np.uint8]]:
    try:
        made = plant(crop, kind, at, np.random.default_rng(seed), strength=0.7)
    except InvalidArgumentError:
        blank = np.full_like(crop, 235)
        return [_cell(blank, f"{what}: {kind} cannot be planted"), _cell(blank, "")]
    return [_cell(made.image, f"{what}: {kind}"), _cell(_outlined(made.image, made.mask), "mask")]


def _stack(rows: list[list[NDArray[np.uint8]]]) -> NDArray[np.uint8]:
    width = max(sum(c.shape[1] for c in row) for row in rows)
    lines = []
    for row in rows:
        height = max(c.shape[0] for c in row)
        padded = [np.pad(c, ((0, height - c.shape[0]), (0, 4), (0, 0)), constant_values=255) for c in row]
        line = np.hstack(padded)
        lines.append(
            np.pad(line, ((0, 4), (0, width + 4 * len(row) - line.shape[1]), (0, 0)), constant_values=255)
        )
    return np.vstack(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/planted-defects.jpg"))
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    prints = [c for c, _ in itertools.islice(instance_crops(args.seed), 16)]
    print_at = placement(np.mean(prints, axis=0).round().astype(np.uint8))
    surfaces = _surface(args.seed, 16)
    surface_at = placement(np.mean(surfaces, axis=0).round().astype(np.uint8))
    rows = [
        _row(prints[0], kind, print_at, args.seed, "print")
        + _row(surfaces[0], kind, surface_at, args.seed, "surface")
        for kind in KINDS
    ]
    _, data = cv2.imencode(
        ".jpg", cv2.cvtColor(_stack(rows), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    args.out.write_bytes(data.tobytes())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
