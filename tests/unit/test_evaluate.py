"""Metrics: checked against cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from defectscan.pipeline.evaluate import Sample, aupro, auroc, f1_at, pixel_auroc, summarize


def test_auroc_on_raw_scores_outside_unit_range() -> None:
    # Raw scores far above 1: a sigmoid would squash them all to 1.0 and give 0.5.
    assert auroc([0, 0, 1, 1], [30.0, 31.0, 45.0, 60.0]) == 1.0
    assert auroc([0, 1], [5.0, 1.0]) == 0.0
    assert auroc([1, 1], [1.0, 2.0]) is None


def test_f1_at_threshold() -> None:
    assert f1_at([0, 0, 1, 1], [1, 2, 3, 4], 2.5) == 1.0
    assert f1_at([0, 0, 1, 1], [1, 3, 2, 4], 2.5) == pytest.approx(0.5)


def _maps(perfect: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 32, 32), bool)
    masks[1, 4:10, 4:10] = True
    masks[2, 20:30, 5:8] = True
    masks[2, 2:4, 25:30] = True
    maps = rng.random((6, 32, 32)).astype(np.float32)
    if perfect:
        maps[masks] += 2.0
    return maps, masks


def test_aupro_is_one_for_perfect_maps_and_low_for_random() -> None:
    assert aupro(*_maps(True)) == pytest.approx(1.0, abs=1e-3)
    random = aupro(*_maps(False))
    assert random is not None and 0.05 < random < 0.25  # random maps: about FPR/2 averaged to 0.3


def test_aupro_weighs_regions_equally() -> None:
    maps, masks = _maps(False)
    maps = np.zeros_like(maps)
    maps[1][masks[1]] = 1.0  # only the first of three regions is found
    value = aupro(maps, masks)
    assert value == pytest.approx(1 / 3, abs=0.02)


def test_pixel_auroc() -> None:
    assert pixel_auroc(*_maps(True)) == 1.0
    assert abs(pixel_auroc(*_maps(False)) - 0.5) < 0.05  # type: ignore[operator]


def test_summarize_reports_per_type() -> None:
    samples = [Sample("good", 1.0), Sample("good", 2.0), Sample("crack", 3.0), Sample("blowhole", 1.5)]
    result = summarize(samples, threshold=2.5, grid=32)
    assert result["image_auroc"] == pytest.approx(3 / 4)  # 3 of the 4 (defect, good) pairs are ordered
    per_type = result["per_type"]
    assert isinstance(per_type, dict)
    assert per_type["crack"]["image_auroc"] == 1.0
    assert per_type["blowhole"]["image_auroc"] == 0.5
