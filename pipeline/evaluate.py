"""Evaluation metrics on raw anomaly scores and maps: AUROC, pixel AUROC, AUPRO, F1, per-type AUROC.

AUROC comes from scikit-learn on raw scores. (torchmetrics' ``binary_auroc`` applies a sigmoid to
scores outside [0, 1], which can turn raw anomaly scores into a false 0.5.) Pixel metrics are computed
on a common grid: each anomaly map and its mask are resized to ``grid x grid`` (the model's input size),
which is what anomalib's own pixel metrics do; masks are thresholded at 127 after a nearest resize.

**AUPRO** (per-region overlap, up to a false-positive rate of 0.3): thresholds are placed at the OK-pixel
quantiles that give FPR = 0, 0.001, ..., 0.3; at each, PRO is the mean over ground-truth regions
(8-connected components of every mask) of the fraction of the region above the threshold. The area
under PRO(FPR) from 0 to 0.3, divided by 0.3, is the AUPRO: 1 is perfect, and random maps give ~0.15.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

GOOD = "good"


@dataclass
class Sample:
    """One evaluated image: its type (``good`` or a defect type), score, map and mask (or None)."""

    kind: str
    score: float
    anomaly_map: NDArray[np.float32] | None = field(default=None, repr=False)
    mask: NDArray[np.bool_] | None = field(default=None, repr=False)


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC, or None when only one class is present."""
    if len(set(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def f1_at(labels: Sequence[int], scores: Sequence[float], threshold: float) -> float:
    predicted = np.asarray(scores) > threshold
    truth = np.asarray(labels, dtype=bool)
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def on_grid(samples: Sequence[Sample], grid: int) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Every sample's map and mask resized to ``grid x grid``; a good image's mask is all False."""
    maps, masks = [], []
    for s in samples:
        if s.anomaly_map is None:
            continue
        maps.append(cv2.resize(s.anomaly_map, (grid, grid), interpolation=cv2.INTER_LINEAR))
        if s.mask is None:
            masks.append(np.zeros((grid, grid), bool))
        else:
            small = cv2.resize(s.mask.astype(np.uint8) * 255, (grid, grid), interpolation=cv2.INTER_NEAREST)
            masks.append(small > 127)
    return np.stack(maps), np.stack(masks)


def aupro(
    maps: NDArray[np.float32], masks: NDArray[np.bool_], max_fpr: float = 0.3, steps: int = 300
) -> float | None:
    """Normalised area under the per-region-overlap curve up to ``max_fpr`` (see the module docstring)."""
    normal = np.sort(maps[~masks].ravel())
    if normal.size == 0 or not masks.any():
        return None
    fprs = np.linspace(0.0, max_fpr, steps + 1)
    # Threshold for each FPR: the OK-pixel score with that fraction above it.
    idx = np.clip(np.ceil((1.0 - fprs) * normal.size).astype(int) - 1, 0, normal.size - 1)
    thresholds = normal[idx]
    thresholds[0] = np.nextafter(normal[-1], np.inf)  # FPR 0: above every OK pixel
    fpr_actual = 1.0 - np.searchsorted(normal, thresholds, side="right") / normal.size
    regions = []
    for amap, mask in zip(maps, masks, strict=True):
        if not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        for r in range(1, count):
            regions.append(np.sort(amap[labels == r]))
    overlap = np.zeros_like(thresholds, dtype=np.float64)
    for scores in regions:
        overlap += 1.0 - np.searchsorted(scores, thresholds, side="right") / scores.size
    pro = overlap / len(regions)
    order = np.argsort(fpr_actual, kind="stable")
    x, y = fpr_actual[order], pro[order]
    keep = x <= max_fpr
    x, y = x[keep], y[keep]
    if x[-1] < max_fpr:  # extend flat to max_fpr
        x, y = np.append(x, max_fpr), np.append(y, y[-1])
    return float(np.trapezoid(y, x) / max_fpr)


def pixel_auroc(maps: NDArray[np.float32], masks: NDArray[np.bool_]) -> float | None:
    if not masks.any() or masks.all():
        return None
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def summarize(samples: Sequence[Sample], threshold: float, grid: int) -> dict[str, object]:
    """All metrics of issue-level interest, as a JSON-ready dict."""
    labels = [int(s.kind != GOOD) for s in samples]
    scores = [s.score for s in samples]
    kinds = sorted({s.kind for s in samples} - {GOOD})
    per_type = {}
    for kind in kinds:
        subset = [s for s in samples if s.kind in (GOOD, kind)]
        per_type[kind] = {
            "count": sum(s.kind == kind for s in samples),
            "image_auroc": auroc([int(s.kind != GOOD) for s in subset], [s.score for s in subset]),
        }
    result: dict[str, object] = {
        "images": len(samples),
        "good": labels.count(0),
        "defective": labels.count(1),
        "image_auroc": auroc(labels, scores),
        "f1_at_threshold": f1_at(labels, scores, threshold),
        "threshold": threshold,
        "per_type": per_type,
    }
    with_maps = [s for s in samples if s.anomaly_map is not None and (s.kind == GOOD or s.mask is not None)]
    if with_maps:
        maps, masks = on_grid(with_maps, grid)
        result["pixel_auroc"] = pixel_auroc(maps, masks)
        result["aupro"] = aupro(maps, masks)
    return result
