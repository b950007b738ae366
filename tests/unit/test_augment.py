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
from defectscan.pipeline.style import METHODS, fit_style, noise_level, sharpness
from defectscan.pipeline.synth import SheetSpec, generate_sheet, reference_template
from defectscan.producer.cli import cli
from defectscan.worker.augmentation import augment_location, aux_sources
from defectscan.worker.datasets import read_folder

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
    restyled, errors, before, toned = [], [], [], []
    # each generated image draws the light of one of the new images: compared pair by pair, without it
    unlit = replace(style, lighting=())
    for a, b in zip(conditions["a_test"], conditions["b_test"], strict=True):
        styled = style.apply(a, rng)
        restyled.append(styled)
        assert styled.shape == a.shape and styled.dtype == np.uint8
        toned.append(unlit.apply(a, rng))
        errors.append(np.abs(toned[-1].astype(float) - b).mean())
        before.append(np.abs(a.astype(float) - b).mean())
        # the structure stays: edges where they were
        assert np.corrcoef(_edges(a).ravel(), _edges(styled).ravel())[0, 1] > 0.95
    # closer to the same instances photographed under the new condition than the originals were
    assert np.mean(errors) < 0.8 * np.mean(before)
    # over the sheet, each channel's mean within a few levels of the new condition's: the cast is carried
    pooled = np.concatenate([c.reshape(-1, 3) for c in toned]).mean(0)
    target = np.concatenate([c.reshape(-1, 3) for c in conditions["b_test"]]).mean(0)
    original = np.concatenate([c.reshape(-1, 3) for c in conditions["a_test"]]).mean(0)
    assert np.abs(pooled - target).max() < 0.5 * np.abs(original - target).max()
    assert style.focus > 0  # the new camera is blurrier: the old images are blurred, not sharpened
    # the noise as a model of resized crops sees it (scale 2) comes within a fifth of the new condition's
    noise_new = np.median([noise_level(c, 2) for c in conditions["b_test"]])
    noise_old = np.median([noise_level(c, 2) for c in conditions["a_test"]])
    assert abs(np.median([noise_level(c, 2) for c in restyled]) - noise_new) < 0.2 * noise_new
    assert noise_new > 1.4 * noise_old
    # the light falls off across the images as it does across the new ones, not as across the old ones
    old = conditions["a_train"]
    fall_new, fall_old = _fall_off(conditions["b_style"]), _fall_off(old)
    fall = _fall_off([style.apply(a, rng) for a in old])
    assert abs(fall - fall_new) < 0.35 * abs(fall_old - fall_new)


def _fall_off(images: list[np.ndarray]) -> float:
    """The mean change of log luminance from the left half of each image to its right and from its top
    half to its bottom, summed (the sheets' light changes along a slanted direction)."""
    diffs = []
    for img in images:
        luma = np.log(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(float) + 8)
        h, w = luma.shape
        diffs.append(
            luma[:, w // 2 :].mean()
            - luma[:, : w // 2].mean()
            + luma[h // 2 :].mean()
            - luma[: h // 2].mean()
        )
    return float(np.mean(diffs))


@pytest.mark.parametrize("change", ["colour", "noise", "light"])
def test_a_change_of_colour_noise_or_light_alone_is_not_taken_for_blur(
    conditions: dict[str, list[np.ndarray]], change: str
) -> None:
    """Contrast, a cast, grain and a light gradient all change gradient magnitudes; only blur may make
    the style blur. (The same sheets under both conditions: each sheet draws its own lens blur.)"""
    new = {
        "colour": replace(A, colour_gain=(1.1, 0.95, 0.8)),
        "noise": replace(A, noise_sigma=5.0),
        "light": replace(A, gradient=(0.25, 0.35)),
    }[change]
    old = _crops(A, range(3, 5))
    style = fit_style(old, _crops(new, range(3, 5)))
    assert abs(style.focus) < 0.2
    assert sharpness(style.apply(old[0], np.random.default_rng(0))) == pytest.approx(
        sharpness(old[0]), rel=0.02
    )


def test_grey_images_stay_grey(conditions: dict[str, list[np.ndarray]]) -> None:
    """A grey product under a new camera: the noise added is common to the channels, as the new
    images' is, so restyled images stay grey."""

    def grey(images: list[np.ndarray]) -> list[np.ndarray]:
        return [np.repeat(cv2.cvtColor(i, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2) for i in images]

    style = fit_style(grey(conditions["a_train"]), grey(conditions["b_style"]))
    assert style.noise_shared == 1.0 and style.noise_sigma > 0
    styled = style.apply(grey(conditions["a_test"])[0], np.random.default_rng(0))
    assert np.array_equal(styled[..., 0], styled[..., 1]) and np.array_equal(styled[..., 0], styled[..., 2])
    colour = fit_style(conditions["a_train"], conditions["b_style"])  # the sheets' noise: per channel
    assert colour.noise_shared < 0.3


def test_a_restyled_sheet_is_found_at_the_same_poses(conditions: dict[str, list[np.ndarray]]) -> None:
    old = [generate_sheet(5, k, 0.0, A).image for k in range(2)]
    new = [generate_sheet(5, k, 0.0, B).image for k in range(2, 4)]
    style = fit_style(old, new)
    sheet = generate_sheet(5, 9, 0.0, A)
    segmenter = Segmenter(reference_template(), SegmentOptions(angles=(-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)))
    before = segmenter.find(sheet.image)
    styled = style.apply(sheet.image, np.random.default_rng(1))
    # nothing moved: the restyled sheet's edges lie on the original's (phase correlation of edge maps)
    (dx, dy), _ = cv2.phaseCorrelate(
        _edges(sheet.image).astype(np.float64), _edges(styled).astype(np.float64)
    )
    assert abs(dx) < 0.1 and abs(dy) < 0.1
    # and the matcher finds every instance where it was, within its accuracy on the line (1.5 px): a
    # light that falls off across an instance, a blur and noise pull the match a little, as they do there
    after = segmenter.find(styled)
    assert len(before) == len(after) == len(sheet.instances)
    for x, y in zip(before, after, strict=True):
        assert abs(x.pose.cx - y.pose.cx) < 1.0 and abs(x.pose.cy - y.pose.cy) < 1.0
        assert abs(x.pose.angle - y.pose.angle) < 0.5


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
    # training reads the manifest back: each generated image is held out with the OK image it came from
    ok_names = read_folder(ok).names
    aux = read_folder(tmp_path / "a")
    made_from = aux_sources(str(tmp_path / "a"), aux.names, ok_names)
    by_name = {r["image"]: r["source"] for r in doc["images"]}
    assert [ok_names[i] for i in made_from] == [by_name[name] for name in aux.names]
    assert aux_sources(str(tmp_path / "a"), aux.names, ["other.png"]) == [-1] * len(aux.names)
    assert aux_sources(str(new), ["00.png"], ok_names) == [-1]  # no manifest there


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
    aux, cut = restyled(req, crops, segmenter)
    assert len(aux) == len(crops) and all(a.shape == c.shape for a, c in zip(aux, crops, strict=True))
    target = np.concatenate([c.reshape(-1, 3) for c in conditions["b_style"]]).mean(0)
    before = np.concatenate([c.reshape(-1, 3) for c in crops]).mean(0)
    after = np.concatenate([a.reshape(-1, 3) for a in aux]).mean(0)
    assert np.abs(after - target).max() < 0.5 * np.abs(before - target).max()
    # the new condition's photographs as the template cut them (8 instances each), for the check
    assert len(cut) == 16 and all(c.shape == crops[0].shape for c in cut)
    assert restyled(req.model_copy(update={"style_from": None}), crops, segmenter) == ([], [])
