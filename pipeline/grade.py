"""Anomalous regions of an instance: where its anomaly map rises above the model's threshold.

The map (at the crop's resolution) is thresholded at the model's threshold, and every 8-connected
component of at least ``min_area`` pixels is a region: its box, area in pixels and in % of the crop,
and its peak and mean score. Components smaller than ``min_area`` are ignored as speckle.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from pipeline.verdict import Region


def find_regions(anomaly_map: NDArray[np.float32], threshold: float, min_area: int = 16) -> list[Region]:
    """Connected regions above ``threshold``, largest first."""
    above = (anomaly_map > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    total = anomaly_map.size
    regions = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        values = anomaly_map[labels == label]
        regions.append(
            Region(
                box=(x, y, w, h),
                area_px=area,
                area_pct=round(100.0 * area / total, 4),
                peak=round(float(values.max()), 6),
                mean=round(float(values.mean()), 6),
            )
        )
    return sorted(regions, key=lambda r: -r.area_px)
