"""`defectscan inspect`: verdicts, pictures and the summary, for a template job and for golden templates."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from defectscan.pipeline.images import decode_image, encode_png, gray_rgb
from defectscan.pipeline.inspection import Inspection, Inspector, inspect_image
from defectscan.pipeline.model import AnomalyModel, ModelConfig
from defectscan.pipeline.scoring import ScoreResult
from defectscan.pipeline.segment import Segmenter, SegmentOptions
from defectscan.pipeline.synth import Sheet
from defectscan.pipeline.verdict import Verdict, json_schema
from defectscan.producer.cli import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(sheets: list[Sheet], tmp_path_factory: pytest.TempPathFactory) -> Path:
    ok = [s.crop(i) for s in sheets for i in s.instances if i.defect is None]
    trained = AnomalyModel.fit(ok, ModelConfig(image_size=128, coreset_ratio=0.1, tta_views=("identity",)))
    return trained.save(tmp_path_factory.mktemp("model") / "m")


def test_the_committed_json_schema_is_the_models() -> None:
    assert (ROOT / "docs" / "verdict.schema.json").read_text() == json_schema()


def test_an_instance_map_lands_where_the_instance_lies(
    sheets: list[Sheet], model: Path, template: np.ndarray
) -> None:
    sheet = sheets[0]
    segmenter = Segmenter(template, SegmentOptions(angles=(-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)))
    result = inspect_image(encode_png(sheet.image), "s.png", AnomalyModel.load(model), segmenter)
    verdict = result.verdict
    assert verdict.verdict in ("ok", "defect") and len(verdict.instances) == 8
    assert result.anomaly_map is not None and result.anomaly_map.shape == sheet.image.shape[:2]
    for instance in verdict.instances:  # the map is zero outside every instance
        x, y, w, h = (int(v) for v in instance.box)
        window = result.anomaly_map[max(y, 0) : y + h, max(x, 0) : x + w]
        assert window.max() == pytest.approx(instance.score, rel=0.02)
    assert result.anomaly_map[~_inside(verdict, sheet.image.shape[:2])].max() == 0.0
    assert set(verdict.timings_ms) == {"decode", "segment", "score", "grade", "render"}


def _inside(verdict: Verdict, shape: tuple[int, ...]) -> np.ndarray:
    """Pixels within the instances' boxes (their outer pixel edges; 2 px more for rounding)."""
    inside = np.zeros(shape, bool)
    for instance in verdict.instances:
        x, y, w, h = instance.box
        inside[max(int(y) - 2, 0) : int(y + h) + 3, max(int(x) - 2, 0) : int(x + w) + 3] = True
    return inside


def _same(a: Inspection, b: Inspection) -> None:
    """Two inspections of one image agree: verdict, scores, defects and maps (within float rounding)."""
    one, other = a.verdict, b.verdict
    assert (one.verdict, one.image.sha256, one.error) == (other.verdict, other.image.sha256, other.error)
    assert len(one.instances) == len(other.instances)
    for x, y in zip(one.instances, other.instances, strict=True):
        assert x.score == pytest.approx(y.score, rel=1e-5, abs=1e-6) and x.is_anomalous == y.is_anomalous
        assert (x.box, x.level, [d.type for d in x.defects]) == (y.box, y.level, [d.type for d in y.defects])
    if a.anomaly_map is not None:
        assert b.anomaly_map is not None
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-4, atol=1e-5)


def test_images_that_share_forward_passes_get_the_verdicts_they_get_alone(
    sheets: list[Sheet], model: Path, template: np.ndarray
) -> None:
    loaded = AnomalyModel.load(model)
    segmenter = Segmenter(template, SegmentOptions(angles=(-3.0, 0.0, 3.0)))
    inputs = [
        ("a.png", encode_png(sheets[0].image)),
        ("broken.png", b"\x89PNG\r\n\x1a\n truncated"),
        ("b.png", encode_png(sheets[1].image)),
        ("blank.png", encode_png(np.full((800, 1200, 3), 30, np.uint8))),
        ("c.png", encode_png(sheets[2].image)),
    ]
    alone = [inspect_image(data, key, loaded, segmenter) for key, data in inputs]
    shared = Inspector(loaded, segmenter, crops_per_forward=24)  # three sheets' crops in one forward
    calls: list[int] = []
    score = loaded.score

    def counted(images: list[np.ndarray], **kwargs: object) -> list[ScoreResult]:
        calls.append(len(images))
        return score(images, **kwargs)  # type: ignore[arg-type]

    loaded.score = counted  # type: ignore[method-assign]
    together = list(shared.many([(key, lambda d=data: d) for key, data in inputs]))
    assert calls == [24]  # the three sheets scored together, the two bad inputs not at all
    assert [r.verdict.verdict for r in together][1::2] == ["error", "error"]
    assert [r.verdict.error.code for r in together[1::2] if r.verdict.error] == ["decode_error", "no_match"]
    for a, b in zip(alone, together, strict=True):
        _same(a, b)

    def fails_when_shared(images: list[np.ndarray], **kwargs: object) -> list[ScoreResult]:
        if len(images) > 8:
            raise MemoryError("a forward of 24 crops does not fit")
        return score(images, **kwargs)  # type: ignore[arg-type]

    loaded.score = fails_when_shared  # type: ignore[method-assign]
    retried = list(shared.many([(key, lambda d=data: d) for key, data in inputs]))
    for a, b in zip(alone, retried, strict=True):  # each image scored alone instead: the same verdicts
        _same(a, b)


def test_inspect_writes_verdicts_mirroring_the_inputs(
    sheets: list[Sheet], model: Path, template: np.ndarray, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    (inputs / "line3").mkdir(parents=True)
    (inputs / "line3" / "a.png").write_bytes(encode_png(sheets[1].image))
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (inputs / "blank.png").write_bytes(encode_png(np.full((800, 1200, 3), 30, np.uint8)))
    (tmp_path / "t.png").write_bytes(encode_png(template))
    out = tmp_path / "out"
    args = ["inspect", str(inputs), "--model", str(model), "--template", str(tmp_path / "t.png")]
    extra = ["--save-maps", "--pictures", "all", "--product", "foil-star"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), *extra])
    assert result.exit_code == 1, result.output  # two images failed; the run went on
    good = Verdict.model_validate_json((out / "line3" / "a.png.json").read_bytes())
    assert good.schema_ == "defectscan.verdict/1" and good.image.key == "line3/a.png"
    assert good.model.product == "foil-star" and good.model.version and good.model.method == "patchcore"
    assert len(good.instances) == 8 and good.verdict in ("ok", "defect")
    assert (out / good.outputs["heatmap"]).is_file()
    crop_heatmaps = [out / i.heatmap for i in good.instances if i.heatmap]
    assert len(crop_heatmaps) == 8 and all(p.is_file() for p in crop_heatmaps)
    mask = decode_image((out / good.outputs["mask"]).read_bytes(), "mask")
    assert mask.shape == sheets[1].image.shape
    marked = mask.any(axis=2)
    assert marked.any() == any(i.defects for i in good.instances)
    assert not marked[~_inside(good, mask.shape[:2])].any()  # defects lie on their instances
    saved = np.load(out / good.outputs["map"], allow_pickle=False)
    assert saved.dtype == np.float32 and saved.shape == sheets[1].image.shape[:2]
    assert saved.max() == pytest.approx(max(i.score for i in good.instances), rel=0.02)
    broken = json.loads((out / "broken.png.json").read_text())
    assert broken["verdict"] == "error" and broken["error"]["code"] == "decode_error"
    assert "broken.png" in broken["error"]["message"]
    blank = json.loads((out / "blank.png.json").read_text())
    assert blank["verdict"] == "error" and blank["error"]["code"] == "no_match"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["verdicts"]["error"] == 2
    assert sorted(f["key"] for f in summary["failures"]) == ["blank.png", "broken.png"]


def test_inspect_pairs_flags_each_defect_against_its_own_template(pairs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["inspect", "--pairs", str(pairs_dir / "pairs.csv"), "--image-size", "256", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    for i in range(4):
        verdict = Verdict.model_validate_json((out / f"test/mixed/{i:03d}_test.png.json").read_bytes())
        assert verdict.template == f"test/good/{i:03d}_temp.png"
        assert verdict.verdict == "defect" and verdict.instances[0].defects
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdicts"] == {"defect": 4}


def test_lookout_compat_adds_lookouts_fields_consistent_with_the_mask(
    pairs_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["inspect", "--pairs", str(pairs_dir / "pairs.csv"), "--image-size", "256", "--out", str(out)]
    assert CliRunner().invoke(cli, [*args, "--lookout-compat"]).exit_code == 0
    for i in range(4):
        raw = json.loads((out / f"test/mixed/{i:03d}_test.png.json").read_text())
        result = raw["DetectAnomalyResult"]
        assert result["Source"] == {"Type": "direct"}
        assert result["IsAnomalous"] is True and 0.5 <= result["Confidence"] <= 1.0
        names = [a["Name"] for a in result["Anomalies"]]
        assert names[0] == "background" and len(names) > 1 and all(n.isalnum() for n in names)
        types = {d["type"].replace("_", "") for d in raw["instances"][0]["defects"]}
        assert set(names[1:]) == types
        response = json.loads((out / raw["outputs"]["lookout"]).read_text())  # DetectAnomalies' body
        assert response == {"DetectAnomalyResult": result} and raw["outputs"]["lookout"].endswith(
            ".lookout.json"
        )
        png = base64.b64decode(result["AnomalyMask"])
        assert png == (out / raw["outputs"]["mask"]).read_bytes()
        mask = decode_image(png, "mask")
        for anomaly in result["Anomalies"]:  # every colour covers the area it claims
            colour = np.frombuffer(bytes.fromhex(anomaly["PixelAnomaly"]["Color"][1:]), np.uint8)
            share = 100 * np.all(mask == colour, axis=2).mean()
            assert share == pytest.approx(anomaly["PixelAnomaly"]["TotalPercentageArea"], abs=1e-3)
    plain = tmp_path / "plain"
    assert CliRunner().invoke(cli, [*args[:-1], str(plain)]).exit_code == 0
    assert "DetectAnomalyResult" not in json.loads((plain / "test/mixed/000_test.png.json").read_text())


def test_a_grayscale_input_to_a_colour_model_is_noted(sheets: list[Sheet], model: Path) -> None:
    loaded = AnomalyModel.load(model)
    assert loaded.colour_mode == "rgb"
    gray = inspect_image(encode_png(gray_rgb(sheets[1].image)), "g.png", loaded).verdict
    assert [n.code for n in gray.notes] == ["mode_mismatch"]
    colour = inspect_image(encode_png(sheets[1].image), "c.png", loaded).verdict
    assert colour.notes == []


def test_a_grayscale_model_inspects_a_colour_input_as_its_grayscale_file(
    sheets: list[Sheet], tmp_path: Path
) -> None:
    ok = [gray_rgb(s.crop(i)) for s in sheets for i in s.instances if i.defect is None]
    config = ModelConfig(image_size=128, coreset_ratio=0.1, tta_views=("identity",))
    gray_model = AnomalyModel.load(AnomalyModel.fit(ok, config).save(tmp_path / "gray"))
    assert gray_model.colour_mode == "gray"
    sheet = sheets[2].image
    crop = sheet[:352, :448]
    from_colour = inspect_image(encode_png(crop), "c.png", gray_model).verdict
    from_gray_file = inspect_image(
        encode_png(np.asarray(Image.fromarray(crop).convert("L"))), "g.png", gray_model
    )
    assert [n.code for n in from_colour.notes] == ["converted_to_gray"]
    assert from_gray_file.verdict.notes == []
    assert from_colour.instances[0].score == from_gray_file.verdict.instances[0].score
