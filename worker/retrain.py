"""Retraining on its own queue: train a new version from OK images in storage, register it, maybe promote.

``defectscan retrain PRODUCT --ok s3://.../ok/`` takes the product's lock, records the request and sends
``defectscan.retrain`` to the ``retrain`` queue, which only workers started with ``--queues retrain``
consume. The task:

1. reads every image under ``ok`` (and ``aux``) from storage; with a template, cuts the aligned crops of
   every instance (as inspection will), else trains on whole images;
2. trains and calibrates (:meth:`pipeline.model.AnomalyModel.fit`; with ``auto``, on the configuration
   that best separates defects planted on held-out OK crops: :mod:`pipeline.auto_config`), and with
   ``val`` (an MVTec-layout
   prefix) evaluates the new model *and* the current ``LATEST`` on the same validation images;
3. publishes the version with ``metrics.json`` and ``MODEL_CARD.md`` (:mod:`worker.registry`);
4. promotes it by the rule of ``promote``: ``always``; ``never``; ``auto`` (the default) promotes when
   there is no ``LATEST`` yet, or when validation shows it is not worse: image AUROC and, where the
   validation set has masks, pixel AUROC each at least the current version's minus ``GATE_TOLERANCE``
   (0.005, the noise of a few hundred images). Without validation data ``auto`` does not replace an
   existing ``LATEST``: there is no evidence to.

**One retrain per product at a time**: a Redis lock (``defectscan:retrain-lock:<product>``, redis-py's
token lock, expiring after ``LOCK_TTL_S``) is taken when the request is made and released by the task
when it ends, however it ends. A second request while it is held is refused, naming the running one.

A retrain runs for at most ``RETRAIN_TIME_LIMIT_S`` (2 h) and is acknowledged when a worker takes it
(not late, as inference chunks are): it outlasts the broker's visibility timeout, and redelivering an
hour of training is worse than asking again. If its worker dies, the request stays ``running`` until the
lock expires (10 minutes after the time limit); then a new request goes through.

**Progress and result** are in a Redis hash per request (``state`` queued, running, done or failed;
``stage``; ``version``, ``promoted`` and the reason; ``error`` and ``message`` on failure), read by
``defectscan status <request id>``. A failed retrain never touches ``LATEST``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import redis
from pydantic import BaseModel

from defectscan.pipeline.errors import DefectscanError, InvalidArgumentError
from defectscan.pipeline.images import decode_image
from defectscan.pipeline.model_config import DEFAULT_BUDGET_MIN
from defectscan.pipeline.saved_model import MODEL_CARD
from defectscan.worker.app import app
from defectscan.worker.batches import TTL_S, connect
from defectscan.worker.datasets import mvtec_test_items, read_images
from defectscan.worker.lookout_import import import_manifests
from defectscan.worker.model_cache import configured_runtime
from defectscan.worker.registry import Registry
from defectscan.worker.review import FEEDBACK
from defectscan.worker.storage import LocalStorage, Storage, open_storage, read_location

log = logging.getLogger("defectscan.retrain")
RETRAIN_TIME_LIMIT_S = 2 * 3600
LOCK_TTL_S = RETRAIN_TIME_LIMIT_S + 600  # the lock outlives the longest retrain
GATE_TOLERANCE = 0.005


class TrainingDataError(DefectscanError):
    """The training images are missing or none of them can be used."""

    code = "no_training_data"


class RetrainBusyError(DefectscanError):
    """A retrain of the same product is already running."""

    code = "retrain_running"


class RetrainRequest(BaseModel):
    model_config = {"protected_namespaces": ()}

    request_id: str
    product: str
    registry: str
    ok: str | None = None
    manifest: str | None = None  # a Lookout manifest instead of --ok (worker.lookout_import)
    template: str | None = None
    aux: str | None = None
    aux_weight: float = 0.1
    style_from: str | None = None  # a new condition's OK images: restyled OK images join aux
    val: str | None = None
    promote: Literal["auto", "never", "always"] = "auto"
    method: str = "patchcore"
    image_size: int = 256
    auto: bool = False  # choose method, size and layers on planted defects (pipeline.auto_config)
    budget_min: float = DEFAULT_BUDGET_MIN
    requested_at: str = ""


class RetrainBook:
    """The request's state and the product's lock, in Redis."""

    def __init__(self, product: str, request_id: str, client: Any = None) -> None:
        self.product, self.request_id = product, request_id
        self.client = client if client is not None else connect()
        self.lock = self.client.lock(f"defectscan:retrain-lock:{product}", timeout=LOCK_TTL_S)

    @staticmethod
    def state_key(request_id: str) -> str:
        return f"defectscan:retrain:{request_id}"

    def acquire(self) -> None:
        """Take the product's lock for this request, or say which request holds it."""
        if not self.lock.acquire(blocking=False, token=self.request_id):
            holder = self.client.get(self.lock.name)
            running = holder.decode() if holder else "another request"
            raise RetrainBusyError(self.product, f"a retrain is already running: {running}")

    def release(self) -> None:
        self.lock.local.token = self.request_id.encode()
        try:
            self.lock.release()
        except redis.exceptions.LockError:
            log.warning(
                "retrain %s: the lock of %s had expired or changed hands", self.request_id, self.product
            )

    def update(self, **fields: object) -> None:
        key = self.state_key(self.request_id)
        values = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in fields.items()}
        pipe = self.client.pipeline()
        pipe.hset(key, mapping={**values, "updated_at": _now()})
        pipe.expire(key, TTL_S)
        pipe.execute()

    @classmethod
    def read(cls, request_id: str, client: Any = None) -> dict[str, str]:
        client = client if client is not None else connect()
        raw = client.hgetall(cls.state_key(request_id))
        return {k.decode(): v.decode() for k, v in raw.items()}


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def read_training_set(req: RetrainRequest) -> tuple[list[Any], list[str], list[str], list[Any]]:
    """The OK images of a request with their keys and the skipped ones' reasons, and its labelled
    defects: ``--ok`` as it is, or a Lookout manifest's normal images (its anomalous ones are the
    defects; lines it could not use count as skipped)."""
    if req.manifest is None:
        if req.ok is None:
            raise InvalidArgumentError("--ok", "give --ok or --manifest")
        return (*read_images(req.ok), [])
    with tempfile.TemporaryDirectory(prefix="defectscan-manifest-") as staged:
        report = import_manifests([(req.manifest, "train")], LocalStorage(staged))
        images, names, skipped = read_images(str(Path(staged, "train", "good")))
        defects = read_images(str(Path(staged, "test")))[0]
    skipped += [f"{s.manifest}:{s.line}: {s.reason}" for s in report.skipped]
    return images, names, skipped, defects


def read_feedback(product_root: str) -> tuple[list[tuple[str, Any]], list[Any]]:
    """Reviewers' feedback of a product (:mod:`worker.review`): the confirmed false rejects' crops with
    their keys, and the confirmed defects' crops (their weak masks left aside)."""
    ok, keys, _ = read_images(f"{product_root}/{FEEDBACK}/ok")
    defects, names, _ = read_images(f"{product_root}/{FEEDBACK}/defects")
    crops = [d for d, name in zip(defects, names, strict=True) if not name.endswith("_mask.png")]
    return list(zip(keys, ok, strict=True)), crops


def download(store: Storage, dest: Path) -> Path:
    """Every object under ``store`` into the folder ``dest`` (keys are checked, so they stay inside)."""
    for obj in store.objects():
        target = dest.joinpath(*obj.key.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.get(obj.key))
    return dest


def retrain_card(
    req: RetrainRequest, version: str, metrics: dict[str, Any], promoted: bool, reason: str
) -> str:
    training = metrics.get("training", {})
    validation = metrics.get("validation") or {}
    lines = [
        f"# {req.product} {version}",
        "",
        f"* Method: {req.method}, image size {req.image_size}, trained {metrics.get('trained_at', '')}",
        f"* Data: {training.get('images', 0)} OK images from "
        f"{f'the Lookout manifest `{req.manifest}`' if req.manifest else f'`{req.ok}`'} "
        f"({training.get('skipped', 0)} skipped), "
        f"{training.get('crops', 0)} {'aligned crops' if req.template else 'whole images'}"
        + (f"; auxiliary images from `{req.aux}` at weight {req.aux_weight}" if req.aux else ""),
        f"* Threshold: {metrics.get('threshold')} ({metrics.get('threshold_rule')})",
        f"* Validation: `{req.val}`" if req.val else "* Validation: none",
    ]
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_at_threshold"):
        if validation.get(key) is not None:
            lines.append(f"  * {key}: {validation[key]:.4f}")
    lines += [f"* Promoted: {'yes' if promoted else 'no'} ({reason})", f"* Request: {req.request_id}", ""]
    return "\n".join(lines)


def gate(
    mode: str, new: dict[str, Any] | None, current: dict[str, Any] | None, has_latest: bool
) -> tuple[bool, str]:
    """Whether to promote, and why (the rule in the module docstring)."""
    if mode == "always":
        return True, "promote=always"
    if mode == "never":
        return False, "promote=never"
    if not has_latest:
        return True, "first version of the product"
    if new is None or current is None:
        return False, "auto: no validation data to compare with the current version"
    for key in ("image_auroc", "pixel_auroc"):
        ours, theirs = new.get(key), current.get(key)
        if ours is None or theirs is None:
            continue
        if ours < theirs - GATE_TOLERANCE:
            return False, f"auto: {key} {ours:.4f} is below the current version's {theirs:.4f}"
    return True, "auto: validation not worse than the current version"


def restyled(req: RetrainRequest, crops: list[Any], segmenter: Any) -> tuple[list[Any], list[Any]]:
    """With ``--style-from``: each OK crop once in the new condition's style (its images cut with the
    template, as the OK images are), for training as auxiliary images, and the new condition's images
    the style was learned from (as cut); else neither."""
    if not req.style_from:
        return [], []
    from defectscan.pipeline.augment import generate
    from defectscan.worker.augmentation import read_set, style_for

    targets, names = read_set(req.style_from, "--style-from")
    if segmenter is not None:
        targets = [
            c for image, key in zip(targets, names, strict=True) for c in segmenter.whole_crops(image, key)
        ]
        if not targets:
            raise TrainingDataError(
                req.style_from, "the template was found in none of the --style-from images"
            )
    style = style_for(crops, targets)
    sources = [(f"{i}.png", crop) for i, crop in enumerate(crops)]
    return [made.image for made in generate(sources, len(crops), 0, style)], targets


def _new_condition_check(model: Any) -> dict[str, Any] | None:
    """The ``--style-from`` images (never trained on), as training scored them for the threshold: how
    many the new model would reject."""
    scores = model.record.calibration_scores.new_condition
    if not scores:
        return None
    above = sum(s > model.calibration.threshold for s in scores)
    return {"images": len(scores), "above_threshold": above, "max_score": round(max(scores), 4)}


def run_retrain(req: RetrainRequest, book: RetrainBook) -> dict[str, Any]:
    """Train, evaluate, publish and maybe promote (the steps in the module docstring)."""
    from defectscan.pipeline.auto_config import fit_auto
    from defectscan.pipeline.model import AnomalyModel, ModelConfig
    from defectscan.pipeline.segment import Segmenter
    from defectscan.worker.evaluation import run_evaluation

    book.update(state="running", stage="reading images")
    images, names, skipped, labelled = read_training_set(req)
    if not images:
        detail = f"{len(skipped)} unreadable: {skipped[0]}" if skipped else "no images under it"
        raise TrainingDataError(req.manifest or str(req.ok), f"no usable OK images ({detail})")
    aux, aux_names = read_images(req.aux)[:2] if req.aux else ([], [])
    crops: list[Any] = images
    groups: list[str] = []  # with a template: each crop's photograph (one calibration fold each)
    segmenter = None
    if req.template:
        segmenter = Segmenter(decode_image(read_location(req.template), req.template))
        book.update(stage="segmenting")
        cut = [
            (key, c)
            for image, key in zip(images, names, strict=True)
            for c in segmenter.whole_crops(image, key)
        ]
        crops, groups = [c for _, c in cut], [key for key, _ in cut]
        if not crops:
            raise TrainingDataError(
                req.manifest or str(req.ok), "the template was found in none of the OK images"
            )
    styled, new_condition = restyled(req, crops, segmenter)
    made_from = [-1] * len(aux)
    if req.aux and not req.template:  # made by `defectscan augment` from these OK images: say from which
        from defectscan.worker.augmentation import aux_sources

        made_from = aux_sources(req.aux, aux_names, names)
    made_from += list(range(len(styled)))  # restyled crop j is crop j in the new look
    aux = [*aux, *styled]
    feedback_ok, feedback_defects = read_feedback(f"{req.registry.rstrip('/')}/{req.product}")
    if feedback_ok:  # reviewers' confirmed false rejects: aligned crops, one photograph each
        crops = [*crops, *(img for _, img in feedback_ok)]
        groups = [*(groups or names), *(key.rsplit(".", 2)[0] for key, _ in feedback_ok)]  # photograph
        names = [*names, *(f"{FEEDBACK}/ok/{key}" for key, _ in feedback_ok)]
    book.update(stage="training")
    start = time.perf_counter()
    config = ModelConfig(method=req.method, image_size=req.image_size)

    def fitted(chosen: ModelConfig) -> AnomalyModel:
        return AnomalyModel.fit(
            crops,
            chosen,
            aux=aux,
            aux_weight=req.aux_weight,
            aux_sources=made_from,
            names=names,
            groups=groups,
            val_defects=[*feedback_defects, *labelled],
            new_condition=new_condition,
            runtime=networks_in,
        )

    networks_in = configured_runtime()
    if req.auto:
        book.update(stage="choosing a configuration")
        model = fit_auto(
            crops, config, fitted, groups or (), req.budget_min, log=log.info, runtime=networks_in
        )
    else:
        model = fitted(config)
    model.record.training["feedback"] = {"ok": len(feedback_ok), "defects": len(feedback_defects)}
    registry = Registry(req.registry)
    latest = registry.latest(req.product)
    metrics: dict[str, Any] = {
        "training": {
            "images": len(images),
            "skipped": len(skipped),
            "crops": len(crops),
            "aux": len(aux),
            "restyled_aux": len(styled),
            "feedback": model.record.training["feedback"],
            "labelled_defects": len(labelled),
        },
        "fit_s": round(time.perf_counter() - start, 2),
        "threshold": model.calibration.threshold,
        "threshold_rule": model.calibration.rule,
        "auto": model.record.training.get("auto"),
        "new_condition_check": _new_condition_check(model),
        "trained_at": _now(),
        "validation": None,
    }
    current_metrics = None
    with tempfile.TemporaryDirectory(prefix="defectscan-retrain-") as tmp:
        if req.val:
            book.update(stage="validating")
            items = mvtec_test_items(download(open_storage(req.val), Path(tmp) / "val"))
            if not items:
                raise InvalidArgumentError(req.val, "no test images in MVTec layout (test/<type>/...)")
            metrics["validation"] = _headline(run_evaluation(model, items))
            if latest is not None:
                from defectscan.worker.model_cache import ModelCache

                current = ModelCache(1, Path(tmp) / "cache").get(
                    registry.model_location(req.product, latest), latest
                )
                current_metrics = _headline(run_evaluation(current, items))
                metrics["validation_of_latest"] = {"version": latest, **current_metrics}
        promoted, reason = gate(req.promote, metrics["validation"], current_metrics, latest is not None)
        book.update(stage="publishing")
        model_dir = model.save(Path(tmp) / "model")
        version = str(model.version)
        card = retrain_card(req, version, metrics, promoted, reason)
        card += "\n" + (model_dir / MODEL_CARD).read_text()  # the model's own: its operating point
        registry.publish(req.product, model_dir, {**metrics, "promoted": promoted, "reason": reason}, card)
    if promoted:
        registry.promote(req.product, version)
    return {"version": version, "promoted": promoted, "reason": reason, "previous": latest}


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("images", "image_auroc", "pixel_auroc", "aupro", "f1_at_threshold")
    return {k: result.get(k) for k in keys}


@app.task(
    name="defectscan.retrain",
    ignore_result=True,
    acks_late=False,  # acknowledged on receipt: a retrain outlasts the broker's visibility timeout
    soft_time_limit=RETRAIN_TIME_LIMIT_S - 300,
    time_limit=RETRAIN_TIME_LIMIT_S,
)
def retrain(request: dict[str, Any]) -> None:
    req = RetrainRequest.model_validate(request)
    book = RetrainBook(req.product, req.request_id)
    try:
        outcome = run_retrain(req, book)
    except DefectscanError as exc:
        book.update(state="failed", stage="", error=exc.code, message=str(exc))
        log.warning("retrain %s of %s failed: %s", req.request_id, req.product, exc)
    except Exception as exc:
        book.update(state="failed", stage="", error="internal", message=f"{type(exc).__name__}: {exc}")
        raise
    else:
        book.update(state="done", stage="", **{k: v for k, v in outcome.items() if v is not None})
        log.info("retrain %s of %s: %s", req.request_id, req.product, outcome)
    finally:
        book.release()
