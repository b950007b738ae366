"""The variation model, its fusion with PatchCore, and golden templates per image."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.model import AnomalyModel, ModelConfig
from defectscan.pipeline.pairs import PairComparer, align
from defectscan.pipeline.synth import instance_crops, reference_template, render_instance
from defectscan.pipeline.variation import normal_variants
from defectscan.producer.cli import cli
from defectscan.worker.datasets import read_pairs

CONFIG = {"image_size": 256, "batch_size": 8, "coreset_ratio": 0.1}
# a few-pixel colour defect, 3 x 3 crop pixels, inside flat ink: places and colour change (R, G, B)
SPOTS = ((330, 135), (110, 90))
TINT = (-30, 0, 60)


def _sheet_crops(count: int, seed: int) -> list[np.ndarray]:
    """Aligned crops of defect-free sheets: jitter, illumination gradient, blur and noise included."""
    return [crop for crop, _ in islice(instance_crops(seed), count)]


def _tint(crop: np.ndarray, x: int, y: int, size: int = 3) -> np.ndarray:
    out = crop.astype(np.int16)
    out[y : y + size, x : x + size] += np.array(TINT, dtype=np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def _shift(crop: np.ndarray, dx: float, dy: float) -> np.ndarray:
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return np.asarray(
        cv2.warpAffine(crop, matrix, (crop.shape[1], crop.shape[0]), borderMode=cv2.BORDER_REFLECT)
    )


@pytest.fixture(scope="module")
def good() -> list[np.ndarray]:
    return _sheet_crops(40, 1)


@pytest.fixture(scope="module")
def probes() -> list[np.ndarray]:
    return _sheet_crops(6, 2)


@pytest.fixture(scope="module")
def variation(good: list[np.ndarray]) -> AnomalyModel:
    return AnomalyModel.fit(good, ModelConfig(method="variation", **CONFIG))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def patchcore(good: list[np.ndarray]) -> AnomalyModel:
    return AnomalyModel.fit(good, ModelConfig(**CONFIG))  # type: ignore[arg-type]


def test_a_few_pixel_print_defect_that_patchcore_misses_is_found_by_variation(
    variation: AnomalyModel, patchcore: AnomalyModel, probes: list[np.ndarray]
) -> None:
    bad = [_tint(crop, x, y) for crop in probes for x, y in SPOTS]
    assert not any(r.is_anomalous for r in patchcore.score(bad))
    found = variation.score(bad)
    assert all(r.is_anomalous for r in found)
    # and the map points at the spot, at the crop's own resolution
    for r, (x, y) in zip(found, [s for _ in probes for s in SPOTS], strict=True):
        assert r.anomaly_map.shape == probes[0].shape[:2]
        peak_y, peak_x = np.unravel_index(np.argmax(r.anomaly_map), r.anomaly_map.shape)
        assert abs(peak_x - x - 1) <= 3 and abs(peak_y - y - 1) <= 3


def test_small_shifts_and_brightness_changes_are_not_flagged(
    variation: AnomalyModel, probes: list[np.ndarray]
) -> None:
    assert not any(r.is_anomalous for r in variation.score(probes))
    moved = [_shift(c, dx, dy) for c in probes for dx, dy in ((2, 0), (-2, 0), (0, 2), (0, -2), (2, -2))]
    lit = [np.clip(c * factor, 0, 255).astype(np.uint8) for c in probes for factor in (1.1, 0.9)]
    assert not any(r.is_anomalous for r in variation.score(moved + lit))


def test_variation_rejects_flipped_views() -> None:
    with pytest.raises(InvalidArgumentError, match="no flipped views"):
        ModelConfig(method="variation", tta_views=("identity", "hflip"))
    assert ModelConfig(method="variation").tta_views == ("identity",)


@pytest.mark.parametrize("method", ["variation", "patchcore+variation"])
def test_save_and_load_give_identical_scores(
    method: str, good: list[np.ndarray], probes: list[np.ndarray], tmp_path: Path
) -> None:
    model = AnomalyModel.fit(good[:24], ModelConfig(method=method, **CONFIG))  # type: ignore[arg-type]
    model.save(tmp_path / "m")
    loaded = AnomalyModel.load(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["config"]["method"] == method
    bad = [_tint(probes[0], *SPOTS[0])]
    for a, b in zip(model.score(probes + bad), loaded.score(probes + bad), strict=True):
        assert a.score == b.score
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


def test_fusion_normalises_each_member_on_held_out_ok_crops(
    good: list[np.ndarray], probes: list[np.ndarray]
) -> None:
    fused = AnomalyModel.fit(good, ModelConfig(method="patchcore+variation", **CONFIG))  # type: ignore[arg-type]
    training = fused.record.training
    assert isinstance(training, dict)
    norms = training["fusion"]
    assert set(norms) == {"patchcore", "variation"}
    # loc and scale are the mean and std of the held-out scores (with the normal shifts and relighting)
    held = normal_variants([good[i] for i in range(len(good)) if i in _held(len(good))])
    for name in ("patchcore", "variation"):
        scores = torch.tensor(fused.member_scores(held, name), dtype=torch.float64)
        assert norms[name]["loc"] == pytest.approx(float(scores.mean()), rel=1e-5)
        assert norms[name]["scale"] == pytest.approx(float(scores.std()), rel=1e-5)
        assert norms[name]["margin"] >= 3.0
    # lead rule: a held-out OK crop scores exactly PatchCore's z; the variation model adds only beyond
    # its own highest z on them
    pc = norms["patchcore"]
    expected = [(s - pc["loc"]) / pc["scale"] for s in fused.member_scores(held[:6], "patchcore")]
    assert [r.score for r in fused.score(held[:6])] == pytest.approx(expected, rel=0.02, abs=0.05)
    bad = [_tint(crop, x, y, 4) for crop in probes for x, y in SPOTS]
    ok_scores = [r.score for r in fused.score(probes)]
    assert min(r.score for r in fused.score(bad)) > max(ok_scores)
    assert fused.score(probes)[0].anomaly_map.shape == probes[0].shape[:2]


def _held(n: int) -> set[int]:
    from defectscan.pipeline.training_set import holdout_indices

    return holdout_indices(n, 0.2)


def test_align_recovers_a_shift_and_rotation() -> None:
    image = reference_template()
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 1.0, 1.0) + np.array([[0, 0, 3], [0, 0, -2]])
    moved = cv2.warpAffine(image, matrix, (w, h))
    warped, aligned, _ = align(np.asarray(moved), image)
    assert aligned
    inner = (slice(20, h - 20), slice(20, w - 20))
    before = np.abs(moved[inner].astype(int) - image[inner]).mean()
    after = np.abs(moved[inner].astype(int) - warped[inner]).mean()
    assert after < before / 4


def test_pair_compare_finds_the_defect_and_not_a_shift() -> None:
    template = reference_template()
    comparer = PairComparer(image_size=256)
    rng = np.random.default_rng(5)
    image, defect = render_instance("scratch", 0.8, rng)
    assert defect is not None
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    found = comparer.compare(image, template)
    assert found.anomaly_map.shape == image.shape[:2]
    peak_y, peak_x = np.unravel_index(np.argmax(found.anomaly_map), found.anomaly_map.shape)
    ys, xs = np.nonzero(defect.mask)
    assert xs.min() - 6 <= peak_x <= xs.max() + 6 and ys.min() - 6 <= peak_y <= ys.max() + 6
    same = comparer.compare(np.clip(_shift(template, 1.5, -1) * 1.1, 0, 255).astype(np.uint8), template)
    assert same.score < found.score / 2


def test_evaluate_pairs_reports_pixel_metrics(pairs_dir: Path, tmp_path: Path) -> None:
    items = read_pairs(pairs_dir / "pairs.csv")
    assert [item.kind for item in items] == ["mixed"] * 4 and all(item.mask for item in items)
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(
        cli, ["evaluate", "--pairs", str(pairs_dir / "pairs.csv"), "--image-size", "256", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["image_auroc"] is None  # only defective images: no ranking to judge
    assert metrics["pixel_auroc"] > 0.9
    assert metrics["aupro"] > 0.5
    assert metrics["mode"] == "pairs" and metrics["unaligned"] == []


def test_evaluate_needs_a_model_or_pairs() -> None:
    result = CliRunner().invoke(cli, ["evaluate", "--data", "x"])
    assert result.exit_code != 0
    assert "--pairs" in result.output
