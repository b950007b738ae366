"""Scoring crops: preprocessing, test-time augmentation, fusion, and maps back at each crop's size.

Crops are resized to ``image_size`` squared and scaled to [0, 1] (:mod:`pipeline.preprocess`), expanded
into their TTA views (all views in one batch), normalised with the backbone's mean and std (a member
that takes pixels, the variation model, normalises itself), and run through the network (fp16 autocast
on CUDA). Each view's anomaly map is mapped back through the view's inverse and the maps are combined
(mean, or max); a fused model combines its members' normalised maps (:mod:`pipeline.fusion`). The map
is resized to the crop's own size.

**Crops cut at an image's edge.** Per crop, ``inside`` marks the pixels that came from its image
(:func:`pipeline.geometry.inside_at_pose`); the others are filled with the reference (the mean OK crop)
at the crop's brightness before scoring and are 0 in the map, so only image pixels can raise a score.

**Scores** (:func:`scored`). The raw score of a crop is the maximum of its map, so a crop scores above
the threshold exactly when some pixel of its map does. It is never clipped; ``normalized`` is
``sigmoid((score - threshold) / ok_std)``, 0.5 at the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from defectscan.pipeline import fusion, tta
from defectscan.pipeline.backbone import normalization
from defectscan.pipeline.calibration import Calibration
from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.fusion import FusedNet
from defectscan.pipeline.model_config import ModelConfig
from defectscan.pipeline.preprocess import Normaliser, pixel_batch, standardised
from defectscan.pipeline.runtime import CompiledExtractor, Runtime, inference_net


@dataclass
class ScoreResult:
    """One crop's result: raw score, anomaly map at the crop's resolution, normalised score."""

    score: float
    anomaly_map: NDArray[np.float32] = field(repr=False)
    normalized: float
    is_anomalous: bool


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Pixels of network input per forward pass. On the CPU, batches of about eight 256 px views run
# fastest (they stay in the caches): on the demo's model, 32 crops of three views scored in 1.83 s two
# crops a forward, 2.41 s eight a forward, 2.04 s one a forward; with one view, 0.66 s four or eight a
# forward, 0.79 s sixteen. On CUDA, 128 crops of two views at 256 px (about 2 GB of fp16 activations
# through two Lite2 stages) keep the device busy.
CPU_FORWARD_PIXELS = 8 * 256 * 256
CUDA_FORWARD_PIXELS = 128 * 2 * 256 * 256


def crops_per_forward(config: ModelConfig) -> int:
    """Crops (each with its TTA views) per forward pass on this process's device: as many as its pixel
    budget holds, at least one. On CUDA, at least the model's ``batch_size``, so the crops of several
    images share a forward."""
    per_crop = len(config.tta_views) * config.image_size**2
    if device().type != "cuda":
        return max(1, CPU_FORWARD_PIXELS // per_crop)
    return max(config.batch_size, CUDA_FORWARD_PIXELS // per_crop)


class CropScorer:
    """Anomaly maps of crops from a network and the config it was built from. Scoring runs an
    inference copy of the network whose feature extractor is compiled by OpenVINO where ``runtime``
    says so (:mod:`pipeline.runtime`), else has batch norm folded into its convolutions
    (:mod:`pipeline.folded`); ``fold=False`` runs the network as it is."""

    def __init__(
        self, config: ModelConfig, net: nn.Module, fold: bool = True, runtime: Runtime | None = None
    ) -> None:
        self.config = config
        self.normalise = Normaliser(*normalization(config.backbone), device())
        self.runtime = "torch"
        self.net = net
        if fold:
            self.net, self.runtime = inference_net(net, config.image_size, runtime, device())

    def frozen_compiled(self, member: str | None = None) -> dict[str, nn.Module]:
        """The compiled extractors of the network (of a fused network's ``member``) that training does not
        change (every one but STFPM's student): training runs its features through them too."""
        net = self.net.members[member] if isinstance(self.net, FusedNet) and member else self.net
        return {
            name: module
            for name, module in net._modules.items()
            if isinstance(module, CompiledExtractor) and name != "student_model"
        }

    def pixels(self, images: Sequence[NDArray[np.uint8]]) -> torch.Tensor:
        """Crops as a [0, 1] batch at the model's size, on the model's device (standardised where the
        model's ``intensity`` says so)."""
        batch = pixel_batch(images, self.config.image_size, device())
        return standardised(batch) if self.config.intensity == "standardised" else batch

    @torch.no_grad()
    def crop_maps(
        self,
        images: Sequence[NDArray[np.uint8]],
        views: Sequence[str],
        step: int,
        inside: Sequence[NDArray[np.bool_] | None],
        reference: NDArray[np.uint8] | None,
    ) -> Iterator[NDArray[np.float32]]:
        """Each crop's TTA-merged map at its own size, ``step`` crops (times their views) a batch."""
        if len(inside) != len(images):
            raise InvalidArgumentError("inside", f"{len(inside)} masks for {len(images)} images")
        for start in range(0, len(images), step):
            masks = inside[start : start + step]
            chunk = [
                filled(img, m, reference) for img, m in zip(images[start : start + step], masks, strict=True)
            ]
            yield from at_crop_size(chunk, self.maps(self.pixels(chunk), views), masks)

    def maps(self, batch: torch.Tensor, views: Sequence[str]) -> NDArray[np.float32]:
        """Anomaly maps ``(B, S, S)`` for a batch of [0, 1] images ``(B, 3, S, S)``, TTA merged (and,
        for a fused model, each member's maps normalised and combined)."""
        if isinstance(self.net, FusedNet):
            parts = [
                self.member_maps(member, batch, fusion.member_views(name, views))
                for name, member in self.net.members.items()
            ]
            merged = self.net.combine(parts, self.config.fusion)
        else:
            merged = self.member_maps(self.net, batch, views)
        return merged[:, 0].cpu().numpy().astype(np.float32)

    def member_maps(self, net: nn.Module, batch: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
        expanded = tta.expand(batch, views)
        if not getattr(net, "takes_pixels", False):
            expanded = self.normalise(expanded)
        with torch.autocast(device_type=expanded.device.type, dtype=torch.float16, enabled=expanded.is_cuda):
            result = net(expanded)
        return tta.merge(result.anomaly_map.float(), views, self.config.tta_reduce)

    def member_batches(self, images: Sequence[NDArray[np.uint8]]) -> Iterator[dict[str, torch.Tensor]]:
        """Per batch of a fused model's crops, each member's TTA-merged maps before normalisation."""
        assert isinstance(self.net, FusedNet)
        step = self.config.batch_size
        for start in range(0, len(images), step):
            batch = self.pixels(images[start : start + step])
            yield {
                name: self.member_maps(member, batch, fusion.member_views(name, self.config.tta_views))
                for name, member in self.net.members.items()
            }


def filled(
    img: NDArray[np.uint8], inside: NDArray[np.bool_] | None, reference: NDArray[np.uint8] | None
) -> NDArray[np.uint8]:
    """A crop whose pixels from outside its source image hold what an OK crop has there: the
    reference at the crop's brightness, or, without one, an inpainting of the crop."""
    if inside is None or inside.all():
        return img
    if inside.shape != img.shape[:2]:
        raise InvalidArgumentError("inside", f"mask {inside.shape} does not fit image {img.shape[:2]}")
    outside = ~inside
    if reference is None:
        return np.asarray(cv2.inpaint(img, outside.astype(np.uint8), 3, cv2.INPAINT_TELEA), np.uint8)
    ref = reference
    if ref.shape[:2] != img.shape[:2]:
        ref = np.asarray(
            cv2.resize(ref, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_AREA), np.uint8
        )
    # the reference at the crop's brightness: a gain per channel from the pixels both hold
    gain = img[inside].mean(axis=0) / np.maximum(ref[inside].mean(axis=0), 1.0)
    out = img.copy()
    out[outside] = np.clip(ref[outside] * gain, 0, 255)
    return out


def at_crop_size(
    chunk: Sequence[NDArray[np.uint8]],
    maps: NDArray[np.float32],
    inside: Sequence[NDArray[np.bool_] | None] | None = None,
) -> list[NDArray[np.float32]]:
    """Each map resized to its crop's own size, 0 where the crop lies outside its image."""
    out = []
    for img, amap, mask in zip(chunk, maps, inside or [None] * len(chunk), strict=True):
        size = (img.shape[1], img.shape[0])
        full = np.asarray(
            cv2.resize(amap.astype(np.float32), size, interpolation=cv2.INTER_LINEAR), np.float32
        )
        if mask is not None:
            full[~mask] = 0.0
        out.append(full)
    return out


def scored(amap: NDArray[np.float32], calibration: Calibration) -> ScoreResult:
    """A crop's result from its map and the model's calibration."""
    score = float(amap.max())
    z = (score - calibration.threshold) / max(calibration.ok_std, 1e-9)
    normalized = 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))
    return ScoreResult(score, amap, normalized, score > calibration.threshold)
