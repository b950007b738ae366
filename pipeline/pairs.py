"""Golden template per image: compare each image with its own defect-free template.

Some lines photograph every board next to a golden image of the same board (deeppcb's pairs are such a
set). A one-class model of "all good boards" cannot see a defect that is normal elsewhere on another
board; comparing each image with its own template can.

For each pair:

1. **Align** the template onto the image: OpenCV's ECC (``findTransformECC``, a Euclidean motion:
   shift and rotation), run on grey images at most 512 px wide and refined at full size; if it does
   not converge the pair is compared unaligned and ``aligned`` is false.
2. **Compare** with the variation model of :mod:`pipeline.variation` built from that one template: the
   template is the mean image, the tolerance is the absolute one (one sample has no spread), with the
   same ±``search_px`` search and brightness matching, and the feature reference is the template's own
   feature map (its variance floor is ``feature_floor`` times each channel's variance over the map).

The map comes back at the image's own resolution; the score is its maximum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from defectscan.pipeline.backbone import load_weights, normalization
from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.images import to_gray
from defectscan.pipeline.model_config import LITE2, VARIATION_LAYERS
from defectscan.pipeline.preprocess import pixel_batch
from defectscan.pipeline.runtime import Runtime, inference_net
from defectscan.pipeline.variation import VariationNet


@dataclass
class PairResult:
    score: float
    anomaly_map: NDArray[np.float32] = field(repr=False)
    aligned: bool
    shift: tuple[float, float]
    angle: float
    template: NDArray[np.uint8] | None = field(default=None, repr=False)  # aligned onto the image


def align(image: NDArray[np.uint8], template: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], bool, NDArray]:
    """The template warped into the image's frame, whether ECC converged, and the 2x3 warp."""
    if image.shape[:2] != template.shape[:2]:
        size = (image.shape[1], image.shape[0])
        template = np.asarray(cv2.resize(template, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    gi = to_gray(image).astype(np.float32)
    gt = to_gray(template).astype(np.float32)
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    scale = min(1.0, 512 / max(gi.shape))
    try:
        if scale < 1:
            small_i = cv2.resize(gi, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            small_t = cv2.resize(gt, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            _, warp = cv2.findTransformECC(  # type: ignore[call-overload]  # stubs lack gaussFiltSize
                small_t, small_i, warp, cv2.MOTION_EUCLIDEAN, criteria, None, 5
            )
            warp[:, 2] /= scale
        _, warp = cv2.findTransformECC(  # type: ignore[call-overload]
            gt, gi, warp, cv2.MOTION_EUCLIDEAN, criteria, None, 5
        )
    except cv2.error:
        return template, False, np.eye(2, 3, dtype=np.float32)
    size = (image.shape[1], image.shape[0])
    warped = cv2.warpAffine(template, warp, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.asarray(warped, dtype=np.uint8), True, np.asarray(warp)


class PairComparer:
    """Compares images with their own templates; the backbone is loaded once."""

    def __init__(
        self,
        image_size: int = 512,
        backbone: str = LITE2,
        backbone_weights: str | None = None,
        runtime: Runtime | None = None,
        **options: Any,
    ) -> None:
        """``options`` are :class:`VariationNet`'s tolerances and sizes (its defaults otherwise); one
        template has no spread, so the relative tolerance is 0. ``runtime``: where its feature extractor
        runs (:mod:`pipeline.runtime`; default torch)."""
        if not 32 <= image_size <= 2048 or image_size % 32:
            raise InvalidArgumentError("--image-size", "must be a multiple of 32 from 32 to 2048")
        self.image_size = image_size
        mean, std = normalization(backbone)
        net = VariationNet(
            backbone, VARIATION_LAYERS[0], image_size, mean, std, **{**options, "tolerance_rel": 0.0}
        )
        load_weights(net.feature_extractor.feature_extractor, backbone, backbone_weights)
        twin, self.runtime = inference_net(net.eval(), image_size, runtime, torch.device("cpu"))
        assert isinstance(twin, VariationNet)  # a copy of it, its extractor compiled or not
        self.net = twin

    @torch.no_grad()
    def compare(self, image: NDArray[np.uint8], template: NDArray[np.uint8]) -> PairResult:
        warped, aligned, warp = align(image, template)
        batch = pixel_batch([warped, image], self.image_size, torch.device("cpu"))
        net = self.net
        net.mu = batch[:1]
        net.spread_up = torch.zeros_like(net.mu)
        net.spread_down = torch.zeros_like(net.mu)
        net.feature_mean = net.features(batch[:1]).float()
        net.feature_var = torch.zeros_like(net.feature_mean)
        net.set_bands()
        amap = net(batch[1:]).anomaly_map[0, 0].numpy()
        full = cv2.resize(amap, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        angle = float(np.degrees(np.arctan2(warp[1, 0], warp[0, 0])))
        return PairResult(
            float(full.max()),
            full.astype(np.float32),
            aligned,
            (float(warp[0, 2]), float(warp[1, 2])),
            angle,
            warped,
        )
