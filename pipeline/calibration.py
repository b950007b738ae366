"""Threshold rules: a model's :class:`Calibration` from out-of-sample OK scores (and labelled defects).

From out-of-sample OK scores (every OK image scored out of fold for PatchCore, a holdout otherwise):
the operating point for ``target_frr`` (:mod:`pipeline.operating_point`: a robust Gumbel tail, with the
expected false-reject rate and its interval, and the escapes of labelled defects at it); a threshold
given by hand, with what it costs on those scores; or, for models without a target, ``mean + 3 std`` of
the held-out scores but at least their maximum, or, with labelled defects, the threshold with the best
F1. No torch here: ``defectscan threshold`` recalibrates from a model's document alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.operating_point import RULE, TAIL, operating_point, point_at


class Calibration(BaseModel):
    """A model's threshold, how it was set, and what it costs on the scores it was set from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float
    rule: str
    ok_mean: float
    ok_std: float
    ok_count: int
    defect_count: int = 0
    f1: float | None = None
    target_frr: float | None = None  # the operating point's fields (pipeline.operating_point)
    expected_frr: float | None = None
    frr_interval: tuple[float, float] | None = None
    ok_rejected: int | None = None  # out-of-sample OK images above the threshold
    escapes: int | None = None  # labelled defect crops at or below it
    folds: int = 0
    generated_count: int = 0  # generated images (a new condition's look) scored out of fold
    generated_expected_frr: float | None = None  # their share above the threshold, under their own fit
    generated_rejected: int | None = None
    new_condition_count: int = 0  # the new condition's own OK images (--style-from), never trained on
    new_condition_expected_frr: float | None = None
    new_condition_rejected: int | None = None


MIN_NEW_CONDITION = 5  # a new condition's own OK images a tail is fitted from
_HOLDS_FOR = {"generated": "generated images", "new_condition": "the new condition's own OK images"}

UNCALIBRATED = Calibration(threshold=float("inf"), rule="uncalibrated", ok_mean=0.0, ok_std=1.0, ok_count=0)


def calibrate(
    ok_scores: Sequence[float],
    defect_scores: Sequence[float] = (),
    target_frr: float | None = None,
    folds: int = 0,
    value: float | None = None,
    generated: Sequence[float] = (),
    new_condition: Sequence[float] = (),
) -> Calibration:
    """The rules from the module docstring: the operating point for ``target_frr`` from out-of-sample
    OK scores, a threshold ``value`` given by hand (with what it costs on those scores), or (both None)
    the holdout rules.

    ``generated``: out-of-fold scores of images generated from the OK images in a new condition's look
    (``defectscan augment``, ``retrain --style-from``); ``new_condition``: scores of that condition's own
    OK images (the ``--style-from`` images), which the model never trained on. Both stand for the parts
    the line will make from now on, so the operating point must hold for them too: the threshold is the
    highest of the sets' (each with its own tail fit; the new condition's own images from
    :data:`MIN_NEW_CONDITION` on), and the figures of each are kept. The generated images teach the model
    the new look; the few real ones say how far it learned it (on magnetic_tile under a light and camera
    change, the new condition's OK scores spread a third wider than the generated images',
    docs/benchmarks.md).
    How much generated images shape the model is their training weight; whether their false rejects
    count is not a weight."""
    enough = {"generated": 2, "new_condition": MIN_NEW_CONDITION}
    sets = {
        k: v
        for k, v in {"generated": generated, "new_condition": new_condition}.items()
        if len(v) >= enough[k]
    }
    if sets and (target_frr is not None or value is not None):
        own = calibrate(ok_scores, defect_scores, target_frr, folds, value)
        threshold, raised = own.threshold, None
        if value is None and target_frr:  # a threshold set by hand stays where it was set
            for name, scores in sets.items():
                point = operating_point(scores, target_frr)
                if point.threshold > threshold:
                    threshold, raised = point.threshold, name
        cal = own if raised is None else calibrate(ok_scores, defect_scores, None, folds, threshold)
        update: dict[str, object] = {
            "rule": own.rule if raised is None else f"{own.rule}; raised to hold for {_HOLDS_FOR[raised]}",
            "target_frr": own.target_frr,
        }
        for name, scores in sets.items():
            at = point_at(scores, threshold)
            update |= {
                f"{name}_count": at.ok_count,
                f"{name}_expected_frr": at.expected_frr,
                f"{name}_rejected": at.ok_rejected,
            }
        return cal.model_copy(update=update)
    ok = np.asarray(ok_scores, dtype=np.float64)
    if ok.size == 0:
        raise InvalidArgumentError("holdout", "calibration needs held-out OK images (holdout > 0)")
    mean, std = float(ok.mean()), float(ok.std(ddof=1)) if ok.size > 1 else 0.0
    std = max(std, 1e-6 * max(abs(mean), 1.0))
    moments = {"ok_mean": mean, "ok_std": std}
    if target_frr is not None or value is not None:
        if value is not None:
            point = point_at(ok, value, defect_scores)
            rule = f"set by hand (--value); expected false-reject rate from the {TAIL}"
        else:
            point = operating_point(ok, target_frr or 0.0, defect_scores)
            rule = f"{RULE} ({f'{folds} folds' if folds else 'holdout'})"
        return Calibration(
            threshold=point.threshold,
            rule=rule,
            **moments,
            ok_count=point.ok_count,
            defect_count=point.defect_count,
            target_frr=point.target_frr,
            expected_frr=point.expected_frr,
            frr_interval=point.frr_interval,
            ok_rejected=point.ok_rejected,
            escapes=point.escapes if point.defect_count else None,
            folds=folds,
        )
    if len(defect_scores) == 0:
        threshold = max(mean + 3 * std, float(ok.max()))
        return Calibration(
            threshold=threshold, rule="ok-holdout: max(mean + 3 std, max)", **moments, ok_count=int(ok.size)
        )
    bad = np.asarray(defect_scores, dtype=np.float64)
    threshold, f1 = f1_optimal_threshold(ok, bad)
    return Calibration(
        threshold=threshold,
        rule="f1-optimal over held-out OK and labelled defects",
        **moments,
        ok_count=int(ok.size),
        defect_count=int(bad.size),
        f1=f1,
    )


def f1_optimal_threshold(ok: NDArray[np.float64], bad: NDArray[np.float64]) -> tuple[float, float]:
    """The threshold (midway between neighbouring scores) with the best F1 for 'defect' as positive."""
    scores = np.concatenate([ok, bad])
    labels = np.concatenate([np.zeros(ok.size), np.ones(bad.size)])
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    f1 = 2 * tp / (tp + fp + y.sum())
    best = int(np.argmax(f1))
    below = s[best + 1] if best + 1 < s.size else s[best] - 1e-6
    return float((s[best] + below) / 2), float(f1[best])
