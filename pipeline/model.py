"""Anomaly models: train on OK images, score crops with test-time augmentation, calibrate, save, load.

An :class:`AnomalyModel` wraps one of anomalib's networks (see :mod:`pipeline.networks`). Its
:class:`ModelConfig` is the whole recipe: it is stored in ``model.json`` beside the weights, and loading
rebuilds the network from it.

**Scoring.** Crops are resized to ``image_size`` squared, scaled to [0, 1], expanded into their TTA views
(all views in one batch), normalised with the backbone's mean and std, and run through the network.
Each view's anomaly map is mapped back through the view's inverse, the maps are combined (mean, or max),
and the result is resized to the crop's own size. The raw score of a crop is the maximum of that map,
so a crop scores above the threshold exactly when some pixel of its map does. The raw score is never
clipped; ``normalized`` is ``sigmoid((score - threshold) / ok_std)``, 0.5 at the threshold.

**Training sees the views that scoring uses.** With ``tta_in_training`` (the default), the geometric
TTA views (``hflip``, ``vflip``, ``rot180``) are added to the OK images as training augmentation. A
product is rarely symmetric, so a flipped OK crop is not like any OK crop; without this, each flipped
view adds its own false anomaly and TTA averages noise in. With it, each view is compared with OK
images seen the same way, and the average over views lowers the noise (magnetic_tile, 1 % coreset:
TTA takes image AUROC from 0.900 to 0.888 without this, and to 0.907 with it; docs/benchmarks.md).

**Calibration.** PatchCore (the default method) scores *every* OK image out of fold: the OK set is split
into ``folds`` (5) interleaved folds, and each fold's images are scored against the bank built, by the
same coreset rule, from the other folds' patches (the backbone runs once for all folds; see
:func:`pipeline.networks.fit_patchcore`). The final model is trained on all OK images. The threshold is
the operating point for ``target_frr`` (default 0.01, the share of good parts the user accepts to
re-check) from those out-of-fold scores (:mod:`pipeline.operating_point`: a robust Gumbel tail, with
the expected false-reject rate and its interval); labelled defect crops add the escape rate at it.
Other methods keep ``holdout`` (20 %) of the OK images out of training and score them; the threshold is
``mean + 3 std`` of their scores, but at least their maximum, or, with labelled defect crops, the one
that maximises F1 over the held-out OK and the defect crops (the rules: :func:`pipeline.model_doc.calibrate`).

**Crops cut at an image's edge.** :meth:`AnomalyModel.score` takes, per crop, the pixels that came
from its image (:func:`pipeline.geometry.inside_at_pose`); the others are filled with the reference at
the crop's brightness before scoring and are 0 in the map, so only image pixels can raise a score.

**Artifact** (a directory): ``model.safetensors`` (every tensor of the network, backbone included, so a
model never depends on a weights package or the network), ``model.json`` (config, preprocessing,
calibration with the out-of-sample scores it came from, training-set summary, metrics, created_at,
version; :mod:`pipeline.model_doc`), ``MODEL_CARD.md`` (:mod:`pipeline.model_card`), ``reference.png``
(the mean OK crop) and ``regions.png`` (the product's region map, :mod:`pipeline.regions`; edit it to
override).
Loading executes no code from the files.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file
from torch import nn

from defectscan.pipeline import fusion, networks, tta
from defectscan.pipeline.backbone import drop_trimmed, normalization
from defectscan.pipeline.errors import (
    DefectscanError,
    InvalidArgumentError,
    ModelFormatError,
    ModelNotFoundError,
)
from defectscan.pipeline.fusion import FusedNet
from defectscan.pipeline.images import decode_image, encode_png, is_gray
from defectscan.pipeline.model_config import AUGMENTS, ModelConfig, default_layers
from defectscan.pipeline.model_doc import (
    SCHEMA,
    Calibration,
    calibrate,
    new_version_id,
    parse_doc,
    read_calibration,
    rounded,
    write_doc,
)
from defectscan.pipeline.regions import RegionMap, from_png_rgb, region_map
from defectscan.pipeline.variation import VariationNet, fit_variation, normal_variants


@dataclass
class ScoreResult:
    """One crop's result: raw score, anomaly map at the crop's resolution, normalised score."""

    score: float
    anomaly_map: NDArray[np.float32] = field(repr=False)
    normalized: float
    is_anomalous: bool


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class AnomalyModel:
    """A trained model: network, config, calibration and metadata."""

    def __init__(
        self, config: ModelConfig, net: nn.Module, calibration: Calibration, meta: dict[str, object]
    ):
        self.config = config
        self.net = net.to(device()).eval()
        self.calibration = calibration
        self.meta = meta
        self.reference: NDArray[np.uint8] | None = None  # the mean OK crop, written as reference.png
        self.regions: RegionMap | None = None  # from the reference; regions.png (a user may edit it)
        mean, std = normalization(config.backbone)
        self._mean = torch.tensor(mean, device=device()).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=device()).view(1, 3, 1, 1)

    # -- training ------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        ok: Sequence[NDArray[np.uint8]],
        config: ModelConfig | None = None,
        aux: Sequence[NDArray[np.uint8]] = (),
        aux_weight: float = 0.1,
        augment: Sequence[str] = (),
        val_defects: Sequence[NDArray[np.uint8]] = (),
        names: Sequence[str] = (),
        groups: Sequence[str] = (),
    ) -> AnomalyModel:
        """Train on OK crops (RGB uint8, any sizes), calibrate, and return the model.

        Usage (``ok_crops`` and ``test_crops``: lists of RGB arrays)::

            model = AnomalyModel.fit(ok_crops, ModelConfig(method="patchcore"))
            scores = [r.score for r in model.score(test_crops)]

        ``groups`` names each OK image's source photograph (crops of one photograph then share a fold:
        :func:`fold_sets`); ``names`` are recorded in ``model.json``."""
        config = config or ModelConfig()
        if len(ok) < 2:
            raise InvalidArgumentError("--ok", f"needs at least 2 OK images, got {len(ok)}")
        if not 0 < aux_weight <= 1:
            raise InvalidArgumentError("--aux-weight", "must be in (0, 1]")
        unknown = [a for a in augment if a not in AUGMENTS]
        if unknown:
            raise InvalidArgumentError("--augment", f"unknown {unknown}; known: {', '.join(AUGMENTS)}")
        torch.manual_seed(config.seed)
        held = set() if config.out_of_fold else _holdout_indices(len(ok), config.holdout)
        folds = fold_sets(len(ok), config.folds, groups) if config.out_of_fold else []
        fitted: networks.PatchcoreFit | None = None
        train = [img for i, img in enumerate(ok) if i not in held]
        kinds = list(dict.fromkeys(augment))
        if config.tta_in_training:
            kinds += [v for v in config.tta_views if v in tta.GEOMETRIC[1:] and v not in kinds]
        augmented = {kind: _augmented(train, kind, config.seed) for kind in kinds}
        net = build_net(config)
        for member in _members(net, config.method).values():
            networks.load_backbone(member, config.backbone, config.backbone_weights)
        model = cls(config, net, Calibration(math.inf, "uncalibrated", 0.0, 1.0, 0), {})
        held_ok = [ok[i] for i in sorted(held)]
        if "variation" in config.method.split("+"):
            held_ok = normal_variants(held_ok)
        stats: dict[str, object] = {}
        for name, member in _members(net, config.method).items():
            usable = [k for k in kinds if fusion.member_views(name, [k])]
            samples = [*train, *(img for k in usable for img in augmented[k]), *aux]
            weights = [1.0] * (len(samples) - len(aux)) + [aux_weight] * len(aux)
            batches = model._training_batches(samples, weights)
            if folds and isinstance(member, networks.BankPatchcore):
                sources = [*range(len(train)), *(i for k in usable for i in range(len(train)))]
                sources += [-1] * len(aux)  # auxiliary images are never held out
                fitted = networks.fit_patchcore(member, batches, config.coreset_ratio, sources, folds)
                stats[name] = fitted.stats
                offsets = {k: len(train) * (1 + i) for i, k in enumerate(usable)} | {"identity": 0}
            else:
                stats[name] = _fit_member(member, batches, config)
        if isinstance(net, FusedNet):
            stats["fusion"], ok_scores = model._fit_fusion(held_ok)
        else:
            stats = dict(stats[config.method])  # type: ignore[call-overload]
            if folds and fitted is not None:
                ok_scores = model._out_of_fold_scores(ok, folds, fitted, offsets)
            else:
                ok_scores = [r.score for r in model.score(held_ok)] if held_ok else []
        model.net.eval()
        defect_scores = [r.score for r in model.score(val_defects)] if val_defects else []
        target = config.target_frr if folds else None
        model.calibration = calibrate(ok_scores, defect_scores, target, len(folds))
        model.meta = {
            "calibration_scores": {"ok": rounded(ok_scores), "defects": rounded(defect_scores)},
            "training": {
                "ok_count": len(ok),
                "trained_on": len(ok) - len(held),
                "held_out": len(held),
                "out_of_fold": len(ok) if folds else 0,
                "ok_scores": _summary(ok_scores),
                "training_samples": len(train) + sum(len(v) for v in augmented.values()) + len(aux),
                "aux_count": len(aux),
                "aux_weight": aux_weight if aux else None,
                "augment": kinds,
                "sha256": _dataset_hash(ok, aux),
                "names": list(names)[:2000],
                **stats,
            },
            "reference_size": _reference_size(ok),
            "colour_mode": "gray" if all(is_gray(img) for img in ok) else "rgb",
        }
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
                    for i, result in zip(chunk, self._results([ok[i] for i in chunk], maps), strict=True):
                        scores[i] = result.score
        finally:
            net.memory_bank, net.bank_penalty = final
        return scores

    def _maps_from_patches(
        self, fitted: networks.PatchcoreFit, samples: list[list[int]]
    ) -> NDArray[np.float32]:
        """The TTA-merged maps of images whose views are the training samples ``samples[view][image]``
        (the numbers :meth:`maps` gives, without the backbone, up to rounding: a training view is a
        flipped crop resized, a scoring view a resized crop flipped)."""
        net, size, rows = self.net, self.config.image_size, fitted.per_sample
        assert isinstance(net, networks.BankPatchcore)
        index = torch.tensor([s for view in samples for s in view])
        picked = (index[:, None] * rows + torch.arange(rows)[None]).reshape(-1)
        maps = net.maps_from_patches(fitted.patches[picked], len(index), (size, size))
        merged = tta.merge(maps.float(), self.config.tta_views, self.config.tta_reduce)
        return merged[:, 0].cpu().numpy().astype(np.float32)

    @property
    def calibration_scores(self) -> list[float]:
        """The out-of-sample OK scores the threshold was set from (kept in ``model.json``)."""
        stored = self.meta.get("calibration_scores")
        return list(stored.get("ok", [])) if isinstance(stored, dict) else []

    @property
    def colour_mode(self) -> str:
        """``gray`` when every OK training image was grayscale, else ``rgb`` (models from before: rgb)."""
        return str(self.meta.get("colour_mode", "rgb"))

    def _preprocess(self, images: Sequence[NDArray[np.uint8]]) -> torch.Tensor:
        size = self.config.image_size
        resized = [
            cv2.resize(
                img,
                (size, size),
                interpolation=cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR,
            )
            for img in images
        ]
        batch = torch.from_numpy(np.stack(resized)).to(device()).permute(0, 3, 1, 2).float().div_(255.0)
        return batch

    def _normalise(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch - self._mean) / self._std

    def _training_batches(
        self, samples: Sequence[NDArray[np.uint8]], weights: Sequence[float]
    ) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            step = self.config.batch_size
            for start in range(0, len(samples), step):
                images = self._normalise(self._preprocess(samples[start : start + step]))
                yield images, torch.tensor(weights[start : start + step], device=images.device)

        return batches

    # -- scoring -------------------------------------------------------------------------------

    @torch.no_grad()
    def score(
        self,
        images: Sequence[NDArray[np.uint8]],
        use_tta: bool = True,
        batch_size: int | None = None,
        inside: Sequence[NDArray[np.bool_] | None] | None = None,
    ) -> list[ScoreResult]:
        """Score crops (RGB uint8, any sizes). Each batch holds ``batch_size`` crops times their views.

        ``inside``, per crop, marks the pixels that came from its source image (None: all of them; see
        :func:`pipeline.geometry.inside_at_pose`): the others are filled as an OK crop looks there before
        scoring and never score, so a crop cut at an image's edge is judged on image pixels only."""
        views = self.config.tta_views if use_tta else ("identity",)
        step = batch_size or self.config.batch_size
        masks = list(inside) if inside is not None else [None] * len(images)
        if len(masks) != len(images):
            raise InvalidArgumentError("inside", f"{len(masks)} masks for {len(images)} images")
        out: list[ScoreResult] = []
        for start in range(0, len(images), step):
            chunk = [
                self._filled(img, m)
                for img, m in zip(images[start : start + step], masks[start : start + step], strict=True)
            ]
            out.extend(
                self._results(chunk, self.maps(self._preprocess(chunk), views), masks[start : start + step])
            )
        return out

    def _filled(self, img: NDArray[np.uint8], inside: NDArray[np.bool_] | None) -> NDArray[np.uint8]:
        """A crop whose pixels from outside its source image hold what an OK crop has there: the
        reference (the mean OK crop), or, for a model without one, an inpainting of the crop."""
        if inside is None or inside.all():
            return img
        if inside.shape != img.shape[:2]:
            raise InvalidArgumentError("inside", f"mask {inside.shape} does not fit image {img.shape[:2]}")
        outside = ~inside
        if self.reference is None:
            return np.asarray(cv2.inpaint(img, outside.astype(np.uint8), 3, cv2.INPAINT_TELEA), np.uint8)
        ref = self.reference
        if ref.shape[:2] != img.shape[:2]:
            ref = np.asarray(
                cv2.resize(ref, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_AREA), np.uint8
            )
        # the reference at the crop's brightness: a gain per channel from the pixels both hold
        gain = img[inside].mean(axis=0) / np.maximum(ref[inside].mean(axis=0), 1.0)
        out = img.copy()
        out[outside] = np.clip(ref[outside] * gain, 0, 255)
        return out

    def _results(
        self,
        chunk: Sequence[NDArray[np.uint8]],
        maps: NDArray[np.float32],
        inside: Sequence[NDArray[np.bool_] | None] | None = None,
    ) -> list[ScoreResult]:
        """Each map resized to its crop's own size (0 where the crop lies outside its image), scored."""
        out = []
        for img, amap, mask in zip(chunk, maps, inside or [None] * len(chunk), strict=True):
            full = np.asarray(
                cv2.resize(
                    amap.astype(np.float32), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR
                ),
                dtype=np.float32,
            )
            if mask is not None:
                full[~mask] = 0.0
            out.append(self._result(full))
        return out

    def maps(self, batch: torch.Tensor, views: Sequence[str]) -> NDArray[np.float32]:
        """Anomaly maps ``(B, S, S)`` for a batch of [0, 1] images ``(B, 3, S, S)``, TTA merged (and,
        for a fused model, each member's maps normalised and combined; see :mod:`pipeline.fusion`)."""
        if isinstance(self.net, FusedNet):
            parts = [
                self._member_maps(member, batch, fusion.member_views(name, views))
                for name, member in self.net.members.items()
            ]
            merged = self.net.combine(parts, self.config.fusion)
        else:
            merged = self._member_maps(self.net, batch, views)
        return merged[:, 0].cpu().numpy().astype(np.float32)

    def _member_maps(self, net: nn.Module, batch: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
        expanded = tta.expand(batch, views)
        if not getattr(net, "takes_pixels", False):
            expanded = self._normalise(expanded)
        with torch.autocast(device_type=expanded.device.type, dtype=torch.float16, enabled=expanded.is_cuda):
            result = net(expanded)
        return tta.merge(result.anomaly_map.float(), views, self.config.tta_reduce)

    @torch.no_grad()
    def member_scores(self, images: Sequence[NDArray[np.uint8]], name: str) -> list[float]:
        """Image scores of one member of a fused model, before normalisation (the max of its map)."""
        return [float(m.amax()) for batch in self._member_batches(images) for m in batch[name]]

    def _member_batches(self, images: Sequence[NDArray[np.uint8]]) -> Iterator[dict[str, torch.Tensor]]:
        assert isinstance(self.net, FusedNet)
        step = self.config.batch_size
        for start in range(0, len(images), step):
            batch = self._preprocess(images[start : start + step])
            yield {
                name: self._member_maps(member, batch, fusion.member_views(name, self.config.tta_views))
                for name, member in self.net.members.items()
            }

    @torch.no_grad()
    def _fit_fusion(
        self, held: Sequence[NDArray[np.uint8]]
    ) -> tuple[dict[str, dict[str, float]], list[float]]:
        """Normalise each member on the held-out crops, then score them fused: each member's maps are
        computed once and serve both steps (the same numbers :meth:`score` gives)."""
        assert isinstance(self.net, FusedNet)
        parts = list(self._member_batches(held))
        norms = self.net.set_normalisation(
            {name: [float(m.amax()) for batch in parts for m in batch[name]] for name in self.net.members},
            self.config.fusion_margin,
        )
        scores: list[float] = []
        step = self.config.batch_size
        for i, batch in enumerate(parts):
            members = [batch[name] for name in self.net.members]
            merged = self.net.combine(members, self.config.fusion)
            chunk = held[i * step : (i + 1) * step]
            scores.extend(r.score for r in self._results(chunk, merged[:, 0].cpu().numpy()))
        return norms, scores

    def _result(self, amap: NDArray[np.float32]) -> ScoreResult:
        score = float(amap.max())
        cal = self.calibration
        z = (score - cal.threshold) / max(cal.ok_std, 1e-9)
        normalized = 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))
        return ScoreResult(score, amap, normalized, score > cal.threshold)

    # -- artifact ------------------------------------------------------------------------------

    def save(self, directory: str | Path, version: str | None = None) -> Path:
        """Write the artifact into ``directory`` (created); returns it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        created = datetime.now(UTC).replace(microsecond=0)
        meta = dict(self.meta)
        version = version or new_version_id(created, self.meta, asdict(self.config))
        doc = {
            "schema": SCHEMA,
            "version": version,
            "created_at": created.isoformat().replace("+00:00", "Z"),
            "config": asdict(self.config),
            "preprocessing": {
                "resize": [self.config.image_size, self.config.image_size],
                "scale": 1 / 255,
                "mean": list(normalization(self.config.backbone)[0]),
                "std": list(normalization(self.config.backbone)[1]),
            },
            "tta": {"views": list(self.config.tta_views), "reduce": self.config.tta_reduce},
            "calibration": asdict(self.calibration),
            "score": {
                "image": "max of the anomaly map",
                "normalized": "sigmoid((score - threshold) / ok_std)",
            },
            **meta,
        }
        save_file(state, str(out / "model.safetensors"))
        if self.reference is not None:
            (out / "reference.png").write_bytes(encode_png(self.reference))
        if self.regions is not None:
            (out / "regions.png").write_bytes(encode_png(self.regions.to_png_rgb()))
        write_doc(out, doc)
        self.meta["version"] = version
        return out

    @classmethod
    def load(cls, directory: str | Path) -> AnomalyModel:
        """Load an artifact written by :meth:`save`; no network, no pickle."""
        path = Path(directory)
        doc_path = path / "model.json"
        if not doc_path.is_file():
            raise ModelNotFoundError(str(path), "no model.json: not a defectscan model directory")
        try:
            doc = parse_doc(doc_path.read_bytes(), str(doc_path))
        except OSError as exc:
            raise ModelFormatError(str(doc_path), f"unreadable ({exc})") from None
        raw = dict(doc["config"])
        raw["layers"] = tuple(raw["layers"])
        raw["tta_views"] = tuple(raw["tta_views"])
        if "levels" in raw:
            raw["levels"] = tuple(raw["levels"])
        try:
            config = ModelConfig(**raw)
        except (TypeError, DefectscanError) as exc:
            raise ModelFormatError(str(doc_path), f"bad config ({exc})") from None
        net = build_net(config)
        try:
            state = load_file(str(path / "model.safetensors"))
            net.load_state_dict(drop_trimmed(state, net), strict=True)
        except Exception as exc:
            raise ModelFormatError(str(path / "model.safetensors"), f"cannot load weights ({exc})") from None
        calibration = read_calibration(doc)
        meta = {k: v for k, v in doc.items() if k not in ("config", "calibration")}
        model = cls(config, net, calibration, meta)
        if (path / "reference.png").is_file():
            model.reference = decode_image((path / "reference.png").read_bytes(), str(path / "reference.png"))
            labelled = path / "regions.png"
            model.regions = (
                from_png_rgb(decode_image(labelled.read_bytes(), str(labelled)), model.reference)
                if labelled.is_file()
                else region_map(model.reference)
            )
        return model

    def with_views(self, views: Sequence[str], reduce: str | None = None) -> AnomalyModel:
        """The same model scoring with other TTA views (for evaluation and benchmarks)."""
        config = replace(self.config, tta_views=tuple(views), tta_reduce=reduce or self.config.tta_reduce)
        return AnomalyModel(config, self.net, self.calibration, self.meta)


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


def fold_sets(n: int, folds: int, groups: Sequence[str] = ()) -> list[set[int]]:
    """``folds`` folds of ``n`` images, deterministic. With ``groups`` (each image's source, e.g. the
    photograph its crop was cut from), a group's images share one fold, groups dealt in turn: crops of
    one photograph share its light, focus and noise, so a fold that kept some of them would score the
    others too kindly. Without, or with fewer groups than folds, interleaved: every ``folds``-th image
    (fewer folds for fewer images)."""
    names = list(dict.fromkeys(groups)) if len(groups) == n else []
    if len(names) >= min(folds, n) > 1:
        fold_of = {name: i % folds for i, name in enumerate(names)}
        return [{i for i, g in enumerate(groups) if fold_of[g] == f} for f in range(folds)]
    k = min(folds, n)
    return [set(range(start, n, k)) for start in range(k)]


def _summary(scores: Sequence[float]) -> dict[str, float]:
    """Statistics of out-of-sample OK scores, for the model card."""
    if not scores:
        return {}
    values = np.asarray(scores, dtype=np.float64)
    points = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 0.95, 1.0])
    return dict(zip(("min", "q25", "median", "q75", "p95", "max"), map(float, points), strict=True))


def _holdout_indices(n: int, fraction: float) -> set[int]:
    """Every k-th image, spread over the set, so the split is deterministic and covers it evenly."""
    if fraction <= 0:
        return set()
    count = min(max(2, round(n * fraction)), n - 1)
    return {int(i) for i in np.linspace(0, n - 1, count + 2)[1:-1].round()}


def _augmented(images: Sequence[NDArray[np.uint8]], kind: str, seed: int) -> list[NDArray[np.uint8]]:
    if kind == "hflip":
        return [np.ascontiguousarray(img[:, ::-1]) for img in images]
    if kind == "vflip":
        return [np.ascontiguousarray(img[::-1]) for img in images]
    if kind == "rot180":
        return [np.ascontiguousarray(img[::-1, ::-1]) for img in images]
    rng = np.random.default_rng(seed)
    out = []
    for img in images:
        gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-10, 10)
        out.append(np.clip(img.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8))
    return out


def _dataset_hash(ok: Sequence[NDArray[np.uint8]], aux: Sequence[NDArray[np.uint8]]) -> str:
    digest = hashlib.sha256()
    for img in [*ok, *aux]:
        digest.update(hashlib.sha256(np.ascontiguousarray(img).tobytes()).digest())
    return digest.hexdigest()


def _reference_size(images: Sequence[NDArray[np.uint8]]) -> list[int]:
    heights = sorted(img.shape[0] for img in images)
    widths = sorted(img.shape[1] for img in images)
    return [widths[len(widths) // 2], heights[len(heights) // 2]]


def reference_image(images: Sequence[NDArray[np.uint8]]) -> NDArray[np.uint8]:
    """The mean OK image, at the median size (aligned crops all share one size)."""
    width, height = _reference_size(images)
    total = np.zeros((height, width, 3), np.float64)
    for img in images:
        same = img.shape[:2] == (height, width)
        total += img if same else cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(total / len(images)), 0, 255).astype(np.uint8)
