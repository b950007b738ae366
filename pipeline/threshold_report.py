"""What a range of thresholds would do on a labelled set: false-reject and escape rates, and a picture.

``defectscan threshold MODEL --report DATA`` scores the good and defective test images of an MVTec-layout
folder and prints, for the model's current threshold and for the thresholds its out-of-sample OK scores
set for a range of target false-reject rates, the rates each would give on that folder, beside the
oracle's escape rate (the fewest escapes any threshold gets at the same false-reject rate on these very
scores). The picture shows both score histograms with the thresholds marked.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from defectscan.pipeline.operating_point import fit_ok_tail, oracle_escape_rate, rates

TARGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


@dataclass(frozen=True)
class ReportRow:
    label: str  # "current", or the target false-reject rate the threshold was set for
    threshold: float
    expected_frr: float | None  # under the fit of the model's out-of-sample OK scores
    frr: float  # realised on the folder's good images
    escape_rate: float  # on its defective images
    oracle_escape_rate: float  # the best any threshold does at the same realised false-reject rate
    current: bool = False


def report_rows(
    good: Sequence[float],
    defective: Sequence[float],
    current: float,
    ok_scores: Sequence[float] = (),
    targets: Sequence[float] = TARGETS,
    current_target: float | None = None,
) -> list[ReportRow]:
    """The current threshold (set for ``current_target``, if any) and, where the model keeps its
    out-of-sample OK scores, one threshold per other target rate, sorted by threshold (highest first:
    fewest false rejects first)."""
    tail = fit_ok_tail(ok_scores) if len(ok_scores) >= 2 else None
    label = "current" if current_target is None else f"current = target {current_target:.1%}"
    points = [(label, current, True)]
    if tail is not None:
        points += [(f"target {t:.1%}", tail.threshold(t), False) for t in targets if t != current_target]
    rows = []
    for label, threshold, is_current in points:
        frr, escapes = rates(good, defective, threshold)
        rows.append(
            ReportRow(
                label=label,
                threshold=float(threshold),
                expected_frr=tail.frr(threshold) if tail is not None else None,
                frr=frr,
                escape_rate=escapes,
                oracle_escape_rate=oracle_escape_rate(good, defective, frr),
                current=is_current,
            )
        )
    return sorted(rows, key=lambda r: -r.threshold)


def report_png(
    good: Sequence[float], defective: Sequence[float], rows: Sequence[ReportRow], title: str
) -> bytes:
    """Histograms of the good and defective images' scores, every row's threshold marked (the current
    one solid), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    values = np.asarray([*good, *defective, *(r.threshold for r in rows)], np.float64)
    bins = list(np.linspace(values.min(), values.max(), 41)) if values.size else 10
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
    try:
        axes.hist(good, bins=bins, alpha=0.6, color="tab:green", label=f"good ({len(good)})")
        axes.hist(defective, bins=bins, alpha=0.6, color="tab:red", label=f"defective ({len(defective)})")
        for row in rows:
            if row.current:
                axes.axvline(row.threshold, color="black", linewidth=2.0)
            else:
                axes.axvline(row.threshold, color="tab:blue", linestyle=":")
            axes.annotate(
                row.label,
                (row.threshold, 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
            )
        axes.set_xlabel("image score")
        axes.set_ylabel("images")
        axes.set_title(title, fontsize=10)
        axes.legend(loc="upper right", fontsize=8)
        figure.tight_layout()
        out = io.BytesIO()
        figure.savefig(out, format="png")
    finally:
        plt.close(figure)
    return out.getvalue()
