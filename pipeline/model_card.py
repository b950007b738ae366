"""The model card: what a model is and what its verdicts cost, in Markdown, from its ``model.json``.

Written beside ``model.json`` (``MODEL_CARD.md``) whenever the document is written, so the card always
describes the operating point the verdicts use: the threshold and its rule, the target and expected
false-reject rate with its interval, the out-of-sample OK score statistics, and, where labelled defects
were given, the escapes at the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def model_card(doc: Mapping[str, Any]) -> str:
    config = _mapping(doc.get("config"))
    training = _mapping(doc.get("training"))
    cal = _mapping(doc.get("calibration"))
    lines = [
        f"# Model {doc.get('version', '?')}",
        "",
        f"* Method: {config.get('method')} on {config.get('backbone')} "
        f"(layers {', '.join(map(str, config.get('layers') or []))}), image size {config.get('image_size')}, "
        f"TTA {', '.join(map(str, config.get('tta_views') or []))} ({config.get('tta_reduce')})",
        f"* Created: {doc.get('created_at')}; colour mode {doc.get('colour_mode', 'rgb')}",
        f"* Training: {training.get('ok_count', '?')} OK images, {_scored(training)}",
    ]
    if doc.get("derived_from"):
        lines.append(f"* Derived from {doc['derived_from']}: the same weights, a new operating point")
    lines += ["", "## Operating point", "", f"* Threshold: {_num(cal.get('threshold'))} ({cal.get('rule')})"]
    if cal.get("expected_frr") is not None:
        interval = cal.get("frr_interval")
        low, high = interval if isinstance(interval, list | tuple) else (None, None)
        target = cal.get("target_frr")
        lines.append(
            f"* False-reject rate: expected {_pct(cal['expected_frr'])} (90 % interval {_pct(low)} to "
            f"{_pct(high)})" + (f" for a target of {_pct(target)}" if target is not None else "")
        )
        above = f"{cal.get('ok_rejected')} of {cal.get('ok_count')}"
        lines.append(f"* Out-of-sample OK images above the threshold: {above}")
    else:
        lines.append(f"* Held-out OK images: {cal.get('ok_count')} (mean {_num(cal.get('ok_mean'))})")
    summary = _mapping(training.get("ok_scores"))
    if summary:
        stats = ", ".join(f"{k} {_num(v)}" for k, v in summary.items())
        lines.append(f"* Out-of-sample OK scores: {stats}")
    defects = cal.get("defect_count") or 0
    escapes = cal.get("escapes")
    if defects and escapes is not None:
        rate = int(escapes) / int(defects)
        lines.append(f"* Labelled defects: {escapes} of {defects} escape at this threshold ({_pct(rate)})")
    elif defects:
        lines.append(f"* Labelled defects: {defects} (threshold by F1: {_num(cal.get('f1'))})")
    else:
        lines.append("* Labelled defects: none given, so the escape rate is not known")
    return "\n".join(lines) + "\n"


def _scored(training: Mapping[str, Any]) -> str:
    if training.get("out_of_fold"):
        return f"each scored out of fold ({training['out_of_fold']} scores)"
    return f"{training.get('held_out', 0)} held out for calibration"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _num(value: object) -> str:
    return f"{value:.5g}" if isinstance(value, int | float) else str(value)


def _pct(value: object) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, int | float) else "?"
