"""A model's document, ``model.json``: its calibration (the threshold rules), reading, writing, and a new
operating point for the same weights. No torch here: commands that only read or rewrite a model's
document (``defectscan threshold``, ``models list``) stay light.

**Threshold rules** (:func:`calibrate`). From out-of-sample OK scores (every OK image scored out of fold
for PatchCore, a holdout otherwise): the operating point for ``target_frr`` (:mod:`pipeline.operating_point`:
a robust Gumbel tail, with the expected false-reject rate and its interval, and the escapes of labelled
defects at it); a threshold given by hand, with what it costs on those scores; or, for models without
a target, ``mean + 3 std`` of the held-out scores but at least their maximum, or, with labelled defects,
the threshold with the best F1.

**Document.** ``model.json`` keeps the out-of-sample scores (``calibration_scores``: OK, and labelled
defects), so :func:`recalibrated` moves the operating point without retraining: the result is a new
version of the same weights (``derived_from`` names the old one). It is written whole (a temporary file
renamed over it), with the model card (:mod:`pipeline.model_card`) beside it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.errors import InvalidArgumentError, ModelFormatError
from defectscan.pipeline.model_card import model_card
from defectscan.pipeline.operating_point import RULE, TAIL, operating_point, point_at

SCHEMA = "defectscan.model/1"


@dataclass(frozen=True)
class Calibration:
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


MODEL_JSON = "model.json"
MODEL_CARD = "MODEL_CARD.md"


def parse_doc(data: bytes, where: str) -> dict[str, Any]:
    """A ``model.json`` read and checked (its schema), wherever it was stored."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(where, f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        schema = doc.get("schema") if isinstance(doc, dict) else None
        raise ModelFormatError(where, f"schema {schema!r} is not {SCHEMA}")
    return doc


def doc_bytes(doc: dict[str, Any]) -> bytes:
    """``model.json`` as written (the one serialisation of a model's document)."""
    return (json.dumps(doc, indent=2, default=_json_default) + "\n").encode()


def write_doc(directory: Path, doc: dict[str, Any]) -> None:
    """Write ``model.json`` whole (a temporary file renamed over it) and the model card beside it."""
    (directory / MODEL_CARD).write_text(model_card(doc))
    temporary = directory / f".{MODEL_JSON}.{secrets.token_hex(4)}"
    temporary.write_bytes(doc_bytes(doc))
    temporary.replace(directory / MODEL_JSON)


def recalibrated(
    doc: dict[str, Any], target_frr: float | None = None, value: float | None = None
) -> dict[str, Any]:
    """A model's document with a new operating point, set from the out-of-sample scores it keeps, for
    ``target_frr`` or at the threshold ``value``: a new version of the same weights (``derived_from``
    names the old one), so a batch that pinned the old version keeps its verdicts."""
    if (target_frr is None) == (value is None):
        raise InvalidArgumentError("threshold", "give exactly one of --target-frr and --value")
    stored = doc.get("calibration_scores") or {}  # the target's range: operating_point checks it
    ok = stored.get("ok")
    if not ok:
        raise ModelFormatError(
            str(doc.get("version")),
            "keeps no out-of-sample OK scores (trained by an older release): retrain it",
        )
    cal = calibrate(ok, stored.get("defects") or [], target_frr, read_calibration(doc).folds, value)
    created = datetime.now(UTC).replace(microsecond=0)
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    return {
        **doc,
        "version": new_version_id(created, {"training": doc.get("training", {})}, config),
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "derived_from": doc.get("version"),
        "calibration": asdict(cal),
    }


def read_calibration(doc: dict[str, Any]) -> Calibration:
    saved = dict(doc["calibration"])
    if saved.get("frr_interval") is not None:
        saved["frr_interval"] = tuple(saved["frr_interval"])
    return Calibration(**saved)


def calibrate(
    ok_scores: Sequence[float],
    defect_scores: Sequence[float] = (),
    target_frr: float | None = None,
    folds: int = 0,
    value: float | None = None,
) -> Calibration:
    """The threshold rules from the module docstring: the operating point for ``target_frr`` from
    out-of-sample OK scores, a threshold ``value`` given by hand (with what it costs on those scores),
    or (both None) the holdout rules."""
    ok = np.asarray(ok_scores, dtype=np.float64)
    if ok.size == 0:
        raise InvalidArgumentError("holdout", "calibration needs held-out OK images (holdout > 0)")
    mean, std = float(ok.mean()), float(ok.std(ddof=1)) if ok.size > 1 else 0.0
    std = max(std, 1e-6 * max(abs(mean), 1.0))
    if target_frr is not None or value is not None:
        if value is not None:
            point = point_at(ok, value, defect_scores)
            rule = f"set by hand (--value); expected false-reject rate from the {TAIL}"
        else:
            point = operating_point(ok, target_frr or 0.0, defect_scores)
            rule = f"{RULE} ({f'{folds} folds' if folds else 'holdout'})"
        return Calibration(
            point.threshold,
            rule,
            mean,
            std,
            point.ok_count,
            point.defect_count,
            target_frr=point.target_frr,
            expected_frr=point.expected_frr,
            frr_interval=point.frr_interval,
            ok_rejected=point.ok_rejected,
            escapes=point.escapes if point.defect_count else None,
            folds=folds,
        )
    if len(defect_scores) == 0:
        threshold = max(mean + 3 * std, float(ok.max()))
        return Calibration(threshold, "ok-holdout: max(mean + 3 std, max)", mean, std, int(ok.size))
    bad = np.asarray(defect_scores, dtype=np.float64)
    threshold, f1 = f1_optimal_threshold(ok, bad)
    return Calibration(
        threshold,
        "f1-optimal over held-out OK and labelled defects",
        mean,
        std,
        int(ok.size),
        int(bad.size),
        f1,
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


def rounded(scores: Sequence[float]) -> list[float]:
    """Scores as ``model.json`` keeps them (7 significant digits: far below any threshold's meaning)."""
    return [float(f"{s:.7g}") for s in scores]


def new_version_id(created: datetime, meta: dict[str, Any], recipe: object) -> str:
    """``<UTC time to the second>-<6 hex>``: sorts by time; two trainings in the same second differ."""
    training = meta.get("training", {})
    data_hash = training.get("sha256", "") if isinstance(training, dict) else ""
    salt = secrets.token_hex(8)  # two trainings in the same second on the same data still differ
    digest = hashlib.sha256(f"{data_hash}{recipe}{created.isoformat()}{salt}".encode()).hexdigest()[:6]
    return f"{created.strftime('%Y%m%dT%H%M%SZ')}-{digest}"


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
