"""Anomaly models: train on OK images, calibrate, and score crops; the network, its recipe and its
threshold in one object.

An :class:`AnomalyModel` wraps one of anomalib's networks (see :mod:`pipeline.networks`). Its
:class:`ModelConfig` is the whole recipe: it is stored in ``model.json`` beside the weights, and loading
rebuilds the network from it. The reasons to change live apart, as anomalib keeps its torch model apart
from its Lightning module: input preprocessing (:mod:`pipeline.preprocess`, shared with the pair
comparer), scoring with TTA and fusion (:mod:`pipeline.scoring`), the threshold rules
(:mod:`pipeline.calibration`), the document (:mod:`pipeline.model_doc`) and the files
(:mod:`pipeline.saved_model`). This module trains.

**Training sees the views that scoring uses.** With ``tta_in_training`` (the default), the geometric
TTA views (``hflip``, ``vflip``, ``rot180``) are added to the OK images as training augmentation. A
product is rarely symmetric, so a flipped OK crop is not like any OK crop; without this, each flipped
view adds its own false anomaly and TTA averages noise in. With it, each view is compared with OK
images seen the same way, and the average over views lowers the noise (docs/benchmarks.md).

**Calibration.** PatchCore (the default method) scores *every* OK image out of fold: the OK set is split
into ``folds`` (5) folds (crops of one photograph share a fold: :func:`pipeline.training_set.fold_sets`),
and each fold's images are scored against the bank built, by the same coreset rule, from the other
folds' patches (the backbone runs once for all folds; see :func:`pipeline.networks.fit_patchcore`). The
final model is trained on all OK images. The threshold is the operating point for ``target_frr``
(default 0.01, the share of good parts the user accepts to re-check) from those out-of-fold scores;
labelled defect crops add the escape rate at it. Other methods keep ``holdout`` (20 %) of the OK images
out of training, score them, and set the same operating point from those scores (fewer, so its interval
is wider); ``folds=0`` asks for the holdout rules instead (:func:`pipeline.calibration.calibrate`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from defectscan.pipeline import fusion, networks, tta
from defectscan.pipeline.backbone import drop_trimmed, normalization
from defectscan.pipeline.calibration import UNCALIBRATED, Calibration, calibrate
from defectscan.pipeline.errors import InvalidArgumentError, ModelFormatError
from defectscan.pipeline.fusion import FusedNet
from defectscan.pipeline.images import is_gray
from defectscan.pipeline.model_config import AUGMENTS, ModelConfig, default_layers
from defectscan.pipeline.model_doc import CalibrationScores, ModelDoc, ModelRecord, rounded
from defectscan.pipeline.regions import RegionMap, region_map
from defectscan.pipeline.runtime import Runtime, extractors_swapped, resolve
from defectscan.pipeline.saved_model import read_model, write_model
from defectscan.pipeline.scoring import (
    CropScorer,
    ScoreResult,
    at_crop_size,
    crops_per_forward,
    device,
    scored,
)
from defectscan.pipeline.training_set import (
    augmented,
    dataset_hash,
    fold_sets,
    holdout_indices,
    reference_image,
    reference_size,
    score_summary,
)
from defectscan.pipeline.variation import VariationNet, fit_variation, normal_variants

__all__ = ["AnomalyModel", "ModelConfig", "ScoreResult", "build_net"]


class AnomalyModel:
    """A trained model: network, config, calibration, and what its training recorded."""

    def __init__(
        self,
        config: ModelConfig,
        net: nn.Module,
        calibration: Calibration,
        record: ModelRecord | None = None,
        version: str | None = None,
        runtime: Runtime | None = None,
    ):
        self.config = config
        self.net = net.to(device()).eval()
        self.calibration = calibration
        self.record = record or ModelRecord()
        self.version = version  # set when saved or loaded
        self.scorer = CropScorer(config, self.net, runtime=runtime)
        self.reference: NDArray[np.uint8] | None = None  # the mean OK crop, written as reference.png
        self.regions: RegionMap | None = None  # from the reference; regions.png (a user may edit it)

    # -- training ------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        ok: Sequence[NDArray[np.uint8]],
        config: ModelConfig | None = None,
        aux: Sequence[NDArray[np.uint8]] = (),
        aux_weight: float = 0.1,
        aux_sources: Sequence[int] = (),
        augment: Sequence[str] = (),
        val_defects: Sequence[NDArray[np.uint8]] = (),
        names: Sequence[str] = (),
        groups: Sequence[str] = (),
        new_condition: Sequence[NDArray[np.uint8]] = (),
        runtime: Runtime | None = None,
    ) -> AnomalyModel:
        """Train on OK crops (RGB uint8, any sizes), calibrate, and return the model.

        Usage (``ok_crops`` and ``test_crops``: lists of RGB arrays)::

            model = AnomalyModel.fit(ok_crops, ModelConfig(method="patchcore"))
            scores = [r.score for r in model.score(test_crops)]

        ``aux_sources``: for each auxiliary image generated from an OK image, that image's index (-1:
        none). Such an image is held out with its source and scored out of fold, and the threshold holds
        for those scores too (:func:`pipeline.calibration.calibrate`; PatchCore's folds).
        ``new_condition``: OK images of a new condition (``--style-from``), never trained on: scored by
        the trained model, and the threshold holds for them too.
        ``groups`` names each OK image's source photograph (crops of one photograph then share a fold:
        :func:`pipeline.training_set.fold_sets`); ``names`` are recorded in ``model.json``.
        ``runtime``: where the frozen feature extractor runs, for the training features and every score
        training takes (:mod:`pipeline.runtime`; default torch); the model scores there afterwards."""
        config = config or ModelConfig()
        if len(ok) < 2:
            raise InvalidArgumentError("--ok", f"needs at least 2 OK images, got {len(ok)}")
        if not 0 < aux_weight <= 1:
            raise InvalidArgumentError("--aux-weight", "must be in (0, 1]")
        aux_sources = list(aux_sources) or [-1] * len(aux)
        if len(aux_sources) != len(aux) or not all(-1 <= i < len(ok) for i in aux_sources):
            raise InvalidArgumentError("aux sources", "one per auxiliary image, an OK image's index or -1")
        unknown = [a for a in augment if a not in AUGMENTS]
        if unknown:
            raise InvalidArgumentError("--augment", f"unknown {unknown}; known: {', '.join(AUGMENTS)}")
        torch.manual_seed(config.seed)
        held = set() if config.out_of_fold else holdout_indices(len(ok), config.holdout)
        folds = fold_sets(len(ok), config.folds, groups) if config.out_of_fold else []
        fitted: networks.PatchcoreFit | None = None
        train = [img for i, img in enumerate(ok) if i not in held]
        kinds = list(dict.fromkeys(augment))
        if config.tta_in_training:
            kinds += [v for v in config.tta_views if v in tta.GEOMETRIC[1:] and v not in kinds]
        copies = {kind: augmented(train, kind, config.seed) for kind in kinds}
        net = build_net(config)
        for member in _members(net, config.method).values():
            networks.load_backbone(member, config.backbone, config.backbone_weights)
        model = cls(config, net, UNCALIBRATED, runtime=runtime)
        held_ok = [ok[i] for i in sorted(held)]
        if "variation" in config.method.split("+"):
            held_ok = normal_variants(held_ok)
        stats: dict[str, object] = {}
        generated: list[float] = []
        for name, member in _members(net, config.method).items():
            usable = [k for k in kinds if fusion.member_views(name, [k])]
            # aux images get the training views the OK images get (TTA scores them in every view)
            views = [k for k in usable if k in tta.GEOMETRIC] if aux else []
            aux_views = [*aux, *(img for k in views for img in augmented(aux, k, config.seed))]
            samples = [*train, *(img for k in usable for img in copies[k]), *aux_views]
            weights = [1.0] * (len(samples) - len(aux_views)) + [aux_weight] * len(aux_views)
            batches = model._training_batches(samples, weights)
            if folds and isinstance(member, networks.BankPatchcore):
                sources = [*range(len(train)), *(i for k in usable for i in range(len(train)))]
                # generated from an OK image: held out with it; else never
                sources += aux_sources * (1 + len(views))
                with extractors_swapped(member, model.scorer.frozen_compiled(name)):
                    fitted = networks.fit_patchcore(member, batches, config.coreset_ratio, sources, folds)
                stats[name] = fitted.stats
                offsets = {k: len(train) * (1 + i) for i, k in enumerate(usable)} | {"identity": 0}
            else:
                with extractors_swapped(member, model.scorer.frozen_compiled(name)):
                    stats[name] = _fit_member(member, batches, config)
        if isinstance(net, FusedNet):
            stats["fusion"], ok_scores = model._fit_fusion(held_ok)
        else:
            stats = dict(stats[config.method])  # type: ignore[call-overload]
            if folds and fitted is not None:
                ok_scores = model._out_of_fold_scores(ok, folds, fitted, offsets)
                generated = model._generated_scores(aux, aux_sources, folds, fitted)
            else:
                ok_scores = [r.score for r in model.score(held_ok)] if held_ok else []
        model.net.eval()
        defect_scores = [r.score for r in model.score(val_defects)] if val_defects else []
        target = config.target_frr if config.folds >= 2 else None  # holdout methods too: one operating point
        new = [r.score for r in model.score(new_condition)] if new_condition else []
        model.calibration = calibrate(
            ok_scores, defect_scores, target, len(folds), generated=generated, new_condition=new
        )
        model.record = ModelRecord(
            calibration_scores=CalibrationScores(
                ok=rounded(ok_scores),
                defects=rounded(defect_scores),
                generated=rounded(generated),
                new_condition=rounded(new),
            ),
            training={
                "ok_count": len(ok),
                "trained_on": len(ok) - len(held),
                "held_out": len(held),
                "out_of_fold": len(ok) if folds else 0,
                "ok_scores": score_summary(ok_scores),
                "training_samples": len(train) + sum(len(v) for v in copies.values()) + len(aux),
                "aux_views": len(aux_views) if aux else 0,
                "aux_count": len(aux),
                "aux_weight": aux_weight if aux else None,
                "augment": kinds,
                "sha256": dataset_hash(ok, aux),
                "names": list(names)[:2000],
                **stats,
            },
            reference_size=reference_size(ok),
            colour_mode="gray" if all(is_gray(img) for img in ok) else "rgb",
        )
        model.reference = reference_image(ok)
        model.regions = region_map(model.reference)
        return model

    @torch.no_grad()
    def _out_of_fold_scores(
        self,
        ok: Sequence[NDArray[np.uint8]],
        folds: Sequence[set[int]],
        fitted: networks.PatchcoreFit,
        offsets: dict[str, int],
    ) -> list[float]:
        """Each OK image's score against the bank of the folds it is not in (then the final bank back).

        Where training saw every TTA view of the OK images (``offsets``: the first training sample of
        each view), their patch embeddings are reused, so the backbone does not run again; otherwise the
        images are scored as any crop is."""
        net = self.net
        final = (net.memory_bank, net.bank_penalty)
        views = self.config.tta_views
        reuse = all(v in offsets for v in views) and isinstance(net, networks.BankPatchcore)
        scores = [0.0] * len(ok)
        try:
            for fold, (bank, penalty) in zip(folds, fitted.fold_banks, strict=True):
                net.memory_bank, net.bank_penalty = bank, penalty
                members = sorted(fold)
                if not reuse:
                    for i, result in zip(members, self.score([ok[i] for i in members]), strict=True):
                        scores[i] = result.score
                    continue
                for start in range(0, len(members), self.config.batch_size):
                    chunk = members[start : start + self.config.batch_size]
                    maps = self._maps_from_patches(fitted, [[offsets[v] + i for i in chunk] for v in views])
                    for i, amap in zip(chunk, at_crop_size([ok[i] for i in chunk], maps), strict=True):
                        scores[i] = float(amap.max())
        finally:
            net.memory_bank, net.bank_penalty = final
        return scores

    @torch.no_grad()
    def _generated_scores(
        self,
        aux: Sequence[NDArray[np.uint8]],
        sources: Sequence[int],
        folds: Sequence[set[int]],
        fitted: networks.PatchcoreFit,
    ) -> list[float]:
        """Each auxiliary image generated from an OK image, scored against the bank of the folds its
        source is not in, as any crop is scored (every TTA view through the backbone)."""
        net = self.net
        final = (net.memory_bank, net.bank_penalty)
        scores: list[float] = []
        try:
            for fold, (bank, penalty) in zip(folds, fitted.fold_banks, strict=True):
                members = [j for j, source in enumerate(sources) if source in fold]
                if members:
                    net.memory_bank, net.bank_penalty = bank, penalty
                    scores += [r.score for r in self.score([aux[j] for j in members])]
        finally:
            net.memory_bank, net.bank_penalty = final
        return scores

    def _maps_from_patches(
        self, fitted: networks.PatchcoreFit, samples: list[list[int]]
    ) -> NDArray[np.float32]:
        """The TTA-merged maps of images whose views are the training samples ``samples[view][image]``
        (the numbers scoring gives, without the backbone, up to rounding: a training view is a flipped
        crop resized, a scoring view a resized crop flipped)."""
        net, size, rows = self.net, self.config.image_size, fitted.per_sample
        assert isinstance(net, networks.BankPatchcore)
        index = torch.tensor([s for view in samples for s in view])
        picked = (index[:, None] * rows + torch.arange(rows)[None]).reshape(-1)
        maps = net.maps_from_patches(fitted.patches[picked], len(index), (size, size))
        merged = tta.merge(maps.float(), self.config.tta_views, self.config.tta_reduce)
        return merged[:, 0].cpu().numpy().astype(np.float32)

    def _training_batches(
        self, samples: Sequence[NDArray[np.uint8]], weights: Sequence[float]
    ) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            step = self.config.batch_size
            for start in range(0, len(samples), step):
                images = self.scorer.normalise(self.scorer.pixels(samples[start : start + step]))
                yield images, torch.tensor(weights[start : start + step], device=images.device)

        return batches

    @torch.no_grad()
    def _fit_fusion(
        self, held: Sequence[NDArray[np.uint8]]
    ) -> tuple[dict[str, dict[str, float]], list[float]]:
        """Normalise each member on the held-out crops, then score them fused: each member's maps are
        computed once and serve both steps (the same numbers :meth:`score` gives)."""
        assert isinstance(self.net, FusedNet)
        parts = list(self.scorer.member_batches(held))
        norms = self.net.set_normalisation(
            {name: [float(m.amax()) for batch in parts for m in batch[name]] for name in self.net.members},
            self.config.fusion_margin,
        )
        scores: list[float] = []
        step = self.config.batch_size
        for i, batch in enumerate(parts):
            merged = self.net.combine([batch[name] for name in self.net.members], self.config.fusion)
            chunk = held[i * step : (i + 1) * step]
            scores.extend(float(m.max()) for m in at_crop_size(chunk, merged[:, 0].cpu().numpy()))
        return norms, scores

    # -- scoring -------------------------------------------------------------------------------

    def score(
        self,
        images: Sequence[NDArray[np.uint8]],
        use_tta: bool = True,
        batch_size: int | None = None,
        inside: Sequence[NDArray[np.bool_] | None] | None = None,
    ) -> list[ScoreResult]:
        """Score crops (RGB uint8, any sizes). Each forward holds ``batch_size`` crops times their views
        (default: :func:`pipeline.scoring.crops_per_forward`).

        ``inside``, per crop, marks the pixels that came from its source image (None: all of them; see
        :func:`pipeline.geometry.inside_at_pose`): the others are filled as an OK crop looks there before
        scoring and never score, so a crop cut at an image's edge is judged on image pixels only."""
        views = self.config.tta_views if use_tta else ("identity",)
        masks = list(inside) if inside is not None else [None] * len(images)
        step = batch_size or crops_per_forward(self.config)
        maps = self.scorer.crop_maps(images, views, step, masks, self.reference)
        return [scored(amap, self.calibration) for amap in maps]

    @torch.no_grad()
    def member_scores(self, images: Sequence[NDArray[np.uint8]], name: str) -> list[float]:
        """Image scores of one member of a fused model, before normalisation (the max of its map)."""
        return [float(m.amax()) for batch in self.scorer.member_batches(images) for m in batch[name]]

    @property
    def calibration_scores(self) -> list[float]:
        """The out-of-sample OK scores the threshold was set from (kept in ``model.json``)."""
        return list(self.record.calibration_scores.ok)

    @property
    def colour_mode(self) -> str:
        """``gray`` when every OK training image was grayscale, else ``rgb`` (models from before: rgb)."""
        return self.record.colour_mode

    def use_runtime(self, runtime: Runtime | str = "auto", cache: Path | None = None) -> AnomalyModel:
        """Score with the feature extractor in ``runtime`` (a :class:`Runtime`, or ``auto``, ``torch`` or
        ``openvino`` with its compiled networks kept under ``cache``; see :mod:`pipeline.runtime`);
        returns this model. ``runtime_used`` then says where the extractor runs."""
        chosen = runtime if isinstance(runtime, Runtime) else Runtime(resolve(runtime, device().type), cache)
        self.scorer = CropScorer(self.config, self.net, runtime=chosen)
        return self

    @property
    def runtime_used(self) -> str:
        """Where the feature extractor runs when this model scores: ``torch`` or ``openvino``."""
        return self.scorer.runtime

    def with_views(self, views: Sequence[str], reduce: str | None = None) -> AnomalyModel:
        """The same model scoring with other TTA views (for evaluation and benchmarks)."""
        config = self.config.changed(tta_views=tuple(views), tta_reduce=reduce or self.config.tta_reduce)
        other = AnomalyModel(config, self.net, self.calibration, self.record, self.version)
        other.reference, other.regions = self.reference, self.regions
        other.scorer.net, other.scorer.runtime = self.scorer.net, self.scorer.runtime  # no second compile
        return other

    # -- artifact ------------------------------------------------------------------------------

    def save(self, directory: str | Path, version: str | None = None) -> Path:
        """Write the model directory (:mod:`pipeline.saved_model`; created); returns it."""
        doc = ModelDoc.build(
            self.config, self.calibration, self.record, normalization(self.config.backbone), version
        )
        out = write_model(directory, doc, self.net.state_dict(), self.reference, self.regions)
        self.version = doc.version
        return out

    @classmethod
    def load(cls, directory: str | Path) -> AnomalyModel:
        """Load a model directory written by :meth:`save`; no network, no pickle."""
        saved = read_model(directory)
        doc = saved.doc
        net = build_net(doc.config)
        try:
            net.load_state_dict(drop_trimmed(saved.state, net), strict=True)
        except Exception as exc:
            raise ModelFormatError(str(directory), f"weights do not fit the config ({exc})") from None
        model = cls(doc.config, net, doc.calibration, doc.record(), doc.version)
        model.reference, model.regions = saved.reference, saved.regions
        return model


def build_net(config: ModelConfig) -> nn.Module:
    """The untrained network of ``config.method``; a fused method gets a :class:`FusedNet`."""
    names = config.method.split("+")
    members = {name: _build_member(name, config, len(names) > 1) for name in names}
    return FusedNet(members) if len(names) > 1 else members[names[0]]


def _build_member(name: str, config: ModelConfig, fused: bool) -> nn.Module:
    """``config.layers`` belong to the first (or only) member; the others take their default layers."""
    first = config.method.split("+")[0] == name
    layers = config.layers if first else default_layers(name)
    if name == "variation":
        mean, std = normalization(config.backbone)
        return VariationNet(
            config.backbone,
            layers[0],
            config.image_size,
            mean,
            std,
            tolerance_abs=config.tolerance_abs,
            tolerance_rel=config.tolerance_rel,
            search_px=config.search_px,
            map_sigma=config.map_sigma,
            feature_floor=config.feature_floor,
            feature_scale=config.feature_scale,
        )
    return networks.build(name, config.backbone, layers, config.num_neighbors)


def _members(net: nn.Module, method: str) -> dict[str, nn.Module]:
    return dict(net.members.items()) if isinstance(net, FusedNet) else {method: net}


def _fit_member(net: nn.Module, batches: networks.Batches, config: ModelConfig) -> dict[str, float]:
    if isinstance(net, networks.BankPatchcore):
        return networks.fit_patchcore(net, batches, config.coreset_ratio).stats
    if isinstance(net, networks.OfflineStfpm):
        return networks.fit_stfpm(net, batches, config.epochs)
    if isinstance(net, networks.PadimModel):
        return networks.fit_padim(net, batches)
    if isinstance(net, VariationNet):
        return fit_variation(net, batches)
    raise InvalidArgumentError("--method", f"{config.method!r} has no training routine")
