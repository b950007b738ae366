"""The region map of a product: where its print is, its edges, its inside, the substrate, and its text.

Derived from the model's reference image (the mean aligned OK crop), once per model:

1. **Structure mask** (the printed foreground): Otsu's threshold on the grey reference. Which side is
   the print is decided by the crop's border: the substrate is the class most of the one-pixel border
   belongs to (a template is cut with margin around its print).
2. **Edge band**: structure pixels within ``edge_px`` of the substrate, and substrate pixels within
   ``edge_px`` of the structure (a morphological gradient of the mask, ``2 * edge_px + 1`` wide).
3. **Interior**: structure pixels not in the edge band. **Background**: the rest of the substrate.
4. **Text**: glyphs are small, dense connected components of the structure mask that stand in a row.
   Components smaller than ``text_max_height`` of the crop's height and with a fill ratio (area over
   box area) of at least 0.15 are candidates; two candidates join a line when their vertical centres
   differ by less than half the taller one's height, their heights by less than a factor of 2, and the
   horizontal gap between their boxes is less than 1.5 times the taller height. A line of at least 3
   glyphs whose vertical centres spread (std) by less than 0.15 of the median glyph height, and of
   which at least 60 % are within 15 % of that median height (letters share a cap or x-height; an arc of
   rays chains up too, but its pieces differ in height), is text. Its region is the line's bounding box
   grown by a quarter of its height. Text takes precedence over the other classes.

A user can override the map with a PNG in the model directory (``regions.png``) whose colours are the
class colours of :data:`COLOURS`; any other colour is background.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.images import to_gray

BACKGROUND, INTERIOR, EDGE, TEXT = 0, 1, 2, 3
CLASSES = ("background", "interior", "edge", "text")
COLOURS = {  # RGB of each class in regions.png
    BACKGROUND: (0, 0, 0),
    INTERIOR: (0, 160, 255),
    EDGE: (255, 200, 0),
    TEXT: (255, 0, 160),
}


@dataclass(frozen=True)
class RegionMap:
    """Per-pixel class labels (``uint8``, see :data:`CLASSES`) and the structure mask, crop-sized."""

    labels: NDArray[np.uint8]
    structure: NDArray[np.bool_]

    def fraction(self, mask: NDArray[np.bool_], cls: int) -> float:
        """The share of ``mask``'s pixels that lie in class ``cls``."""
        total = int(mask.sum())
        return float((self.labels[mask] == cls).sum()) / total if total else 0.0

    def to_png_rgb(self) -> NDArray[np.uint8]:
        out = np.zeros((*self.labels.shape, 3), np.uint8)
        for cls, colour in COLOURS.items():
            out[self.labels == cls] = colour
        return out


def structure_mask(reference: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """The printed foreground of ``reference`` (RGB), by Otsu and the border's majority (see above)."""
    gray = np.clip(np.rint(to_gray(reference)), 0, 255).astype(np.uint8)
    _, above = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    border = np.concatenate([above[0], above[-1], above[:, 0], above[:, -1]])
    substrate_is_bright = border.mean() > 0.5
    return np.asarray(above == 0 if substrate_is_bright else above == 1)


def text_mask(structure: NDArray[np.bool_], text_max_height: float = 0.2) -> NDArray[np.bool_]:
    """Text lines among the structure's connected components (the rule in the module docstring)."""
    height = structure.shape[0]
    count, _, stats, _ = cv2.connectedComponentsWithStats(structure.astype(np.uint8), connectivity=8)
    glyphs = [
        (int(x), int(y), int(w), int(h))
        for x, y, w, h, area in stats[1:count]
        if 3 <= h <= text_max_height * height and area >= 0.15 * w * h and w <= 3 * h and h <= 8 * w
    ]
    parent = list(range(len(glyphs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (xa, ya, wa, ha) in enumerate(glyphs):
        for j in range(i + 1, len(glyphs)):
            xb, yb, wb, hb = glyphs[j]
            tall = max(ha, hb)
            same_row = abs((ya + ha / 2) - (yb + hb / 2)) < tall / 2 and max(ha, hb) < 2 * min(ha, hb)
            gap = max(xa, xb) - min(xa + wa, xb + wb)
            if same_row and gap < 1.5 * tall:
                parent[root(i)] = root(j)
    lines: dict[int, list[tuple[int, int, int, int]]] = {}
    for i, glyph in enumerate(glyphs):
        lines.setdefault(root(i), []).append(glyph)
    out = np.zeros(structure.shape, bool)
    for members in lines.values():
        centres = np.array([y + h / 2 for _, y, _, h in members])
        heights = np.array([h for _, _, _, h in members], float)
        typical = float(np.median(heights))
        same_size = float(np.mean(np.abs(heights - typical) <= 0.15 * typical))
        if len(members) < 3 or centres.std() > 0.15 * typical or same_size < 0.6:
            continue  # not a row of same-size glyphs (an arc of rays chains up too)
        x0 = min(x for x, _, _, _ in members)
        y0 = min(y for _, y, _, _ in members)
        x1 = max(x + w for x, _, w, _ in members)
        y1 = max(y + h for _, y, _, h in members)
        grow = max(1, (y1 - y0) // 4)
        out[max(y0 - grow, 0) : y1 + grow, max(x0 - grow, 0) : x1 + grow] = True
    return out


def region_map(reference: NDArray[np.uint8], edge_px: int = 3, text_max_height: float = 0.2) -> RegionMap:
    """The region map of a product from its reference image (RGB, crop-sized)."""
    structure = structure_mask(reference)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * edge_px + 1, 2 * edge_px + 1))
    edge = cv2.morphologyEx(structure.astype(np.uint8), cv2.MORPH_GRADIENT, kernel) > 0
    labels = np.full(structure.shape, BACKGROUND, np.uint8)
    labels[structure] = INTERIOR
    labels[edge] = EDGE
    labels[text_mask(structure, text_max_height)] = TEXT
    return RegionMap(labels, structure)


def from_png_rgb(image: NDArray[np.uint8], reference: NDArray[np.uint8]) -> RegionMap:
    """A user's labelled region PNG (class colours of :data:`COLOURS`) as a region map."""
    if image.shape[:2] != reference.shape[:2]:
        image = np.asarray(
            cv2.resize(image, (reference.shape[1], reference.shape[0]), interpolation=cv2.INTER_NEAREST)
        )
    labels = np.full(image.shape[:2], BACKGROUND, np.uint8)
    for cls, colour in COLOURS.items():
        labels[np.all(image == np.array(colour, np.uint8), axis=-1)] = cls
    return RegionMap(labels, structure_mask(reference))
