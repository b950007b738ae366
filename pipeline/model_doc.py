"""A model's document, ``model.json``, as pydantic models: :class:`ModelDoc` (config, preprocessing,
calibration with the out-of-sample scores it came from, training-set summary, created_at, version), and
the document operations that need no files: a new version id, and :func:`recalibrated`.

``model.json`` keeps the out-of-sample scores (``calibration_scores``), so :func:`recalibrated` moves
the operating point without retraining: the result is a new version of the same weights
(``derived_from`` names the old one), so a batch that pinned the old version keeps its verdicts. Fields
this release does not know are kept when a document is rewritten. Reading and writing the files is
:mod:`pipeline.saved_model`'s.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from defectscan.pipeline.calibration import Calibration, calibrate
from defectscan.pipeline.errors import InvalidArgumentError, ModelFormatError
from defectscan.pipeline.model_config import ModelConfig

SCHEMA: Literal["defectscan.model/1"] = "defectscan.model/1"


class CalibrationScores(BaseModel):
    """The out-of-sample scores a threshold was set from: OK images and labelled defects from training,
    instances reviewers confirmed in production (good, and defective), and generated images."""

    ok: list[float] = []
    defects: list[float] = []
    reviewed_ok: list[float] = []
    reviewed_defects: list[float] = []
    generated: list[float] = []  # images generated from OK images in a new condition's look, out of fold
    new_condition: list[float] = []  # the new condition's own OK images (--style-from), never trained on


class Preprocessing(BaseModel):
    """What scoring does to a crop before the network (for readers of the document; the config rules)."""

    resize: tuple[int, int]
    scale: float = 1 / 255
    mean: tuple[float, ...]
    std: tuple[float, ...]


class TtaRecord(BaseModel):
    views: tuple[str, ...]
    reduce: str


class ModelRecord(BaseModel):
    """What a training learnt about its data and kept with the model."""

    model_config = ConfigDict(extra="allow")  # a newer release's fields survive a rewrite

    training: dict[str, Any] = {}
    reference_size: tuple[int, int] | None = None
    colour_mode: Literal["gray", "rgb"] = "rgb"
    timings_s: dict[str, float] = {}
    calibration_scores: CalibrationScores = CalibrationScores()


class ModelDoc(ModelRecord):
    """``model.json``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())

    schema_: Literal["defectscan.model/1"] = Field(SCHEMA, alias="schema")
    version: str
    created_at: str
    derived_from: str | None = None
    config: ModelConfig
    preprocessing: Preprocessing
    tta: TtaRecord
    calibration: Calibration
    score: dict[str, str] = {
        "image": "max of the anomaly map",
        "normalized": "sigmoid((score - threshold) / ok_std)",
    }

    @classmethod
    def build(
        cls,
        config: ModelConfig,
        calibration: Calibration,
        record: ModelRecord,
        normalisation: tuple[Sequence[float], Sequence[float]],
        version: str | None = None,
    ) -> ModelDoc:
        """A new document (a new version id unless ``version`` is given), created now."""
        created = datetime.now(UTC).replace(microsecond=0)
        size = config.image_size
        return cls(
            **record.model_dump(),
            version=version or new_version_id(created, record.training.get("sha256", ""), config),
            created_at=_timestamp(created),
            config=config,
            preprocessing=Preprocessing(resize=(size, size), mean=normalisation[0], std=normalisation[1]),
            tta=TtaRecord(views=config.tta_views, reduce=config.tta_reduce),
            calibration=calibration,
        )

    def record(self) -> ModelRecord:
        """The training's part of the document."""
        own = set(ModelDoc.model_fields) - set(ModelRecord.model_fields)
        return ModelRecord.model_validate(self.model_dump(exclude=own))


def recalibrated(
    doc: ModelDoc,
    target_frr: float | None = None,
    value: float | None = None,
    reviewed: CalibrationScores | None = None,
) -> ModelDoc:
    """A model's document with a new operating point, set from the out-of-sample scores it keeps, for
    ``target_frr`` or at the threshold ``value``: a new version of the same weights. ``reviewed``
    (its ``reviewed_ok`` and ``reviewed_defects``) adds instances reviewers confirmed; they are kept in
    the new document and count in every later recalibration."""
    if reviewed is not None:
        kept = doc.calibration_scores
        scores = kept.model_copy(
            update={
                "reviewed_ok": [*kept.reviewed_ok, *rounded(reviewed.reviewed_ok)],
                "reviewed_defects": [*kept.reviewed_defects, *rounded(reviewed.reviewed_defects)],
            }
        )
        doc = doc.model_copy(update={"calibration_scores": scores})
    if (target_frr is None) == (value is None):
        raise InvalidArgumentError("threshold", "give exactly one of --target-frr and --value")
    stored = doc.calibration_scores  # the target's range: operating_point checks it
    if not stored.ok:
        raise ModelFormatError(
            doc.version, "keeps no out-of-sample OK scores (trained by an older release): retrain it"
        )
    ok, defects = [*stored.ok, *stored.reviewed_ok], [*stored.defects, *stored.reviewed_defects]
    cal = calibrate(
        ok, defects, target_frr, doc.calibration.folds, value, stored.generated, stored.new_condition
    )
    created = datetime.now(UTC).replace(microsecond=0)
    return doc.model_copy(
        update={
            "version": new_version_id(created, doc.training.get("sha256", ""), doc.config),
            "created_at": _timestamp(created),
            "derived_from": doc.version,
            "calibration": cal,
        }
    )


def rounded(scores: Sequence[float]) -> list[float]:
    """Scores as ``model.json`` keeps them (7 significant digits: far below any threshold's meaning)."""
    return [float(f"{s:.7g}") for s in scores]


def new_version_id(created: datetime, data_hash: object, recipe: ModelConfig) -> str:
    """``<UTC time to the second>-<6 hex>``: sorts by time; two trainings in the same second differ."""
    salt = secrets.token_hex(8)  # two trainings in the same second on the same data still differ
    text = f"{data_hash}{recipe.model_dump_json()}{created.isoformat()}{salt}"
    return f"{created.strftime('%Y%m%dT%H%M%SZ')}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def _timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
