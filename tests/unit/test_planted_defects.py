"""Planted defects: exact masks, only on the product, each kind doing what it says, determinism, and
bad inputs."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.images import to_gray
from defectscan.pipeline.planted_defects import KINDS, MIN_CHANGE, placement, plant, planted_set
from defectscan.pipeline.synth import instance_crops


@pytest.fixture(scope="module")
def prints() -> tuple[list[np.ndarray], np.ndarray]:
    crops = [c for c, _ in itertools.islice(instance_crops(5), 12)]
    return crops, np.mean(crops, axis=0).round().astype(np.uint8)


def _badge(size: int = 200, seed: int = 0) -> np.ndarray:
    """A small bright print (a ring and three bars) in the middle of a wide dark substrate."""
    rng = np.random.default_rng(seed)
    grey = np.full((size, size), 30.0, np.float32)
    cv2.circle(grey, (100, 100), 30, 220.0, 6)
    for x in (85, 100, 115):
        cv2.rectangle(grey, (x - 3, 85), (x + 3, 115), 220.0, -1)
    grey = cv2.GaussianBlur(grey, (0, 0), 0.8) + rng.normal(0, 2, grey.shape).astype(np.float32)
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _surface(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grain = cv2.GaussianBlur(rng.standard_normal((160, 160)).astype(np.float32), (0, 0), 1.2)
    grey = np.clip(120.0 + 90.0 * cv2.GaussianBlur(grain, (31, 1), 0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def test_masks_are_exactly_the_changed_pixels_and_every_change_is_visible(prints):
    crops, reference = prints
    at = placement(reference)
    for made, crop in zip(planted_set(crops, at, seed=2), crops, strict=True):
        changed = (made.image != crop).any(axis=2)
        assert made.mask.sum() >= 6
        assert np.array_equal(made.mask, changed), made.kind
        delta = np.abs(made.image.astype(int) - crop.astype(int)).max(axis=2)
        assert delta[changed].min() >= MIN_CHANGE - 0.5, made.kind


def test_defects_land_on_the_product_never_on_the_open_substrate():
    crops = [_badge(seed=s) for s in range(6)]
    at = placement(np.mean(crops, axis=0).round().astype(np.uint8))
    assert at.printed
    far = np.ones(at.area.shape, bool)
    far[50:150, 50:150] = False  # the badge spans 64-136; its band is 6 px
    assert not (at.area & far).any()
    for kind in KINDS:
        for seed in range(4):
            made = plant(crops[seed], kind, at, np.random.default_rng(seed))
            assert made.kind == kind
            assert not (made.mask & ~at.area).any(), kind


def test_each_kind_does_what_it_says_on_a_print(prints):
    crops, reference = prints
    at = placement(reference)
    assert at.printed and at.text.any()
    for seed in range(3):
        rng = np.random.default_rng(seed)
        crop = crops[seed]
        gray = to_gray(crop)
        crack = plant(crop, "crack", at, rng)
        inscribed = cv2.distanceTransform(crack.mask.astype(np.uint8), cv2.DIST_L2, 5).max()
        assert inscribed <= 2.5, "a crack is 1-3 px wide"
        assert crack.mask.sum() >= 20
        missing = plant(crop, "missing_print", at, rng)
        near_print = cv2.dilate(at.structure.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert near_print[missing.mask].all(), "only print (and its edge) goes missing"
        assert to_gray(missing.image)[missing.mask].mean() < gray[missing.mask].mean() - 40, (
            "print became substrate"
        )
        extra = plant(crop, "extra_print", at, rng)
        assert (gray[extra.mask] < 100).mean() > 0.7, "extra print lands on the substrate"
        assert to_gray(extra.image)[extra.mask].mean() > gray[extra.mask].mean() + 40, (
            "substrate became print"
        )
        blur = plant(crop, "text_blur", at, rng)
        assert at.text[blur.mask].all()
        sharp = cv2.Laplacian(gray, cv2.CV_32F)[blur.mask]
        soft = cv2.Laplacian(to_gray(blur.image), cv2.CV_32F)[blur.mask]
        assert np.abs(soft).mean() < 0.7 * np.abs(sharp).mean()
        stain = plant(crop, "stain", at, rng)
        blob = stain.mask.astype(np.uint8)
        assert cv2.connectedComponents(blob)[0] - 1 <= 3, "a stain is one blob (a few where it crosses print)"


def test_a_surface_without_print_takes_defects_anywhere_but_the_border_and_grey_stays_grey():
    crops = [_surface(s) for s in range(6)]
    at = placement(np.mean(crops, axis=0).round().astype(np.uint8))
    assert not at.printed
    assert at.area[10:-10, 10:-10].all() and not at.area[:3].any()
    for made in planted_set(crops, at, seed=4):
        assert not (made.mask & ~at.area).any()
        assert (made.image[..., 0] == made.image[..., 1]).all() and (
            made.image[..., 1] == made.image[..., 2]
        ).all()


def test_the_same_seed_makes_the_same_defects_whatever_follows(prints):
    crops, reference = prints
    at = placement(reference)
    first = list(planted_set(crops[:4], at, seed=9))
    again = list(planted_set(crops, at, seed=9))[:4]
    other = list(planted_set(crops[:4], at, seed=10))
    for a, b in zip(first, again, strict=True):
        assert a.kind == b.kind and a.params == b.params
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert [m.kind for m in first] == list(KINDS[:4])
    assert any(not np.array_equal(a.mask, b.mask) for a, b in zip(first, other, strict=True))


def test_bad_inputs_are_clear_errors(prints):
    crops, reference = prints
    at = placement(reference)
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidArgumentError, match="unknown"):
        plant(crops[0], "smudge", at, rng)
    with pytest.raises(InvalidArgumentError, match="unknown"):
        list(planted_set(crops, at, seed=0, kinds=()))
    with pytest.raises(InvalidArgumentError, match="RGB image"):
        plant(crops[0][..., 0], "crack", at, rng)
    with pytest.raises(InvalidArgumentError, match="RGB image"):
        plant(crops[0][:10], "crack", at, rng)
    smaller = cv2.resize(crops[0], (crops[0].shape[1] * 3 // 4, crops[0].shape[0] * 3 // 4))
    made = plant(smaller, "extra_print", at, rng)  # crops of a product vary in size: the placement follows
    assert made.image.shape == smaller.shape and not (made.mask & ~at.fitted(smaller.shape[:2]).area).any()
    flat = np.full((120, 120, 3), 128, np.uint8)
    flat_at = placement(flat)
    with pytest.raises(InvalidArgumentError, match="text_blur"):
        plant(flat, "text_blur", flat_at, rng)  # a blur changes nothing on a flat crop
    made = next(planted_set([flat], flat_at, seed=0, kinds=("text_blur", "crack")))
    assert made.kind == "crack" and made.mask.any()  # the next kind that can be planted
