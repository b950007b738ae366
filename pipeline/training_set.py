"""The OK set prepared for training: calibration folds or a holdout, augmented copies, the reference
image, and the summaries a model keeps of its data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray


def fold_sets(n: int, folds: int, groups: Sequence[str] = ()) -> list[set[int]]:
    """``folds`` folds of ``n`` images, deterministic. With ``groups`` (each image's source, e.g. the
    photograph its crop was cut from), a group's images share one fold, groups dealt in turn: crops of
    one photograph share its light, focus and noise, so a fold that kept some of them would score the
    others too kindly. Without, or with fewer groups than folds, interleaved: every ``folds``-th image
    (fewer folds for fewer images)."""
    names = list(dict.fromkeys(groups)) if len(groups) == n else []
    if len(names) >= min(folds, n) > 1:
        fold_of = {name: i % folds for i, name in enumerate(names)}
        return [{i for i, g in enumerate(groups) if fold_of[g] == f} for f in range(folds)]
    k = min(folds, n)
    return [set(range(start, n, k)) for start in range(k)]


def score_summary(scores: Sequence[float]) -> dict[str, float]:
    """Statistics of out-of-sample OK scores, for the model card."""
    if not scores:
        return {}
    values = np.asarray(scores, dtype=np.float64)
    points = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 0.95, 1.0])
    return dict(zip(("min", "q25", "median", "q75", "p95", "max"), map(float, points), strict=True))


def holdout_indices(n: int, fraction: float) -> set[int]:
    """Every k-th image, spread over the set, so the split is deterministic and covers it evenly."""
    if fraction <= 0:
        return set()
    count = min(max(2, round(n * fraction)), n - 1)
    return {int(i) for i in np.linspace(0, n - 1, count + 2)[1:-1].round()}


def augmented(images: Sequence[NDArray[np.uint8]], kind: str, seed: int) -> list[NDArray[np.uint8]]:
    if kind == "hflip":
        return [np.ascontiguousarray(img[:, ::-1]) for img in images]
    if kind == "vflip":
        return [np.ascontiguousarray(img[::-1]) for img in images]
    if kind == "rot180":
        return [np.ascontiguousarray(img[::-1, ::-1]) for img in images]
    rng = np.random.default_rng(seed)
    out = []
    for img in images:
        gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-10, 10)
        out.append(np.clip(img.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8))
    return out


def dataset_hash(ok: Sequence[NDArray[np.uint8]], aux: Sequence[NDArray[np.uint8]]) -> str:
    digest = hashlib.sha256()
    for img in [*ok, *aux]:
        digest.update(hashlib.sha256(np.ascontiguousarray(img).tobytes()).digest())
    return digest.hexdigest()


def reference_size(images: Sequence[NDArray[np.uint8]]) -> list[int]:
    heights = sorted(img.shape[0] for img in images)
    widths = sorted(img.shape[1] for img in images)
    return [widths[len(widths) // 2], heights[len(heights) // 2]]


def reference_image(images: Sequence[NDArray[np.uint8]]) -> NDArray[np.uint8]:
    """The mean OK image, at the median size (aligned crops all share one size)."""
    width, height = reference_size(images)
    total = np.zeros((height, width, 3), np.float64)
    for img in images:
        same = img.shape[:2] == (height, width)
        total += img if same else cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(total / len(images)), 0, 255).astype(np.uint8)
