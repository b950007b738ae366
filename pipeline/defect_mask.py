"""Where each defect type lies on an image: a label mask, its colour picture, and the area per type.

A *type mask* holds one small integer per pixel: 0 where there is no defect, else the 1-based index of
the defect's type in :data:`TYPES`. Instance masks are put back into the image frame with the same pose
as the anomaly maps; where two regions overlap, the later type in :data:`TYPES` wins. The mask PNG
colours every type with :data:`TYPE_COLOURS` on a black background (the colours are also the
``Color`` of the Lookout-compatible output).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
from numpy.typing import NDArray


class Typed(Protocol):
    """Anything with a defect type (a verdict's ``Defect``; this module imports no verdict)."""

    @property
    def type(self) -> str: ...


TYPES = ("other", "color_scratch", "structural", "blurry_text")
BACKGROUND_COLOUR = (0, 0, 0)
TYPE_COLOURS = {  # RGB
    "other": (160, 160, 160),
    "color_scratch": (255, 60, 60),
    "structural": (255, 200, 0),
    "blurry_text": (0, 170, 255),
}


def type_mask(shape: tuple[int, int], graded: Iterable[tuple[Typed, NDArray[np.bool_]]]) -> NDArray[np.uint8]:
    """A ``shape`` label mask with every graded region set to its type's label."""
    labels = np.zeros(shape, np.uint8)
    for defect, mask in graded:
        np.maximum(labels, np.where(mask, TYPES.index(defect.type) + 1, 0).astype(np.uint8), out=labels)
    return labels


def colour_mask(labels: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The RGB picture of a type mask."""
    palette = np.array([BACKGROUND_COLOUR] + [TYPE_COLOURS[t] for t in TYPES], np.uint8)
    return palette[np.minimum(labels, len(TYPES))]


def type_areas(labels: NDArray[np.uint8]) -> dict[str, float]:
    """Percentage of the image each present type covers, in :data:`TYPES` order."""
    counts = np.bincount(labels.ravel(), minlength=len(TYPES) + 1)
    total = max(labels.size, 1)
    return {t: 100.0 * counts[i + 1] / total for i, t in enumerate(TYPES) if counts[i + 1]}


def hex_colour(rgb: tuple[int, int, int]) -> str:
    """``#RRGGBB`` of an RGB triple.

    Example:
        >>> hex_colour((255, 200, 0))
        '#FFC800'
    """
    return "#" + "".join(f"{v:02X}" for v in rgb)
