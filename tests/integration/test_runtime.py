"""Where the feature extractor runs (``pipeline/runtime.py``): the choice, the same verdicts in both
runtimes, a cache that spares the second load its conversion, and the fallback to torch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import openvino
import pytest
import torch

from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.model import AnomalyModel, ModelConfig
from defectscan.pipeline.pairs import PairComparer
from defectscan.pipeline.runtime import Runtime, resolve
from defectscan.pipeline.synth import render_instance

METHODS = ["patchcore", "padim", "stfpm", "variation", "patchcore+variation"]


def _crops(kind: str | None, count: int, seed: int) -> list[np.ndarray]:
    out = []
    for i in range(count):
        image, _ = render_instance(kind, 0.9, np.random.default_rng([seed, i]))
        noisy = image + np.random.default_rng(seed * 100 + i).normal(0, 2.5, image.shape)
        out.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small PatchCore and a PaDiM, saved: each test loads its own copy."""
    root = tmp_path_factory.mktemp("runtime")
    good = _crops(None, 12, 1)
    out = {}
    for method in METHODS:
        config = ModelConfig(method=method, image_size=96, batch_size=8, coreset_ratio=0.1, epochs=2)
        out[method] = AnomalyModel.fit(good, config).save(root / method)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One IR cache for the module's tests: each extractor is converted once."""
    return tmp_path_factory.mktemp("ir")


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    return _crops(None, 4, 2) + [c for kind in ("structural", "scratch") for c in _crops(kind, 2, 3)]


def test_auto_is_openvino_on_a_cpu_and_torch_on_cuda() -> None:
    assert resolve("auto", "cpu") == "openvino" and resolve("auto", "cuda") == "torch"
    assert resolve("openvino", "cuda") == "torch" and resolve("torch", "cpu") == "torch"
    with pytest.raises(InvalidArgumentError, match="onnx"):
        resolve("onnx", "cpu")


@pytest.mark.parametrize("method", METHODS)
def test_both_runtimes_give_the_same_verdicts(
    method: str, saved: dict[str, Path], crops: list[np.ndarray], cache: Path
) -> None:
    torch_model = AnomalyModel.load(saved[method]).use_runtime("torch")
    compiled = AnomalyModel.load(saved[method]).use_runtime("openvino", cache)
    assert (torch_model.runtime_used, compiled.runtime_used) == ("torch", "openvino")
    want, got = torch_model.score(crops), compiled.score(crops)
    assert [r.is_anomalous for r in want] == [r.is_anomalous for r in got]
    assert any(r.is_anomalous for r in want) or method not in ("patchcore", "padim")  # others: scores
    for a, b in zip(want, got, strict=True):
        assert b.score == pytest.approx(a.score, rel=1e-4)
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=1e-3, atol=1e-4 * a.score)


def test_a_second_load_reads_the_compiled_network_from_the_cache(
    saved: dict[str, Path], crops: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = AnomalyModel.load(saved["patchcore"]).use_runtime("openvino", tmp_path)
    (xml,) = tmp_path.glob("*.xml")
    assert xml.name.startswith("bankpatchcore-feature-extractor-96-") and xml.with_suffix(".bin").is_file()
    written = xml.stat().st_mtime_ns

    def no_conversion(*_: object, **__: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    second = AnomalyModel.load(saved["patchcore"]).use_runtime("openvino", tmp_path)
    assert second.runtime_used == "openvino" and xml.stat().st_mtime_ns == written
    assert [r.score for r in second.score(crops)] == [r.score for r in first.score(crops)]


def test_a_network_openvino_cannot_compile_runs_in_torch_and_says_why(
    saved: dict[str, Path],
    crops: list[np.ndarray],
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise RuntimeError("no CPU plugin here")

    monkeypatch.setattr(openvino.Core, "compile_model", refuse)
    with caplog.at_level(logging.WARNING, logger="defectscan.runtime"):
        model = AnomalyModel.load(saved["patchcore"]).use_runtime("auto", cache)
    assert model.runtime_used == "torch"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "defectscan.runtime"]
    assert "no CPU plugin here" in line and "runs in torch" in line
    reference = AnomalyModel.load(saved["patchcore"]).use_runtime("torch")
    assert [r.score for r in model.score(crops)] == [r.score for r in reference.score(crops)]


def test_training_in_openvino_gives_the_model_torch_gives(crops: list[np.ndarray], cache: Path) -> None:
    good = _crops(None, 12, 4)
    config = ModelConfig(image_size=96, batch_size=8, coreset_ratio=0.1)
    torch_model = AnomalyModel.fit(good, config)
    compiled = AnomalyModel.fit(good, config, runtime=Runtime("openvino", cache))
    assert compiled.runtime_used == "openvino"  # and it scores there afterwards
    want, got = torch_model.calibration, compiled.calibration
    assert got.threshold == pytest.approx(want.threshold, rel=1e-4)
    np.testing.assert_allclose(compiled.calibration_scores, torch_model.calibration_scores, rtol=1e-4)
    torch.testing.assert_close(compiled.net.memory_bank, torch_model.net.memory_bank, rtol=1e-3, atol=1e-4)
    assert set(compiled.net.state_dict()) == set(torch_model.net.state_dict())  # saved as torch's


def test_the_pair_comparer_compares_the_same_in_both_runtimes(cache: Path) -> None:
    template, _ = render_instance(None, 0.0, np.random.default_rng(7))
    tested, _ = render_instance("scratch", 0.9, np.random.default_rng(7))
    image, reference = tested.astype(np.uint8), template.astype(np.uint8)
    torch_pairs = PairComparer(image_size=128)
    compiled = PairComparer(image_size=128, runtime=Runtime("openvino", cache))
    assert (torch_pairs.runtime, compiled.runtime) == ("torch", "openvino")
    want, got = torch_pairs.compare(image, reference), compiled.compare(image, reference)
    assert got.score == pytest.approx(want.score, rel=1e-4) and want.score > 0
