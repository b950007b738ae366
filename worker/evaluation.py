"""Run a model over an MVTec-layout test set (or a pairs list) and summarise with :mod:`pipeline.evaluate`.

Shared by ``defectscan evaluate`` and the retrain task's validation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.errors import DefectscanError, InvalidArgumentError
from defectscan.pipeline.evaluate import Sample, summarize
from defectscan.pipeline.images import decode_image
from defectscan.pipeline.model import AnomalyModel
from defectscan.pipeline.pairs import PairComparer
from defectscan.worker.datasets import PairItem, TestItem
from defectscan.worker.storage import read_local


def run_evaluation(model: AnomalyModel, items: Sequence[TestItem], use_tta: bool = True) -> dict[str, object]:
    """Score every test item and summarise; unreadable items are counted and left out."""
    samples, failures, score_s = score_items(model, items, use_tta)
    result = summarize(samples, model.calibration.threshold, model.config.image_size)
    result["tta"] = list(model.config.tta_views) if use_tta else ["identity"]
    result["model"] = {"method": model.config.method, "version": model.version}
    result["failures"] = failures
    result["timings"] = {
        "score_s": round(score_s, 3),
        "ms_per_image": round(1000 * score_s / max(len(samples), 1), 2),
    }
    return result


def score_items(
    model: AnomalyModel, items: Sequence[TestItem], use_tta: bool = True
) -> tuple[list[Sample], list[dict[str, str]], float]:
    """Every readable item scored (with its map and mask), the unreadable ones' errors, and the seconds
    spent scoring."""
    samples: list[Sample] = []
    failures: list[dict[str, str]] = []
    score_s = 0.0
    batch: list[tuple[TestItem, NDArray[np.uint8], NDArray[np.bool_] | None]] = []

    def flush() -> None:
        nonlocal score_s
        if not batch:
            return
        start = time.perf_counter()
        results = model.score([image for _, image, _ in batch], use_tta=use_tta)
        score_s += time.perf_counter() - start
        for (item, _, mask), res in zip(batch, results, strict=True):
            samples.append(Sample(item.kind, res.score, res.anomaly_map, mask))
        batch.clear()

    for item in items:
        loaded = _load(item, failures)
        if loaded is None:
            continue
        batch.append((item, *loaded))
        if len(batch) == model.config.batch_size:
            flush()
    flush()
    return samples, failures, score_s


def _load(
    item: TestItem, failures: list[dict[str, str]]
) -> tuple[NDArray[np.uint8], NDArray[np.bool_] | None] | None:
    """An item's image and mask, or None with the error recorded."""
    try:
        image = decode_image(read_local(item.path), str(item.path))
        mask = None
        if item.mask is not None:
            mask = decode_image(read_local(item.mask), str(item.mask))[..., 0] > 127
    except DefectscanError as exc:
        failures.append(exc.as_dict())
        return None
    return image, mask


def run_pair_evaluation(comparer: PairComparer, items: Sequence[PairItem]) -> dict[str, object]:
    """Compare every image with its own template and summarise the maps against the masks.

    Image AUROC is left out (None) when only one kind of image is listed: a pairs file of defective
    images only (deeppcb's) says nothing about ranking good against bad images."""
    samples: list[Sample] = []
    failures: list[dict[str, str]] = []
    unaligned: list[str] = []
    start = time.perf_counter()
    for item in items:
        loaded = _load(item, failures)
        template = _load(PairItem(item.kind, item.template, None), failures) if loaded else None
        if loaded is None or template is None:
            continue
        compared = comparer.compare(loaded[0], template[0])
        if not compared.aligned:
            unaligned.append(str(item.path))
        samples.append(Sample(item.kind, compared.score, compared.anomaly_map, loaded[1]))
    elapsed = time.perf_counter() - start
    if not samples:
        raise InvalidArgumentError("--pairs", "no pair could be read")
    result = summarize(samples, float("inf"), comparer.image_size)
    result.pop("f1_at_threshold", None)
    result["mode"] = "pairs"
    result["tta"] = ["identity"]
    result["model"] = {"method": "variation (own template per image)", "image_size": comparer.image_size}
    result["unaligned"] = unaligned
    result["failures"] = failures
    result["timings"] = {
        "score_s": round(elapsed, 3),
        "ms_per_image": round(1000 * elapsed / len(samples), 2),
    }
    return result
