"""Generated training images: a new condition's style from a few images, nuisance variation, the
manifest, determinism, and bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from defectscan.pipeline.augment import generate
from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.images import decode_image, encode_png
from defectscan.pipeline.nuisance import KINDS, NuisanceRanges, parse_kinds, vary
from defectscan.pipeline.segment import Segmenter, SegmentOptions
from defectscan.pipeline.style import METHODS, fit_style
from defectscan.pipeline.synth import SheetSpec, generate_sheet, reference_template
from defectscan.producer.cli import cli
from defectscan.worker.augmentation import augment_location

A = SheetSpec()
# a new light and camera: a stronger gradient, a warm cast, more blur and noise
B = replace(A, gradient=(0.25, 0.35), colour_gain=(1.1, 0.95, 0.8), noise_sigma=5.0, blur_sigma=(1.2, 1.5))


def _crops(spec: SheetSpec, sheets: range) -> list[np.ndarray]:
    return [s.crop(i) for s in (generate_sheet(5, k, 0.0, spec) for k in sheets) for i in s.instances]


@pytest.fixture(scope="module")
def conditions() -> dict[str, list[np.ndarray]]:
    return {
        "a_train": _crops(A, range(0, 3)),
        "b_style": _crops(B, range(3, 5))[:10],  # ten OK images of the new condition
        "a_test": _crops(A, range(5, 6)),
        "b_test": _crops(B, range(5, 6)),  # the same sheet under the new condition
    }


def _edges(image: np.ndarray) -> np.ndarray:
    gray = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 2.0)
    return np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))


@pytest.mark.parametrize("method", METHODS)
def test_a_style_from_ten_images_brings_the_old_images_to_the_new_look(
    conditions: dict[str, list[np.ndarray]], method: str
) -> None:
    style = fit_style(conditions["a_train"], conditions["b_style"], method)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    restyled, errors, before = [], [], []
    for a, b in zip(conditions["a_test"], conditions["b_test"], strict=True):
        styled = style.apply(a, rng)
        restyled.append(styled)
        assert styled.shape == a.shape and styled.dtype == np.uint8
        errors.append(np.abs(styled.astype(float) - b).mean())
        before.append(np.abs(a.astype(float) - b).mean())
        # the structure stays: edges where they were
        assert np.corrcoef(_edges(a).ravel(), _edges(styled).ravel())[0, 1] > 0.95
    # closer to the same instances photographed under the new condition than the originals were
    assert np.mean(errors) < 0.8 * np.mean(before)
    # over the sheet, each channel's mean within a few levels of the new condition's: the cast is carried
    pooled = np.concatenate([c.reshape(-1, 3) for c in restyled]).mean(0)
    target = np.concatenate([c.reshape(-1, 3) for c in conditions["b_test"]]).mean(0)
    original = np.concatenate([c.reshape(-1, 3) for c in conditions["a_test"]]).mean(0)
    assert np.abs(pooled - target).max() < 0.5 * np.abs(original - target).max()
    assert style.focus > 0  # the new camera is blurrier: the old images are blurred, not sharpened


def test_a_restyled_sheet_is_found_at_the_same_poses(conditions: dict[str, list[np.ndarray]]) -> None:
    old = [generate_sheet(5, k, 0.0, A).image for k in range(2)]
    new = [generate_sheet(5, k, 0.0, B).image for k in range(2, 4)]
    style = fit_style(old, new)
    sheet = generate_sheet(5, 9, 0.0, A)
    styled = style.apply(sheet.image, np.random.default_rng(1))
    segmenter = Segmenter(reference_template(), SegmentOptions(angles=(-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)))
    before, after = segmenter.find(sheet.image), segmenter.find(styled)
    assert len(before) == len(after) == len(sheet.instances)  # every instance found, where it was found
    for x, y in zip(before, after, strict=True):
        assert abs(x.pose.cx - y.pose.cx) < 0.5 and abs(x.pose.cy - y.pose.cy) < 0.5
        assert abs(x.pose.angle - y.pose.angle) < 0.25


def test_each_nuisance_kind_stays_in_its_range_and_only_warp_moves_the_geometry(
    conditions: dict[str, list[np.ndarray]],
) -> None:
    crop = conditions["a_test"][0]
    ranges = NuisanceRanges().changed("blur=0.5:1.0").changed("jpeg=60:70").changed("warp=1:2")
    for kind in KINDS:
        changed, params = vary(crop, kind, np.random.default_rng(3), ranges)
        assert changed.shape == crop.shape and not np.array_equal(changed, crop), kind
        correlation = np.corrcoef(_edges(crop).ravel(), _edges(changed).ravel())[0, 1]
        assert (correlation < 0.99) if kind == "warp" else (correlation > 0.9), (kind, correlation)
        if kind == "blur":
            assert 0.5 <= float(params["sigma"]) <= 1.0  # type: ignore[arg-type]
        if kind == "jpeg":
            assert 60 <= int(params["quality"]) <= 70  # type: ignore[call-overload]


def test_generation_is_deterministic_and_each_image_its_own(conditions: dict[str, list[np.ndarray]]) -> None:
    sources = [(f"ok/{i}.png", c) for i, c in enumerate(conditions["a_train"][:3])]
    style = fit_style(conditions["a_train"], conditions["b_style"])
    kinds = ("noise", "warp")
    five = list(generate(sources, 5, 11, style, kinds))
    again = list(generate(sources, 5, 11, style, kinds))
    three = list(generate(sources, 3, 11, style, kinds))
    other = list(generate(sources, 5, 12, style, kinds))
    assert [m.name for m in five] == [m.name for m in again]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(five, again, strict=True))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(three, five, strict=False))  # image j is j's
    assert not any(np.array_equal(x.image, y.image) for x, y in zip(five, other, strict=True))
    assert [m.source for m in five] == ["ok/0.png", "ok/1.png", "ok/2.png", "ok/0.png", "ok/1.png"]
    assert [m.kind for m in five] == ["style+noise", "style+warp"] * 2 + ["style+noise"]
    assert set(five[1].params) == {"angle_deg", "shift_px", "scale"}


def test_augment_writes_the_images_and_a_manifest_that_says_what_made_each(
    tmp_path: Path, conditions: dict[str, list[np.ndarray]]
) -> None:
    ok, new = tmp_path / "ok", tmp_path / "new"
    for folder, images in ((ok, conditions["a_train"][:6]), (new, conditions["b_style"])):
        folder.mkdir()
        for i, image in enumerate(images):
            (folder / f"{i:02d}.png").write_bytes(encode_png(image))
    args = [
        "augment",
        "--ok",
        str(ok),
        "--n",
        "8",
        "--style-from",
        str(new),
        "--kinds",
        "blur,jpeg",
        "--seed",
        "4",
    ]
    for out in ("a", "b"):
        result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "a" / "augment.json").read_text())
    assert doc["count"] == 8 and doc["seed"] == 4 and len(doc["style_from"]) == 10
    assert doc["style"]["method"] == "histogram" and doc["ranges"]["jpeg"] == [50.0, 90.0]
    for record in doc["images"]:
        made = tmp_path / "a" / record["image"]
        assert (tmp_path / "b" / record["image"]).read_bytes() == made.read_bytes()  # the same seed, the same
        assert decode_image(made.read_bytes(), made.name).shape == conditions["a_train"][0].shape
        assert record["source"] in {f"{i:02d}.png" for i in range(6)} and record["kind"].startswith("style+")


def test_bad_inputs_get_clear_errors(tmp_path: Path, conditions: dict[str, list[np.ndarray]]) -> None:
    empty, ok, small = (tmp_path / n for n in ("empty", "ok", "small"))
    for folder in (empty, ok, small):
        folder.mkdir()
    crop = conditions["a_train"][0]
    for i in range(3):
        (ok / f"{i}.png").write_bytes(encode_png(conditions["a_train"][i]))
    (small / "s.png").write_bytes(encode_png(crop[:200, :300]))
    cases = [
        (dict(ok=str(empty), kinds=("noise",)), "holds no readable images"),
        (dict(ok=str(ok), style_from=str(empty)), "holds no readable images"),
        (
            dict(ok=str(ok), style_from=str(small)),
            "its images are 300x200, the OK images 448x352 \\(medians\\)",
        ),
        (dict(ok=str(ok)), "give --style-from, --kinds, or both"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidArgumentError, match=message):
            augment_location(out=str(tmp_path / "out"), n=2, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out" / "augment.json").exists()
    with pytest.raises(InvalidArgumentError, match="unknown kind 'fog'"):
        parse_kinds("noise,fog")
    with pytest.raises(InvalidArgumentError, match="expected KIND=LOW:HIGH"):
        NuisanceRanges().changed("blur=2")
    with pytest.raises(InvalidArgumentError, match="low <= high"):
        NuisanceRanges().changed("noise=5:1")


def test_retrain_style_from_restyles_each_ok_crop_with_the_new_photos_cut_by_the_template(
    tmp_path: Path, conditions: dict[str, list[np.ndarray]]
) -> None:
    from defectscan.worker.retrain import RetrainRequest, restyled

    new = tmp_path / "new-line-ok"
    new.mkdir()
    for k in range(2):  # whole photographs of the new condition: the template cuts them
        (new / f"{k}.png").write_bytes(encode_png(generate_sheet(6, k, 0.0, B).image))
    segmenter = Segmenter(reference_template(), SegmentOptions(angles=(-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)))
    crops = conditions["a_train"][:8]
    req = RetrainRequest(request_id="r", product="foil", registry=str(tmp_path / "reg"), style_from=str(new))
    aux = restyled(req, crops, segmenter)
    assert len(aux) == len(crops) and all(a.shape == c.shape for a, c in zip(aux, crops, strict=True))
    target = np.concatenate([c.reshape(-1, 3) for c in conditions["b_style"]]).mean(0)
    before = np.concatenate([c.reshape(-1, 3) for c in crops]).mean(0)
    after = np.concatenate([a.reshape(-1, 3) for a in aux]).mean(0)
    assert np.abs(after - target).max() < 0.5 * np.abs(before - target).max()
    assert restyled(req.model_copy(update={"style_from": None}), crops, segmenter) == []
