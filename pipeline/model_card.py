"""The model card: what a model is and what its verdicts cost, in Markdown, from its ``model.json``.

Written beside ``model.json`` (``MODEL_CARD.md``) whenever the document is written, so the card always
describes the operating point the verdicts use: the threshold and its rule, the target and expected
false-reject rate with its interval, the out-of-sample OK score statistics, and, where labelled defects
were given, the escapes at the threshold.
"""

from __future__ import annotations

from typing import Any

from defectscan.pipeline.model_doc import ModelDoc


def model_card(doc: ModelDoc) -> str:
    config, training, cal = doc.config, doc.training, doc.calibration
    lines = [
        f"# Model {doc.version}",
        "",
        f"* Method: {config.method} on {config.backbone} (layers {', '.join(config.layers)}), image size "
        f"{config.image_size}{_intensity(config.intensity)}, TTA {', '.join(config.tta_views)} "
        f"({config.tta_reduce})",
        f"* Created: {doc.created_at}; colour mode {doc.colour_mode}",
        f"* Training: {training.get('ok_count', '?')} OK images, {_scored(training)}",
    ]
    if doc.derived_from:
        lines.append(f"* Derived from {doc.derived_from}: the same weights, a new operating point")
    scores = doc.calibration_scores
    if scores.reviewed_ok or scores.reviewed_defects:
        lines.append(
            f"* Reviewed in production and used for the threshold: {len(scores.reviewed_ok)} good instances, "
            f"{len(scores.reviewed_defects)} defective"
        )
    feedback = training.get("feedback")
    if isinstance(feedback, dict) and any(feedback.values()):
        lines.append(
            f"* Trained with reviewers' feedback: {feedback.get('ok', 0)} confirmed false rejects as OK "
            f"images, {feedback.get('defects', 0)} confirmed defects for calibration"
        )
    lines += _auto(training.get("auto"))
    lines += ["", "## Operating point", "", f"* Threshold: {_num(cal.threshold)} ({cal.rule})"]
    if cal.expected_frr is not None:
        low, high = cal.frr_interval or (None, None)
        lines.append(
            f"* False-reject rate: expected {_pct(cal.expected_frr)} (90 % interval {_pct(low)} to "
            f"{_pct(high)})"
            + (f" for a target of {_pct(cal.target_frr)}" if cal.target_frr is not None else "")
        )
        lines.append(f"* Out-of-sample OK images above the threshold: {cal.ok_rejected} of {cal.ok_count}")
        if cal.generated_count and cal.generated_expected_frr is not None:
            lines.append(
                f"* Generated images (a new condition's look), out of fold: {cal.generated_rejected} of "
                f"{cal.generated_count} above the threshold, expected {_pct(cal.generated_expected_frr)}"
            )
        if cal.new_condition_count and cal.new_condition_expected_frr is not None:
            lines.append(
                f"* The new condition's own OK images (--style-from), never trained on: "
                f"{cal.new_condition_rejected} of {cal.new_condition_count} above the threshold, expected "
                f"{_pct(cal.new_condition_expected_frr)}"
            )
    else:
        lines.append(f"* Held-out OK images: {cal.ok_count} (mean {_num(cal.ok_mean)})")
    summary = training.get("ok_scores")
    if isinstance(summary, dict) and summary:
        stats = ", ".join(f"{k} {_num(v)}" for k, v in summary.items())
        lines.append(f"* Out-of-sample OK scores: {stats}")
    if cal.defect_count and cal.escapes is not None:
        rate = cal.escapes / cal.defect_count
        lines.append(
            f"* Labelled defects: {cal.escapes} of {cal.defect_count} escape at this threshold ({_pct(rate)})"
        )
    elif cal.defect_count:
        lines.append(f"* Labelled defects: {cal.defect_count} (threshold by F1: {_num(cal.f1)})")
    else:
        lines.append("* Labelled defects: none given, so the escape rate is not known")
    return "\n".join(lines) + "\n"


def _intensity(intensity: str) -> str:
    return "" if intensity == "as-is" else f", intensities {intensity} (each crop to one mean and spread)"


def _auto(search: object) -> list[str]:
    """The candidates ``train --auto`` measured on planted defects, as a table."""
    if not isinstance(search, dict):
        return []
    lines = [
        "",
        "## Configuration chosen on planted defects (--auto)",
        "",
        f"{search.get('criterion')}; {search.get('trained_on')} OK images trained each candidate, "
        f"{search.get('held_out')} held out were scored clean and with a planted defect each "
        f"({', '.join(f'{k} {v}' for k, v in dict(search.get('planted') or {}).items())}).",
        "",
        "| candidate | image AUROC | AUPRO | criterion | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cand in search.get("candidates") or []:
        mark = " (chosen)" if cand.get("name") == search.get("chosen") else ""
        if cand.get("skipped"):
            lines.append(f"| {cand.get('name')} | skipped: {cand['skipped']} | | | |")
            continue
        figures = " | ".join(_num(cand.get(k)) for k in ("image_auroc", "aupro", "criterion", "seconds"))
        lines.append(f"| {cand.get('name')}{mark} | {figures} |")
    return lines


def _scored(training: dict[str, Any]) -> str:
    if training.get("out_of_fold"):
        return f"each scored out of fold ({training['out_of_fold']} scores)"
    return f"{training.get('held_out', 0)} held out for calibration"


def _num(value: object) -> str:
    return f"{value:.5g}" if isinstance(value, int | float) else str(value)


def _pct(value: object) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, int | float) else "?"
