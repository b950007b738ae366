"""Operating points without retraining: `defectscan threshold` on a model directory and a registry version,
its report on a labelled folder, and the model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from defectscan.pipeline.errors import InvalidArgumentError, ModelFormatError
from defectscan.pipeline.images import decode_image, encode_png
from defectscan.pipeline.model import AnomalyModel, ModelConfig
from defectscan.pipeline.model_doc import CalibrationScores, ModelDoc, recalibrated
from defectscan.pipeline.operating_point import fit_ok_tail, oracle_escape_rate, rates
from defectscan.pipeline.saved_model import parse_doc
from defectscan.pipeline.synth import generate_sheet
from defectscan.pipeline.threshold_report import report_rows
from defectscan.producer.cli import cli
from defectscan.worker.registry import Registry

SMALL = ModelConfig(image_size=64, coreset_ratio=0.1, tta_views=("identity",))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ok = [s.crop(i) for s in (generate_sheet(5, k, 0.0) for k in range(3)) for i in s.instances]
    defects = [s.crop(i) for s in (generate_sheet(5, 9, 1.0),) for i in s.instances]
    model = AnomalyModel.fit(ok, SMALL, val_defects=defects)
    return model.save(tmp_path_factory.mktemp("threshold") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MVTec-layout folder of good and defective crops."""
    root = tmp_path_factory.mktemp("data")
    for k in (3, 4, 6):
        sheet = generate_sheet(5, k, 0.5)
        for inst in sheet.instances:
            kind = "good" if inst.defect is None else inst.defect.type
            (root / "test" / kind).mkdir(parents=True, exist_ok=True)
            (root / "test" / kind / f"{k}_{inst.index}.png").write_bytes(encode_png(sheet.crop(inst)))
    return root


def _doc(directory: Path) -> ModelDoc:
    return parse_doc((directory / "model.json").read_bytes(), str(directory))


def test_a_new_target_moves_the_threshold_along_the_stored_scores(model_dir: Path) -> None:
    doc = _doc(model_dir)
    scores = doc.calibration_scores
    assert len(scores.ok) == 24 and len(scores.defects) == 8
    loose, strict = recalibrated(doc, target_frr=0.1), recalibrated(doc, target_frr=0.001)
    tail = fit_ok_tail(scores.ok)
    assert loose.calibration.threshold == pytest.approx(tail.threshold(0.1))
    assert strict.calibration.threshold > doc.calibration.threshold > loose.calibration.threshold
    assert loose.calibration.expected_frr == pytest.approx(0.1)
    assert loose.derived_from == doc.version != loose.version
    assert loose.config == doc.config and loose.training == doc.training
    escapes = sum(s <= loose.calibration.threshold for s in scores.defects)
    assert loose.calibration.escapes == escapes  # labelled defects counted at the new point
    by_hand = recalibrated(doc, value=float(np.median(scores.ok))).calibration
    assert by_hand.target_frr is None and by_hand.rule.startswith("set by hand")
    assert by_hand.ok_rejected == sum(s > by_hand.threshold for s in scores.ok)
    assert (
        by_hand.expected_frr is not None and 0.3 < by_hand.expected_frr < 0.7
    )  # the median rejects about half
    with pytest.raises(InvalidArgumentError):
        recalibrated(doc, target_frr=0.1, value=3.0)
    with pytest.raises(ModelFormatError):  # a model without stored scores must be retrained
        recalibrated(doc.model_copy(update={"calibration_scores": CalibrationScores()}), target_frr=0.1)


def test_threshold_rewrites_a_model_directory(model_dir: Path, tmp_path: Path) -> None:
    target = shutil.copytree(model_dir, tmp_path / "m")
    before = _doc(target)
    result = CliRunner().invoke(cli, ["threshold", str(target), "--target-frr", "0.05"])
    assert result.exit_code == 0, result.output
    after = _doc(target)
    assert result.stdout.strip() == after.version and after.derived_from == before.version
    assert (target / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    model = AnomalyModel.load(target)
    assert model.calibration.target_frr == 0.05
    assert model.calibration.threshold == after.calibration.threshold < before.calibration.threshold
    card = (target / "MODEL_CARD.md").read_text()
    assert after.version in card and "expected 5.00 %" in card and "for a target of 5.00 %" in card
    assert "escape at this threshold" in card
    refused = CliRunner().invoke(cli, ["threshold", str(target), "--target-frr", "0.05", "--value", "3"])
    assert refused.exit_code == 2 and _doc(target) == after


def test_threshold_on_a_registry_version_publishes_a_new_version(model_dir: Path, tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "models"))
    first = registry.publish("foil", model_dir, {}, "card")
    registry.promote("foil", first)
    location = f"{tmp_path / 'models'}/foil@latest"
    result = CliRunner().invoke(cli, ["threshold", location, "--value", "5.5"])
    assert result.exit_code == 0, result.output
    second = result.stdout.strip()
    assert [v.version for v in registry.versions("foil")] == sorted([first, second])
    assert registry.latest("foil") == first  # nothing promoted: batches keep what they pinned
    old, new = (_doc(tmp_path / "models" / "foil" / v) for v in (first, second))
    assert old == _doc(model_dir) and new.calibration.threshold == 5.5
    assert new.derived_from == first
    weights = (tmp_path / "models" / "foil" / second / "model.safetensors").read_bytes()
    assert weights == (model_dir / "model.safetensors").read_bytes()
    assert "set by hand" in (tmp_path / "models" / "foil" / second / "MODEL_CARD.md").read_text()
    promoted = CliRunner().invoke(cli, ["threshold", location, "--target-frr", "0.02", "--promote"])
    assert promoted.exit_code == 0, promoted.output
    assert registry.latest("foil") == promoted.stdout.strip() not in (first, second)


def test_the_report_gives_the_rates_of_each_threshold_and_a_picture(
    model_dir: Path, data: Path, tmp_path: Path
) -> None:
    plot = tmp_path / "report.png"
    args = ["threshold", str(model_dir), "--report", str(data), "--plot", str(plot)]
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "current = target 1.0%" in result.stdout and "target 10.0%" in result.stdout
    picture = decode_image(plot.read_bytes(), "report.png")
    assert picture.shape[0] > 200 and picture.shape[1] > 400 and picture.std() > 10


def test_report_rows_are_the_rates_of_their_thresholds() -> None:
    rng = np.random.default_rng(0)
    ok = rng.gumbel(10, 1, 200)
    good, bad = rng.gumbel(10, 1, 100), rng.normal(16, 2, 40)
    rows = report_rows(good, bad, current=14.0, ok_scores=ok, targets=(0.01, 0.1))
    assert [r.label for r in rows] == ["target 1.0%", "current", "target 10.0%"]  # 14.6, 14, 12.3
    assert [r.threshold for r in rows] == sorted((r.threshold for r in rows), reverse=True)
    for row in rows:
        assert (row.frr, row.escape_rate) == rates(good, bad, row.threshold)
        assert row.oracle_escape_rate == oracle_escape_rate(good, bad, row.frr) <= row.escape_rate
    assert rows[2].expected_frr == pytest.approx(0.1)
    assert report_rows(good, bad, current=14.0)[0].expected_frr is None  # no stored scores: current only


def test_the_saved_model_card_states_the_operating_point(model_dir: Path) -> None:
    card = (model_dir / "MODEL_CARD.md").read_text()
    doc = json.loads((model_dir / "model.json").read_text())
    cal = doc["calibration"]
    assert f"# Model {doc['version']}" in card and "for a target of 1.00 %" in card
    assert f"{cal['ok_rejected']} of {cal['ok_count']}" in card and "Out-of-sample OK scores: min" in card
    assert f"{cal['escapes']} of 8 escape" in card
