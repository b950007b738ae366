"""Every input gets exactly one verdict: a local ``inspect`` over a generated corpus of awkward inputs
(odd formats, broken files, awkward names), and the writer's fall-back when a result cannot be written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from defectscan.pipeline.images import encode_png
from defectscan.pipeline.inspection import Inspection
from defectscan.pipeline.model import AnomalyModel, ModelConfig
from defectscan.pipeline.names import printable
from defectscan.pipeline.outputs import OutputOptions
from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range
from defectscan.pipeline.synth import reference_template
from defectscan.pipeline.verdict import ModelInfo, Verdict, error_verdict
from defectscan.producer.cli import cli
from defectscan.producer.synth_files import aligned_ok_crops
from defectscan.worker.item_keys import hashed_key, is_natural, item_key
from defectscan.worker.results import write_inspection
from defectscan.worker.storage import LocalStorage
from tests.awkward import SPEC, VALID, corpus


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    segmenter = Segmenter(reference_template(), SegmentOptions(angles=parse_range("-3:3:1")))
    ok = aligned_ok_crops(segmenter, 6, seed=99, spec=SPEC)
    config = ModelConfig(image_size=128, coreset_ratio=0.1, tta_views=("identity",))
    return AnomalyModel.fit(ok, config).save(tmp_path_factory.mktemp("model") / "m")


def test_item_keys_keep_plain_names_and_hash_the_rest() -> None:
    for plain in ("line3/0001.png", "café ß/日本語.png", "q?x#y%20.png", "-x y.PNG", "a" * 200 + ".png"):
        assert item_key(plain) == plain
    for odd in ("a\\b.png", "new\nline.png", "x" * 251 + ".png", "bad-\udcff.png", "_renamed/x.png"):
        assert not is_natural(odd)
        assert item_key(odd) == hashed_key(odd) and item_key(odd).startswith("_renamed/")
    assert len({hashed_key(k) for k in ("a\\b.png", "a\\c.png", "bad-\udcff.png", "bad-\udcfe.png")}) == 4
    assert printable("bad-\udcff.png") == "bad-\\xff.png"


@pytest.mark.slow
def test_every_awkward_input_gets_exactly_one_verdict(model_dir: Path, tmp_path: Path) -> None:
    cases = corpus()
    assert len(cases) >= 30
    inputs, out = tmp_path / "in", tmp_path / "out"
    for case in cases:
        path = inputs / case.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.data)
    (inputs / "folder-marker.png").mkdir()  # a folder whose name looks like an image: not an input
    template = tmp_path / "template.png"
    template.write_bytes(encode_png(reference_template()))
    args = ["inspect", str(inputs), "--model", str(model_dir), "--template", str(template), "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--angles=-3:3:1", "--pictures", "all"])
    assert result.exit_code == 1, result.output  # some inputs failed: 1, never a traceback
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(cases)
    failures = {f["key"]: f["code"] for f in summary["failures"]}
    renamed = {r["key"]: r["stored_as"] for r in summary["renamed"]}
    for case in cases:
        key = printable(case.name)
        item = item_key(case.name)
        assert (renamed.get(key) is not None) == (item != case.name), key
        stored = out / (item + ".json")
        verdict = Verdict.model_validate_json(stored.read_bytes())
        assert verdict.image.key == key
        if case.expect == VALID:
            assert verdict.verdict in ("ok", "defect"), (key, verdict.error)
            assert len(verdict.instances) == 2, key  # both instances found: upright, decoded right
            for name in (verdict.outputs["heatmap"], verdict.outputs["mask"]):
                assert (out / name).is_file()
        else:
            assert verdict.verdict == "error" and verdict.error is not None
            assert verdict.error.code == case.expect == failures[key], key
    rotated = Verdict.model_validate_json((out / "phone-rotated.jpg.json").read_bytes())
    assert rotated.image.exif_orientation == 6 and (rotated.image.width, rotated.image.height) == (1000, 420)
    verdict_files = [p for p in out.rglob("*.json") if p.name != "summary.json"]
    assert len(verdict_files) == len(cases)  # exactly one verdict each, nothing else


def test_a_result_the_store_refuses_becomes_an_error_verdict_under_the_hashed_key(tmp_path: Path) -> None:
    out = LocalStorage(tmp_path)
    (tmp_path / "sheet.png.heatmap.png").mkdir()  # the heatmap's place is taken: its write fails
    info = ModelInfo(method="patchcore")
    verdict = Verdict.model_validate({"image": {"key": "sheet.png"}, "model": info, "verdict": "ok"})
    result = Inspection(verdict, heatmap=np.zeros((4, 4, 3), np.uint8))
    written = write_inspection(out, "sheet.png", result, OutputOptions(pictures="all"))
    assert written.verdict == "error" and written.error is not None
    assert written.error.code == "write_failed" and "sheet.png" in written.error.message
    assert written.image.stored_as == hashed_key("sheet.png")
    stored = Verdict.model_validate_json((tmp_path / f"{hashed_key('sheet.png')}.json").read_bytes())
    assert stored == written
    assert not (tmp_path / "sheet.png.json").exists()


def test_a_verdict_with_undecodable_bytes_is_written_in_the_escaped_form() -> None:
    verdict = error_verdict("line/\udcff.png", ModelInfo(method="x"), OSError("disk on fire \udcfe"))
    doc = json.loads(verdict.to_json())
    assert doc["image"]["key"] == "line/\\xff.png"
    assert doc["error"] == {"code": "internal_error", "message": "OSError: disk on fire \\xfe"}
