"""The operating point: the image-score threshold for a chosen false-reject rate, and what it costs.

Users act on the verdict, so a threshold must come with the share of good parts it rejects. From the
scores of OK images the model never trained on, :func:`fit_ok_tail` fits the distribution of OK scores,
and :func:`operating_point` sets the threshold where that distribution leaves ``target_frr`` of good
parts above it.

**Why a Gumbel fit, robustly.** An image's score is the maximum of its anomaly map over thousands of
patches, and the maximum of many light-tailed values follows a Gumbel (type-I extreme-value)
distribution. Its tail is exponential: heavier than a Gaussian's, so a Gaussian fit would put the
threshold too low and reject more good parts than promised; an empirical quantile cannot reach rates
below ``1 / n`` at all. Location and scale come from the median and the interquartile range (for a
Gumbel, ``IQR = 1.5725 * scale`` and ``median = location - 0.3665 * scale``), so one odd OK image, or a
few, moves neither. ``bench/operating_point.py`` measures the realised false-reject rate of this and the
other rules on held-out good images.

**Interval.** The expected false-reject rate at the threshold is ``target_frr`` under the fit; its 90 %
interval comes from refitting on bootstrap resamples of the OK scores (the fit's own uncertainty with
``n`` images), so a user sees how far a small OK set can be trusted.

**With labelled defects** the threshold stays the lowest one the false-reject target allows (a lower one
would reject more good parts than the target; a higher one only lets more defects through), and the
escape rate on the defects at that threshold is reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from defectscan.pipeline.errors import InvalidArgumentError

GUMBEL_IQR = math.log(math.log(4.0)) - math.log(math.log(4.0 / 3.0))  # IQR of the standard Gumbel
GUMBEL_MEDIAN = -math.log(math.log(2.0))  # median of the standard Gumbel
BOOTSTRAP = 400
TAIL = "gumbel tail of out-of-sample OK scores (median and IQR)"
RULE = f"{TAIL}, threshold at 1 - target_frr"


@dataclass(frozen=True)
class OkTail:
    """A Gumbel fit of OK image scores."""

    location: float
    scale: float

    def threshold(self, frr: float) -> float:
        """The score above which a share ``frr`` of good parts lies."""
        return self.location - self.scale * math.log(-math.log1p(-frr))

    def frr(self, threshold: float) -> float:
        """The share of good parts scoring above ``threshold``."""
        z = (threshold - self.location) / self.scale
        return float(-math.expm1(-math.exp(-max(min(z, 700.0), -700.0))))


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    target_frr: float | None  # None: a threshold given by hand
    expected_frr: float
    frr_interval: tuple[float, float]  # 90 %, from bootstrap refits
    ok_count: int
    ok_rejected: int  # OK scores above the threshold (out of sample)
    location: float
    scale: float
    defect_count: int = 0
    escapes: int = 0  # labelled defects at or below the threshold

    @property
    def escape_rate(self) -> float | None:
        return self.escapes / self.defect_count if self.defect_count else None


def fit_ok_tail(scores: Sequence[float] | np.ndarray) -> OkTail:
    """A robust Gumbel fit: location and scale from the median and the interquartile range."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size < 2:
        raise InvalidArgumentError(
            "OK scores", f"a fit needs at least 2 out-of-sample OK scores, got {values.size}"
        )
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])
    spread = float(q3 - q1)
    if spread <= 0:  # ties (a handful of identical scores): fall back to the spread of the whole set
        spread = float(values.max() - values.min()) / 2
    scale = max(spread / GUMBEL_IQR, 1e-9 * max(abs(float(median)), 1.0))
    return OkTail(float(median) - GUMBEL_MEDIAN * scale, scale)


def operating_point(
    ok_scores: Sequence[float] | np.ndarray,
    target_frr: float = 0.01,
    defect_scores: Sequence[float] = (),
    seed: int = 0,
) -> OperatingPoint:
    """The threshold for ``target_frr`` from out-of-sample OK scores, with its expected false-reject
    rate, a 90 % interval, and (with labelled defects) the escapes at it."""
    if not 0 < target_frr < 0.5:
        raise InvalidArgumentError("--target-frr", f"must be in (0, 0.5), got {target_frr}")
    return point_at(ok_scores, fit_ok_tail(ok_scores).threshold(target_frr), defect_scores, target_frr, seed)


def point_at(
    ok_scores: Sequence[float] | np.ndarray,
    threshold: float,
    defect_scores: Sequence[float] = (),
    target_frr: float | None = None,
    seed: int = 0,
) -> OperatingPoint:
    """What a given threshold costs: its expected false-reject rate under the fit of the OK scores, with
    the 90 % interval, and the OK images and labelled defects on the wrong side of it."""
    ok = np.asarray(ok_scores, dtype=np.float64)
    tail = fit_ok_tail(ok)
    rng = np.random.default_rng(seed)
    refits = [fit_ok_tail(rng.choice(ok, ok.size)).frr(threshold) for _ in range(BOOTSTRAP)]
    low, high = np.quantile(refits, [0.05, 0.95])
    bad = np.asarray(defect_scores, dtype=np.float64)
    return OperatingPoint(
        threshold=float(threshold),
        target_frr=target_frr,
        expected_frr=tail.frr(threshold),
        frr_interval=(float(low), float(high)),
        ok_count=int(ok.size),
        ok_rejected=int((ok > threshold).sum()),
        location=tail.location,
        scale=tail.scale,
        defect_count=int(bad.size),
        escapes=int((bad <= threshold).sum()),
    )


def rates(
    ok_scores: Sequence[float], defect_scores: Sequence[float], threshold: float
) -> tuple[float, float]:
    """``(false-reject rate, escape rate)`` of a threshold on scored good and defective images."""
    ok = np.asarray(ok_scores, dtype=np.float64)
    bad = np.asarray(defect_scores, dtype=np.float64)
    frr = float((ok > threshold).mean()) if ok.size else 0.0
    escapes = float((bad <= threshold).mean()) if bad.size else 0.0
    return frr, escapes


def oracle_escape_rate(ok_scores: Sequence[float], defect_scores: Sequence[float], frr: float) -> float:
    """The fewest escapes any threshold achieves while rejecting at most a share ``frr`` of these good
    images (the yardstick for a threshold set without seeing them)."""
    ok = np.sort(np.asarray(ok_scores, dtype=np.float64))
    bad = np.asarray(defect_scores, dtype=np.float64)
    allowed = math.floor(frr * ok.size + 1e-9)  # good images that may lie above the threshold
    threshold = ok[ok.size - allowed - 1] if allowed < ok.size else -math.inf
    return float((bad <= threshold).mean()) if bad.size else 0.0
