"""The operating point: a threshold for a target false-reject rate from out-of-sample OK scores."""

from __future__ import annotations

import numpy as np
import pytest

from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.operating_point import fit_ok_tail, operating_point, oracle_escape_rate, rates


@pytest.mark.parametrize("target", [0.01, 0.05])
def test_the_threshold_rejects_about_the_target_share_of_good_parts(target: float) -> None:
    rng = np.random.default_rng(1)
    point = operating_point(rng.gumbel(10.0, 1.5, 300), target)
    unseen = rng.gumbel(10.0, 1.5, 400_000)  # good parts the threshold was not set on
    realised = float((unseen > point.threshold).mean())
    assert target / 2 <= realised <= 2 * target
    assert point.expected_frr == pytest.approx(target, rel=1e-6)
    low, high = point.frr_interval
    assert low < target < high and high < 4 * target


def test_a_target_below_one_over_n_gets_a_threshold_beyond_the_ok_scores_and_an_honest_interval() -> None:
    rng = np.random.default_rng(2)
    ok = rng.gumbel(5.0, 1.0, 40)
    point = operating_point(ok, 0.005)  # 1/n = 0.025: no empirical quantile reaches it
    realised = float((rng.gumbel(5.0, 1.0, 400_000) > point.threshold).mean())
    assert point.threshold > ok.max()
    low, high = point.frr_interval
    assert low <= realised <= high  # with 40 images the fit is uncertain, and the interval says how much


def test_one_odd_ok_image_does_not_move_the_threshold() -> None:
    rng = np.random.default_rng(3)
    ok = rng.gumbel(10.0, 1.0, 80)
    odd = np.append(ok, 60.0)  # a mislabelled or damaged "OK" image
    assert operating_point(odd, 0.01).threshold == pytest.approx(
        operating_point(ok, 0.01).threshold, rel=0.03
    )
    assert operating_point(odd, 0.01).threshold < 30.0


def test_with_defects_the_escapes_are_counted_at_the_frr_threshold() -> None:
    rng = np.random.default_rng(4)
    ok, bad = rng.gumbel(10.0, 1.0, 200), np.array([11.0, 14.0, 20.0, 30.0])
    point = operating_point(ok, 0.01, bad)
    assert point.threshold == operating_point(ok, 0.01).threshold  # defects never lower the FRR bound
    assert point.defect_count == 4 and point.escapes == int((bad <= point.threshold).sum())
    assert point.escape_rate == point.escapes / 4


def test_rates_and_the_oracle() -> None:
    ok, bad = list(range(1, 11)), [5.0, 9.5, 11.0, 12.0]
    assert rates(ok, bad, 9.0) == (0.1, 0.25)
    assert oracle_escape_rate(ok, bad, 0.1) == 0.25  # best with at most 1 of 10 good rejected
    assert oracle_escape_rate(ok, bad, 0.0) == 0.5


def test_bad_inputs_are_named() -> None:
    with pytest.raises(InvalidArgumentError):
        operating_point([1.0], 0.01)
    with pytest.raises(InvalidArgumentError):
        operating_point([1.0, 2.0, 3.0], 0.7)
    assert fit_ok_tail([2.0, 2.0, 2.0, 3.0]).scale > 0  # ties still give a usable fit
