"""The model's document and files: one schema (pydantic), checked on read, kept whole on rewrite."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from defectscan.pipeline.calibration import calibrate
from defectscan.pipeline.errors import InvalidArgumentError, ModelFormatError, ModelNotFoundError
from defectscan.pipeline.model_config import ModelConfig
from defectscan.pipeline.model_doc import CalibrationScores, ModelDoc, ModelRecord, recalibrated
from defectscan.pipeline.saved_model import doc_bytes, parse_doc, read_doc, write_doc
from defectscan.pipeline.segment import SegmentOptions, parse_range

OK = [float(x) for x in np.random.default_rng(0).gumbel(10.0, 0.5, 200)]


def _doc() -> ModelDoc:
    config = ModelConfig(image_size=128, tta_views=("vflip", "identity"))
    record = ModelRecord(
        training={"ok_count": 200, "out_of_fold": 200, "sha256": "ab" * 32},
        calibration_scores=CalibrationScores(ok=OK, defects=[14.0, 9.0]),
        reference_size=(64, 48),
    )
    calibration = calibrate(OK, [14.0, 9.0], 0.01, 5)
    return ModelDoc.build(config, calibration, record, ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))


def test_a_document_round_trips_through_its_files(tmp_path: Path) -> None:
    doc = _doc()
    write_doc(tmp_path, doc)
    back = read_doc(tmp_path)
    assert back == doc
    assert back.config.tta_views == ("identity", "vflip")  # checked and ordered once, when built
    raw = json.loads((tmp_path / "model.json").read_text())
    assert list(raw)[:3] == ["schema", "version", "created_at"] and list(raw)[-1] == "calibration_scores"
    assert raw["config"]["tta_views"] == ["identity", "vflip"]  # JSON lists, tuples in Python
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert doc.version in card and "1 of 2 escape" in card  # the 9.0 defect is below the threshold
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_fields_of_a_newer_release_survive_a_new_operating_point() -> None:
    raw = json.loads(doc_bytes(_doc()))
    raw["drift"] = {"window": 7}
    doc = parse_doc(json.dumps(raw).encode(), "m")
    moved = recalibrated(doc, target_frr=0.05)
    again = json.loads(doc_bytes(moved))
    assert again["drift"] == {"window": 7}
    assert moved.derived_from == doc.version and moved.calibration.threshold < doc.calibration.threshold
    assert moved.record().training == doc.training


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda raw: raw["config"].update(image_size=100), "image-size"),
        (lambda raw: raw["config"].update(method="magic"), "method"),
        (lambda raw: raw["config"].update(layerz=["blocks.1"]), "layerz"),
        (lambda raw: raw["calibration"].pop("threshold"), "calibration.threshold"),
        (lambda raw: raw.update(schema="defectscan.model/0"), "schema"),
        (lambda raw: raw.update(colour_mode="cmyk"), "colour_mode"),
    ],
)
def test_a_bad_document_is_a_model_format_error_that_names_the_field(
    change: Callable[[dict[str, Any]], object], says: str
) -> None:
    raw = json.loads(doc_bytes(_doc()))
    change(raw)
    with pytest.raises(ModelFormatError, match=says):
        parse_doc(json.dumps(raw).encode(), "models/foil/model.json")


def test_a_directory_without_a_document_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        read_doc(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not JSON"):
        read_doc(tmp_path)


def test_settings_are_checked_when_made_and_when_changed() -> None:
    config = ModelConfig()
    assert config.layers == ("blocks.2", "blocks.4") and config.tta_views == ("identity", "hflip", "vflip")
    assert ModelConfig(method="variation").tta_views == ("identity",)
    with pytest.raises(InvalidArgumentError, match="target-frr"):
        config.changed(target_frr=0.7)
    with pytest.raises(InvalidArgumentError, match="flipped"):
        ModelConfig(method="variation").changed(tta_views=("identity", "hflip"))
    assert config.changed(folds=0).out_of_fold is False
    options = SegmentOptions.model_validate({"angles": [-2, 0, 2], "max_instances": 3})
    assert options.angles == (-2.0, 0.0, 2.0) and options.scales == (1.0,)
    assert SegmentOptions.model_validate_json(options.model_dump_json()) == options
    with pytest.raises(InvalidArgumentError, match="45"):
        SegmentOptions(angles=parse_range("40:50:5"))
