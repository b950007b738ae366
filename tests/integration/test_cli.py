"""The defectscan command end to end: synth, template cut, segment over good and bad files (the demo:
test_readme.py, as the README runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from defectscan.pipeline.calibration import calibrate
from defectscan.pipeline.images import decode_image, encode_png
from defectscan.producer.cli import cli

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    result = CliRunner().invoke(
        cli, ["synth", str(out), "--sheets", "2", "--defect-rate", "0.5", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 2 sheets with 16 instances" in result.output
    return out


def test_template_cut_writes_the_box(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.png"
    result = CliRunner().invoke(
        cli, ["template", "cut", str(synth_dir / "template.png"), "--box", "10,20,100,50", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    reference = decode_image((synth_dir / "template.png").read_bytes(), "template.png")
    np.testing.assert_array_equal(decode_image(out.read_bytes(), "t.png"), reference[20:70, 10:110])


def test_template_cut_outside_the_image_is_refused(synth_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            str(BIN / "defectscan"),
            "template",
            "cut",
            str(synth_dir / "template.png"),
            "--box",
            "400,300,100,100",
            "--out",
            str(tmp_path / "t.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "template.png" in proc.stderr and "outside" in proc.stderr and "invalid_argument" in proc.stderr
    assert not (tmp_path / "t.png").exists()


def _bad_files(folder: Path) -> dict[str, str]:
    """Write one file of each kind of bad input; returns file name -> expected error code."""
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_bytes(b"not an image at all\n" * 50)
    good = encode_png(np.full((600, 800, 3), 40, np.uint8))
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])
    (folder / "tiny.png").write_bytes(encode_png(np.zeros((100, 100, 3), np.uint8)))
    (folder / "big.png").write_bytes(encode_png(np.zeros((1500, 2100, 3), np.uint8)))  # 3.15 MP
    return {
        "empty.png": "empty_file",
        "notes.png": "decode_error",
        "truncated.png": "decode_error",
        "tiny.png": "too_small",
        "big.png": "too_large",
        "missing.png": "unreadable",
    }


def test_segment_goes_on_past_bad_files_and_names_them(synth_dir: Path, tmp_path: Path) -> None:
    bad = _bad_files(tmp_path / "bad")
    out = tmp_path / "out"
    args = [
        "segment",
        str(synth_dir / "sheets"),
        *(str(tmp_path / "bad" / name) for name in sorted(bad)),
        "--template",
        str(synth_dir / "template.png"),
        "--out",
        str(out),
        "--scales",
        "0.95:1.05:0.05",
        "--max-pixels",
        "3000000",  # above the 2.88 MP sheets, below big.png
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "segmented 8 images: 16 instances, 6 failed" in result.output
    for name, code in bad.items():
        record = json.loads((out / f"{Path(name).stem}.json").read_text())
        assert record["schema"] == "defectscan.segments/1"
        assert record["error"]["code"] == code, (name, record["error"])
        assert name in record["error"]["message"]
        assert record["detections"] == []
    for index in range(2):
        record = json.loads((out / f"sheet_{index:04d}.json").read_text())
        assert record["error"] is None and record["width"] == 2400 and record["height"] == 1200
        assert [d["index"] for d in record["detections"]] == list(range(8))
        for det in record["detections"]:
            x, y, w, h = det["box"]
            assert x >= 0 and x + w <= 2400 and y >= 0 and y + h <= 1200
            assert det["score"] >= 0.5 and abs(det["angle"]) <= 5
            crop = decode_image((out / det["crop"]).read_bytes(), det["crop"])
            assert crop.shape == (352, 448, 3)
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_segment_finds_nothing_on_an_empty_sheet(synth_dir: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    blank.write_bytes(encode_png(np.full((1200, 2400, 3), 30, np.uint8)))
    result = CliRunner().invoke(
        cli,
        ["segment", str(blank), "--template", str(synth_dir / "template.png"), "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "o" / "blank.json").read_text())
    assert record["detections"] == [] and record["error"] is None


def test_same_stem_twice_is_refused_before_any_work(synth_dir: Path, tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.png").write_bytes(encode_png(np.zeros((400, 500, 3), np.uint8)))
    result = CliRunner().invoke(
        cli,
        [
            "segment",
            str(tmp_path / "a/x.png"),
            str(tmp_path / "b/x.png"),
            "--template",
            str(synth_dir / "template.png"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "same stem" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_train_and_evaluate_on_a_synthetic_mvtec_set(synth_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    result = CliRunner().invoke(
        cli,
        ["train", "--ok", str(synth_dir / "mvtec/train/good"), "--image-size", "128", "--out", str(model)],
    )
    assert result.exit_code == 0, result.output
    assert "trained patchcore at 128 px on" in result.output and (model / "model.safetensors").is_file()
    report = tmp_path / "eval.json"
    result = CliRunner().invoke(
        cli, ["evaluate", "--model", str(model), "--data", str(synth_dir / "mvtec"), "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(report.read_text())
    assert metrics["images"] == metrics["good"] + metrics["defective"] and metrics["defective"] > 0
    # A handful of crops: quality is asserted in test_model.py; here every metric must be computed.
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_at_threshold"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["pixel_auroc"] > 0.7  # defect pixels still stand out at 128 px
    assert set(metrics["per_type"]) <= {"blurry_text", "structural", "color", "scratch"}
    assert metrics["tta"] == ["identity", "hflip", "vflip"] and metrics["timings"]["ms_per_image"] > 0
    assert metrics["model"]["version"] == json.loads((model / "model.json").read_text())["version"]


def test_train_holds_the_threshold_for_a_new_conditions_own_images(synth_dir: Path, tmp_path: Path) -> None:
    """``--new-condition``: images of a new look (here: grainy copies of OK crops), never trained on,
    raise the threshold to their own tail's operating point; fewer than five are refused."""
    ok = synth_dir / "mvtec/train/good"
    rng = np.random.default_rng(3)
    new = tmp_path / "new"
    new.mkdir()
    for path in sorted(ok.glob("*.png"))[:8]:
        img = decode_image(path.read_bytes(), path.name)
        (new / path.name).write_bytes(
            encode_png(np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8))
        )
    args = ["train", "--ok", str(ok), "--image-size", "64", "--new-condition", str(new)]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    cal, kept = doc["calibration"], doc["calibration_scores"]["new_condition"]
    assert cal["new_condition_count"] == 8 and len(kept) == 8
    assert cal["threshold"] == pytest.approx(calibrate(kept, [], 0.01, 5).threshold, rel=1e-5)
    assert "raised to hold for the new condition's own OK images" in cal["rule"]
    assert cal["threshold"] > max(doc["calibration_scores"]["ok"])  # the old look alone sits lower
    assert "on the new condition's 8 OK images" in result.output
    for path in sorted(new.glob("*.png"))[4:]:
        path.unlink()
    few = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "few")])
    assert few.exit_code == 2 and "needs at least 5 images, got 4" in few.stderr


def test_train_names_an_empty_ok_folder(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "broken.png").write_bytes(b"")
    proc = subprocess.run(
        [str(BIN / "defectscan"), "train", "--ok", str(tmp_path / "ok"), "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert (
        "broken.png" in proc.stderr and "empty_file" in proc.stderr and "no readable OK images" in proc.stderr
    )
    assert not (tmp_path / "m").exists()


def test_train_takes_any_timm_backbone_with_local_weights(synth_dir: Path, tmp_path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(weights))
    args = ["train", "--ok", str(synth_dir / "mvtec/train/good"), "--image-size", "64", "--method", "padim"]
    args += ["--backbone", "resnet18", "--layers", "layer1,layer2", "--out", str(tmp_path / "m")]
    missing = CliRunner().invoke(cli, args)
    assert missing.exit_code == 2 and "local weights" in missing.stderr
    result = CliRunner().invoke(cli, [*args, "--backbone-weights", str(weights)])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "model.json").read_text())["config"]
    assert config["backbone"] == "resnet18" and config["layers"] == ["layer1", "layer2"]
    assert config["backbone_weights"] == str(weights)


def test_train_auto_chooses_records_and_calibrates(tmp_path: Path) -> None:
    data = tmp_path / "synth"
    made = CliRunner().invoke(cli, ["synth", str(data), "--sheets", "3", "--defect-rate", "0", "--seed", "5"])
    assert made.exit_code == 0, made.output
    ok, model = data / "mvtec/train/good", tmp_path / "model"
    refused = CliRunner().invoke(
        cli, ["train", "--ok", str(ok), "--auto", "--method", "padim", "--out", str(model)]
    )
    assert refused.exit_code != 0 and "--auto chooses --method itself" in refused.output
    args = [
        "train",
        "--ok",
        str(ok),
        "--auto",
        "--budget-min",
        "0.05",
        "--target-frr",
        "0.05",
        "--out",
        str(model),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((model / "model.json").read_text())
    search = doc["training"]["auto"]
    measured = [c for c in search["candidates"] if c["skipped"] is None]
    assert measured[0]["name"] == "patchcore-256" and len(search["candidates"]) >= 5
    assert search["candidates"][-1]["skipped"], "a three-second budget skips the 512 px candidate"
    best = max(measured, key=lambda c: c["criterion"])
    chosen = next(c for c in measured if c["name"] == search["chosen"])
    assert chosen["criterion"] >= best["criterion"] - 0.005
    assert doc["config"]["method"] == chosen["method"] and doc["config"]["image_size"] == chosen["image_size"]
    assert doc["config"]["intensity"] == chosen["intensity"]
    assert f"chosen: {search['chosen']}" in result.output
    card = (model / "MODEL_CARD.md").read_text()
    assert "(--auto)" in card and f"{search['chosen']} (chosen)" in card
    cal = doc["calibration"]
    assert cal["threshold"] > 0 and cal["target_frr"] == 0.05 and cal["expected_frr"] is not None
