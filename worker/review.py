"""Reviewers' decisions on a run's verdicts, and what they feed back.

A reviewer marks an instance ``correct``, ``false_reject`` (the model called a good part defective) or
``missed_defect`` (it passed a defective one), and may give the defect type it should have had. The
decisions come from the report's download (``review.json``) or from the command line, and are recorded
under the run as ``review/<UTC time>-<6 hex>.json``: a new object per submission, never rewritten, with
the reviewer and the time, so the history stays whole. A verdict is never edited. The decision in force
for an instance is its latest.

**Feedback** (a batch of a product with a registry): each confirmed false reject's aligned crop, cut
again from the batch's input with the instance's pose, goes to ``<registry>/<product>/feedback/ok/``,
where the next ``retrain`` takes it as an OK image; each confirmed defect (``correct`` on an anomalous
instance, or ``missed_defect``) goes to ``feedback/defects/`` with a weak mask, for calibration's
escape count: where the batch kept its maps (``--save-maps``), the instance's anomaly map above its
threshold, cut at the same pose; else its regions' boxes (the whole crop for a missed defect, whose
regions the model did not find). Crops that reach past their image's edge are left out, as in training.
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from defectscan.pipeline.errors import DefectscanError, InvalidArgumentError
from defectscan.pipeline.images import decode_image, encode_png
from defectscan.pipeline.outputs import is_verdict_key
from defectscan.pipeline.verdict import Instance, Verdict
from defectscan.worker.batch_spec import BATCH_JSON, ITEMS, TEMPLATE_KEY, BatchSpec
from defectscan.worker.item_keys import item_key
from defectscan.worker.results import SUMMARY
from defectscan.worker.storage import Storage, join_key, open_storage

log = logging.getLogger("defectscan.review")

REVIEW_SCHEMA: Literal["defectscan.review/1"] = "defectscan.review/1"
REVIEWS = "review"
FEEDBACK = "feedback"
DefectType = Literal["blurry_text", "structural", "color_scratch", "other"]
Call = Literal["correct", "false_reject", "missed_defect"]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="the input's key, as its verdict names it")
    instance: int | None = Field(None, description="the instance's index; None: every instance of the image")
    decision: Call
    type: DefectType | None = Field(None, description="the defect type the reviewer sees, if not the model's")


class Review(BaseModel):
    """One submission of decisions (``review.json`` as the report downloads it, and as recorded)."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: Literal["defectscan.review/1"] = Field(REVIEW_SCHEMA, alias="schema")
    batch_id: str | None = None
    reviewer: str | None = None
    exported_at: str | None = None
    recorded_at: str | None = None
    decisions: list[Decision]

    def to_json(self) -> bytes:
        return (self.model_dump_json(by_alias=True, indent=2) + "\n").encode()


def parse_decision(text: str) -> Decision:
    """``KEY[:INSTANCE]=DECISION[:TYPE]``, as ``defectscan review --set`` takes it (the last ``=``
    splits, and an instance is the digits after the last ``:`` of the key part)."""
    target, sep, call = text.rpartition("=")
    if not sep or not target:
        raise InvalidArgumentError("--set", f"{text!r}: expected KEY[:INSTANCE]=DECISION[:TYPE]")
    decision, _, kind = call.partition(":")
    key, colon, index = target.rpartition(":")
    instance = int(index) if colon and index.isdigit() else None
    raw = {"key": key if instance is not None else target, "instance": instance, "decision": decision}
    try:
        return Decision.model_validate({**raw, "type": kind or None})
    except ValidationError as exc:
        raise InvalidArgumentError("--set", f"{text!r}: {exc.errors()[0]['msg']}") from None


def _verdict_of(store: Storage, prefix: str, key: str) -> Verdict:
    try:
        return Verdict.model_validate_json(store.get(f"{prefix}{item_key(key)}.json"))
    except (DefectscanError, ValueError) as exc:
        raise InvalidArgumentError(key, f"no verdict of this input in the run ({exc})") from None


def run_prefix(store: Storage) -> str:
    """Where a run's verdicts lie: ``items/`` in a batch folder, the top of a local inspect output."""
    return f"{ITEMS}/" if store.exists(BATCH_JSON) else ""


def record(
    store: Storage, review: Review, reviewer: str | None = None
) -> tuple[str, dict[tuple[str, int], Verdict]]:
    """Check every decision against the run's verdicts, then write the submission as a new object under
    ``review/``; nothing is written when any decision names an input or instance the run does not
    have. Returns the object's key and the verdicts the decisions name."""
    if not review.decisions:
        raise InvalidArgumentError("review", "no decisions")
    prefix = run_prefix(store)
    verdicts: dict[str, Verdict] = {}
    named: dict[tuple[str, int], Verdict] = {}
    problems = []
    for d in review.decisions:
        try:
            verdict = verdicts.get(d.key) or _verdict_of(store, prefix, d.key)
        except InvalidArgumentError as exc:
            problems.append(str(exc))
            continue
        verdicts[d.key] = verdict
        indices = [i.index for i in verdict.instances]
        wanted = indices if d.instance is None else [d.instance]
        if d.instance is not None and d.instance not in indices:
            problems.append(f"{d.key}: no instance {d.instance} (it has {len(indices)})")
        named.update({(d.key, i): verdict for i in wanted if i in indices})
    if problems:
        raise InvalidArgumentError(
            "review",
            "; ".join(problems[:10]) + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""),
        )
    now = datetime.now(UTC).replace(microsecond=0)
    stamped = review.model_copy(
        update={
            "recorded_at": now.isoformat().replace("+00:00", "Z"),
            "reviewer": reviewer or review.reviewer,
        }
    )
    name = f"{REVIEWS}/{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}.json"
    while store.exists(name):  # append-only: never over another submission
        name = f"{REVIEWS}/{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}.json"
    store.put(name, stamped.to_json(), "application/json")
    return name, named


def reviews(store: Storage) -> list[Review]:
    """Every recorded submission of a run, oldest first."""
    found = []
    for obj in store.objects(REVIEWS):
        try:
            found.append(Review.model_validate_json(store.get(obj.key)))
        except ValueError as exc:
            log.warning("%s: not a review (%s)", obj.key, exc)
    return sorted(found, key=lambda r: r.recorded_at or "")


def in_force(submissions: Sequence[Review], verdicts: dict[str, Verdict]) -> dict[tuple[str, int], Decision]:
    """The decision in force per (key, instance): the latest one that names it."""
    out: dict[tuple[str, int], Decision] = {}
    for review in submissions:
        for d in review.decisions:
            verdict = verdicts.get(d.key)
            indices = [i.index for i in verdict.instances] if verdict else []
            for i in indices if d.instance is None else [d.instance]:
                out[(d.key, i)] = d
    return out


class Fed(BaseModel):
    ok: list[str] = []
    defects: list[str] = []
    skipped: list[str] = []


def feed_back(
    store: Storage,
    decisions: dict[tuple[str, int], Decision],
    verdicts: dict[tuple[str, int], Verdict],
    registry: str,
) -> Fed:
    """Copy the aligned crops the decisions confirm into ``<registry>/<product>/feedback/`` (module
    docstring). Needs a batch folder (its inputs, template and product)."""
    if not store.exists(BATCH_JSON):
        raise InvalidArgumentError(
            "feedback", "needs a batch folder (its batch.json names the inputs and product)"
        )
    spec = BatchSpec.model_validate_json(store.get(BATCH_JSON))
    if not spec.product:
        raise InvalidArgumentError("feedback", f"batch {spec.batch_id} names no product (enqueue --product)")
    inputs = open_storage(spec.inputs)
    template = decode_image(store.get(TEMPLATE_KEY), TEMPLATE_KEY) if spec.template else None
    target = open_storage(f"{registry.rstrip('/')}/{join_key(spec.product, FEEDBACK)}")
    fed = Fed()
    images: dict[str, np.ndarray] = {}
    for (key, index), d in sorted(decisions.items()):
        verdict = verdicts[(key, index)]
        instance = next(i for i in verdict.instances if i.index == index)
        confirmed_defect = d.decision == "missed_defect" or (
            d.decision == "correct" and instance.is_anomalous
        )
        if d.decision != "false_reject" and not confirmed_defect:
            continue  # a correct ok: nothing new to learn
        if d.decision == "false_reject" and not instance.is_anomalous:
            fed.skipped.append(f"{key}:{index}: marked a false reject, but it was not rejected")
            continue
        try:
            image = images.get(key)
            if image is None:
                image = images[key] = decode_image(inputs.get(key), key, spec.max_pixels)
            crop = _crop(image, instance, template)
        except (DefectscanError, ValueError) as exc:
            fed.skipped.append(f"{key}:{index}: {exc}")
            continue
        if crop is None:
            fed.skipped.append(f"{key}:{index}: reaches past the image's edge")
            continue
        name = f"{spec.batch_id}/{_flat(key)}.{index}.png"
        if d.decision == "false_reject":
            target.put(f"ok/{name}", encode_png(crop), "image/png")
            fed.ok.append(f"ok/{name}")
        else:
            target.put(f"defects/{name}", encode_png(crop), "image/png")
            amap = _map_crop(store.child(ITEMS), verdict, instance, template)
            mask = encode_png(_weak_mask(crop, instance, d, amap))
            target.put(f"defects/{name[:-4]}_mask.png", mask, "image/png")
            fed.defects.append(f"defects/{name}")
    return fed


def _crop(image: np.ndarray, instance: Instance, template: np.ndarray | None) -> np.ndarray | None:
    """The instance's aligned crop, cut again as segmentation cut it (None where it leaves the image)."""
    from defectscan.pipeline.geometry import crop_at_pose, inside_at_pose, pose_of_box  # OpenCV

    if template is None:
        return image
    pose = pose_of_box(instance.box, instance.angle, instance.scale)
    height, width = template.shape[:2]
    if not inside_at_pose(image.shape, pose, width, height).all():
        return None
    return np.asarray(crop_at_pose(image, pose, width, height), np.uint8)


def _map_crop(
    items: Storage, verdict: Verdict, instance: Instance, template: np.ndarray | None
) -> np.ndarray | None:
    """The instance's anomaly map at its crop's pose, where the batch saved the image's map."""
    key = verdict.outputs.get("map")
    if key is None:
        return None
    try:
        amap = np.load(io.BytesIO(items.get(key)), allow_pickle=False)
    except (DefectscanError, ValueError) as exc:
        log.warning("%s: map unreadable (%s); boxes make the mask", key, exc)
        return None
    if template is None:
        return np.asarray(amap, np.float32)
    from defectscan.pipeline.geometry import crop_at_pose, pose_of_box  # OpenCV: feedback only

    pose = pose_of_box(instance.box, instance.angle, instance.scale)
    height, width = template.shape[:2]
    return np.asarray(crop_at_pose(np.asarray(amap, np.float32), pose, width, height), np.float32)


def _weak_mask(
    crop: np.ndarray, instance: Instance, decision: Decision, amap: np.ndarray | None
) -> np.ndarray:
    """The instance's map above its threshold; without a map, its regions' boxes; the whole crop
    where the model found nothing (a missed defect)."""
    mask = np.zeros(crop.shape[:2], np.uint8)
    if amap is not None and amap.shape == mask.shape and (amap > instance.threshold).any():
        mask[amap > instance.threshold] = 255
        return np.dstack([mask] * 3)
    if decision.decision == "missed_defect" or not instance.defects:
        mask[:] = 255
    for defect in instance.defects:
        x, y, w, h = defect.box
        mask[y : y + h, x : x + w] = 255
    return np.dstack([mask] * 3)


def _flat(key: str) -> str:
    """A key as one file name: its own name where it is short and plain, else a hash beside its stem."""
    flat = key.replace("/", "__")
    if len(flat.encode()) <= 120 and flat.isprintable() and "\\" not in flat:
        return flat
    return hashlib.sha256(key.encode(errors="surrogateescape")).hexdigest()[:32]


class ReviewedScores(BaseModel):
    """Instance scores of a reviewed run for calibration: good (confirmed false rejects, and passed
    instances nobody marked missed), defective (confirmed and missed defects)."""

    ok: list[float] = []
    defects: list[float] = []
    unreviewed_rejects: int = Field(0, description="rejected instances without a decision: left out")


def reviewed_scores(store: Storage, version: str | None = None) -> ReviewedScores:
    """The scores of a run's instances as its reviews settle them (only verdicts of model ``version``,
    when given: scores of another model are not on the same scale)."""
    prefix = run_prefix(store)
    submissions = reviews(store)
    keys = {d.key for r in submissions for d in r.decisions}
    verdicts: dict[str, Verdict] = {}
    for obj in store.objects(prefix.rstrip("/")):
        if is_verdict_key(obj.key) and obj.key[len(prefix) :] != SUMMARY:
            try:
                verdict = Verdict.model_validate_json(store.get(obj.key))
            except ValueError:
                continue
            if version is None or verdict.model.version == version:
                verdicts[verdict.image.key] = verdict
    if not keys & set(verdicts):
        raise InvalidArgumentError(store.location, "no reviewed verdicts of this model version here")
    decided = in_force(submissions, verdicts)
    out = ReviewedScores()
    for key, verdict in verdicts.items():
        for instance in verdict.instances:
            d = decided.get((key, instance.index))
            if d is None:
                if instance.is_anomalous:
                    out.unreviewed_rejects += 1
                else:
                    out.ok.append(instance.score)
            elif d.decision == "false_reject" or (d.decision == "correct" and not instance.is_anomalous):
                out.ok.append(instance.score)
            else:
                out.defects.append(instance.score)
    return out
