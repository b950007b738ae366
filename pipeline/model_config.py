"""What builds and runs a model: :class:`ModelConfig` and the names it is checked against (methods,
backbone layers, TTA views, fusions). No torch here, so commands that only parse options or read a
model's document start fast; the modules that run networks import these names from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from defectscan.pipeline.errors import InvalidArgumentError

METHODS = ("patchcore", "padim", "stfpm", "variation", "patchcore+variation")
AUGMENTS = ("hflip", "vflip", "rot180", "colorjitter")
LITE2 = "tf_efficientnet_lite2"
DEFAULT_LAYERS: tuple[str, ...] = ("blocks.2", "blocks.4")
PADIM_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
STFPM_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
VARIATION_LAYERS = ("blocks.1",)
FUSIONS = ("mean", "max", "lead")
GEOMETRIC = ("identity", "hflip", "vflip", "rot180")
PHOTOMETRIC = {"bright": 1.1, "dark": 0.9}
VIEWS = (*GEOMETRIC, *PHOTOMETRIC)
# what the network sees of a crop's intensities (pipeline.preprocess.standardised): as photographed, or
# each crop stretched to one mean and spread, so exposure and gain between crops are not seen
INTENSITIES = ("as-is", "standardised")
DEFAULT_VIEWS = ("identity", "hflip", "vflip")
# where a model's networks run (pipeline.runtime): auto is OpenVINO on a CPU, torch on CUDA
RUNTIMES = ("auto", "torch", "openvino")
DEFAULT_BUDGET_MIN = 60.0  # train --auto's time budget (pipeline.auto_config), a nightly window on a CPU


def default_layers(method: str) -> tuple[str, ...]:
    return {
        "patchcore": DEFAULT_LAYERS,
        "padim": PADIM_LAYERS,
        "stfpm": STFPM_LAYERS,
        "variation": VARIATION_LAYERS,
    }[method]


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """Validate view names; the identity always comes first."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown TTA views {unknown}; known: {', '.join(VIEWS)}")
    rest = [v for v in dict.fromkeys(views) if v != "identity"]
    return ("identity", *rest)


def tta_defaults(method: str) -> tuple[str, ...]:
    """The variation model compares aligned pixels and takes no flipped view; the others take flips."""
    return ("identity",) if method == "variation" else DEFAULT_VIEWS


class ModelConfig(BaseModel):
    """Everything that builds and runs a model; stored in ``model.json`` (lists in JSON, tuples here).
    Empty ``layers`` and ``tta_views`` take the method's defaults; :meth:`changed` makes a checked copy."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    method: str = "patchcore"
    backbone: str = LITE2
    backbone_weights: str | None = None
    layers: tuple[str, ...] = ()
    image_size: int = 256
    intensity: str = "as-is"
    coreset_ratio: float = 0.01
    num_neighbors: int = 9
    tta_views: tuple[str, ...] = ()  # empty: the method's default (see tta_defaults)
    tta_reduce: str = "mean"
    batch_size: int = 8
    holdout: float = 0.2
    tta_in_training: bool = True
    epochs: int = 20
    seed: int = 0
    # the variation model (pipeline.variation)
    tolerance_abs: float = 0.06
    tolerance_rel: float = 3.0
    search_px: int = 2
    map_sigma: float = 0.0
    feature_floor: float = 0.05
    feature_scale: float = 0.25
    # fusion (pipeline.fusion): how the members' normalised maps combine
    fusion: str = "lead"
    # grading (pipeline.grade): severity from which a defect is major, and critical
    levels: tuple[float, float, float] = (0.0, 40.0, 70.0)
    fusion_margin: float = 3.0
    # the operating point (pipeline.operating_point): PatchCore's out-of-fold calibration
    target_frr: float = 0.01
    folds: int = 5

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        """The method is checked first: the default layers and views follow from it."""
        if not isinstance(data, dict):
            return data
        method = data.get("method", "patchcore")
        if method not in METHODS:
            raise InvalidArgumentError("--method", f"{method!r} is not one of {', '.join(METHODS)}")
        filled = dict(data)
        if not filled.get("layers"):
            filled["layers"] = default_layers(method.split("+")[0])
        if not filled.get("tta_views"):
            filled["tta_views"] = tta_defaults(method)
        return filled

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if not 32 <= self.image_size <= 1024 or self.image_size % 32:
            raise InvalidArgumentError("--image-size", "must be a multiple of 32 from 32 to 1024")
        if self.intensity not in INTENSITIES:
            raise InvalidArgumentError("--intensity", f"must be one of {', '.join(INTENSITIES)}")
        if not 0 < self.coreset_ratio <= 1:
            raise InvalidArgumentError("coreset_ratio", "must be in (0, 1]")
        if not 0 <= self.holdout < 1:
            raise InvalidArgumentError("holdout", "must be in [0, 1)")
        if self.method == "variation" and set(self.tta_views) & set(GEOMETRIC[1:]):
            raise InvalidArgumentError("--tta", "variation compares aligned pixels: no flipped views")
        if not 0 < self.tolerance_abs <= 1 or self.tolerance_rel < 0 or not 0 <= self.search_px <= 8:
            raise InvalidArgumentError("tolerance", "needs abs in (0, 1], rel >= 0, search_px 0..8")
        if self.fusion not in FUSIONS:
            raise InvalidArgumentError("fusion", f"must be one of {', '.join(FUSIONS)}")
        if self.tta_reduce not in ("mean", "max"):
            raise InvalidArgumentError("tta_reduce", "must be mean or max")
        if not 0 < self.target_frr < 0.5:
            raise InvalidArgumentError("--target-frr", "must be in (0, 0.5)")
        if self.folds == 1 or self.folds < 0:
            raise InvalidArgumentError("--folds", "must be 0 (a holdout) or at least 2")
        return self

    @field_validator("tta_views", mode="after")
    @classmethod
    def _views(cls, views: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return check_views(views)
        except ValueError as exc:
            raise InvalidArgumentError("--tta", str(exc)) from None

    def changed(self, **updates: Any) -> ModelConfig:
        """A copy with ``updates``, checked as a new config is."""
        return ModelConfig.model_validate({**self.model_dump(), **updates})

    @property
    def out_of_fold(self) -> bool:
        """Whether calibration scores every OK image out of fold (PatchCore with ``folds`` >= 2)."""
        return self.method == "patchcore" and self.folds >= 2
