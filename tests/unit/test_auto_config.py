"""``train --auto``'s search: the split, the criterion, the margin, the budget, and a planted best
candidate chosen, with a real detector and real trained models."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from defectscan.pipeline.auto_config import (
    MARGIN,
    Candidate,
    candidates,
    choose,
    measured_by_training,
    search,
    separation,
    split,
)
from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.model_config import ModelConfig
from defectscan.pipeline.synth import instance_crops


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    return [c for c, _ in itertools.islice(instance_crops(11), 32)]


def _difference(config, train, scored):
    """A real, plain detector: the blurred difference from the training crops' median."""
    median = np.median(np.stack(train).astype(np.float32), axis=0)
    maps = [cv2.GaussianBlur(np.abs(c.astype(np.float32) - median).max(axis=2), (0, 0), 2.0) for c in scored]
    return [float(m.max()) for m in maps], maps


def _noise(config, train, scored):
    """A detector that sees nothing: its maps are noise."""
    rng = np.random.default_rng(config.image_size)
    maps = [rng.random(c.shape[:2]).astype(np.float32) for c in scored]
    return [float(m.max()) for m in maps], maps


def test_a_planted_best_candidate_is_chosen_and_every_candidate_recorded(crops):
    base = ModelConfig()
    blind = [("blind-a", base.changed(image_size=128)), ("blind-b", base.changed(image_size=192))]
    tried = [blind[0], ("sees", base.changed(image_size=320)), blind[1]]

    def measure(config, train, scored):
        return (_difference if config.image_size == 320 else _noise)(config, train, scored)

    chosen, record = search(crops, base, measure, tried=tried, seed=1)
    assert chosen.image_size == 320 and record.chosen == "sees"
    by_name = {c.name: c for c in record.candidates}
    assert list(by_name) == ["blind-a", "sees", "blind-b"]
    assert by_name["sees"].image_auroc > 0.9 and by_name["sees"].aupro > 0.5
    assert by_name["blind-a"].criterion < 0.65
    assert record.held_out == 8 and record.trained_on == 24 and sum(record.planted.values()) == 8


def test_a_costlier_candidate_must_win_by_the_margin():
    def cand(name, value):
        return Candidate(name=name, method="patchcore", image_size=256, layers=(), criterion=value)

    assert choose([cand("default", 0.90), cand("bigger", 0.90 + MARGIN / 2)]).name == "default"
    assert choose([cand("default", 0.90), cand("bigger", 0.90 + 2 * MARGIN)]).name == "bigger"
    skipped = Candidate(name="huge", method="patchcore", image_size=512, layers=(), skipped="budget")
    assert choose([cand("default", 0.5), skipped]).name == "default"
    with pytest.raises(InvalidArgumentError):
        choose([skipped])


def test_candidates_over_the_budget_are_skipped_and_said(crops):
    base = ModelConfig()
    now = [0.0]

    def measure(config, train, scored):
        now[0] += 30.0 * (config.image_size / 256) ** 2  # the default takes 30 s of the fake clock
        return _difference(config, train, scored)

    tried = [
        (n, c)
        for n, c in candidates(base, aligned=True)
        if c.method == "patchcore" and c.intensity == "as-is"
    ]
    _, record = search(crops, base, measure, tried=tried, budget_min=2.0, clock=lambda: now[0])
    done = [c.name for c in record.candidates if c.skipped is None]
    skipped = [c.name for c in record.candidates if c.skipped]
    # 30 s, then the 384 px one (est. 67.5 s) ends at 97.5 s; the fine layers (est. 108 s) and 512 px
    # (est. 120 s) would end past 120 s
    assert done == ["patchcore-256", "patchcore-384"] and skipped == ["patchcore-256-fine", "patchcore-512"]
    assert "budget" in record.candidates[-1].skipped


def test_the_candidate_list_covers_sizes_layers_and_methods():
    names = [n for n, _ in candidates(ModelConfig(target_frr=0.02), aligned=True)]
    assert names[0] == "patchcore-256" and {"padim-256", "patchcore+variation-256", "patchcore-512"} <= set(
        names
    )
    intensities = {n: c.intensity for n, c in candidates(ModelConfig(intensity="standardised"), aligned=True)}
    assert (
        intensities["patchcore-256"] == "as-is"
        and intensities["patchcore-256-standardised"] == "standardised"
    )
    assert all(c.target_frr == 0.02 for _, c in candidates(ModelConfig(target_frr=0.02), aligned=False))
    assert "patchcore+variation-256" not in [n for n, _ in candidates(ModelConfig(), aligned=False)]


def test_split_keeps_a_photographs_crops_together_and_refuses_tiny_sets():
    groups = [f"photo{i // 4}" for i in range(64)]
    train, held = split(64, groups)
    assert not {groups[i] for i in train} & {groups[i] for i in held}
    assert len(held) == 16
    with pytest.raises(InvalidArgumentError, match="at least 16"):
        split(10)


def test_separation_is_perfect_for_maps_that_light_exactly_the_masks():
    rng = np.random.default_rng(0)
    masks = [np.zeros((64, 64), bool) for _ in range(4)]
    for i, m in enumerate(masks):
        m[10 + i : 14 + i, 20:40] = True
    maps = [m.astype(np.float32) + 0.01 * rng.random(m.shape).astype(np.float32) for m in masks]
    clean = [0.02 * rng.random((64, 64)).astype(np.float32) for _ in range(4)]
    image, pro = separation(
        [float(c.max()) for c in clean], [float(m.max()) for m in maps], maps, masks, clean
    )
    assert image == 1.0 and pro > 0.99


def test_real_models_a_blurred_small_input_loses_to_the_default(crops):
    base = ModelConfig(tta_views=("identity",), tta_in_training=False)
    tried = [("tiny-64", base.changed(image_size=64)), ("default-256", base)]
    chosen, record = search(crops, base, measured_by_training, tried=tried, seed=2)
    figures = {c.name: c.criterion for c in record.candidates}
    assert chosen.image_size == 256, figures
    assert figures["default-256"] > figures["tiny-64"] + MARGIN
