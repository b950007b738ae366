"""Pictures for people: the input with its anomaly map as a colour overlay and region outlines.

The overlay colours the map relative to the threshold: below 0.8 of the threshold the input shows
through untouched; from there the colour fades in (fully blended at the threshold) and runs through
the JET scale from blue at 0.8 of the threshold to red at 1.5 times it and above. Regions above the
threshold are outlined in white. :func:`label_defects` writes a caption (type and level) at each defect's
top-left corner, white on a dark box, sized to the picture; a caption that would cover an earlier one
moves down below it (callers pass the worst defects first).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray


def heatmap_overlay(
    image: NDArray[np.uint8], anomaly_map: NDArray[np.float32], threshold: float, alpha: float = 0.5
) -> NDArray[np.uint8]:
    """RGB ``image`` with ``anomaly_map`` (same height and width) blended over it."""
    relative = anomaly_map / max(abs(threshold), 1e-9)
    level = np.clip((relative - 0.8) / 0.7, 0.0, 1.0)
    colour = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    weight = (alpha * np.clip((relative - 0.8) / 0.2, 0.0, 1.0))[..., None]
    out = image.astype(np.float32) * (1 - weight) + colour.astype(np.float32) * weight
    out = np.clip(out, 0, 255).astype(np.uint8)
    above = (anomaly_map > threshold).astype(np.uint8)
    contours, _ = cv2.findContours(above, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def label_defects(
    image: NDArray[np.uint8], captions: Sequence[tuple[tuple[float, float], str]]
) -> NDArray[np.uint8]:
    """``image`` with each ``((x, y), text)`` caption drawn just above ``(x, y)`` (inside the picture)."""
    if not captions:
        return image
    out = image.copy()
    height, width = out.shape[:2]
    scale = max(0.35, min(height, width) / 900)
    thickness = max(1, round(scale * 1.5))
    placed: list[tuple[int, int, int, int]] = []
    for (x, y), text in captions:
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        box_w, box_h = tw + 2, th + base + 2
        left = int(np.clip(x, 0, max(width - box_w, 0)))
        top = int(np.clip(y - box_h, 0, max(height - box_h, 0)))
        while any(_overlap((left, top, box_w, box_h), other) for other in placed) and top + box_h < height:
            top = min(top + box_h + 1, height - box_h)  # below the caption it would hide
        placed.append((left, top, box_w, box_h))
        cv2.rectangle(out, (left, top), (left + box_w, top + box_h), (20, 20, 20), -1)
        cv2.putText(
            out,
            text,
            (left + 1, top + th + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return out


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
