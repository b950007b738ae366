"""The variation model: compare an aligned crop with what it should look like, pixel by pixel.

Segmentation aligns every crop to the product's template, so each pixel of a crop has a place on the
product. From the aligned OK crops the model keeps, per pixel and colour channel:

* the **mean** image ``mu``, and the spread of the OK crops *above* it (``spread_up``, the root mean
  square of the positive deviations) and *below* it (``spread_down``), so that a print that varies
  only towards dark (ink spread, say) is not allowed to go bright;
* a **tolerance band** ``[mu - abs_tol - rel_tol * spread_down, mu + abs_tol + rel_tol * spread_up]``:
  the absolute tolerance (``tolerance_abs``, in [0, 1] intensity units) is a floor for pixels that
  never vary in the OK set (sensor noise is not a defect); the relative one (``tolerance_rel``) is a
  multiple of how much the pixel varies in OK crops (edges vary more than flat ink).

and, per location of a shallow backbone layer (``blocks.1`` of Lite2, stride 4) run on the crop scaled
to a quarter of the model's size (``feature_scale``; so 16 x 16 locations at 256 px):

* the **feature mean** and **feature variance** over the OK crops (a diagonal Gaussian per location;
  the variance has a floor, ``feature_floor`` times the channel's variance over all locations, so a
  model built from one template, see :mod:`pipeline.pairs`, is usable too).

**What is normal is not flagged.**

* *Illumination:* before comparing, the crop's brightness and contrast are matched to the mean image
  (one gain and offset per crop: the crop's mean and standard deviation over all pixels and channels
  are set to the mean image's). A 10 % brighter crop is the same crop.
* *Small misalignment:* each pixel is compared with the tolerance band of every reference pixel within
  ``search_px`` (default 2) pixels at the model's resolution: the upper bound is the maximum of the band's
  upper edge over that window, the lower bound the minimum of its lower edge (a grey-value dilation and
  erosion). A crop shifted by up to 2 px stays inside. The feature deviation takes the minimum over the
  reference locations within one feature cell.

**Anomaly map.** ``pixel = max over channels of (x - upper)+ + (lower - x)+``, divided by
``tolerance_abs`` (so 1 means one absolute tolerance outside the band); ``feature = sqrt(mean over
channels of (f - mean)^2 / variance) - 1``, the per-location z-distance beyond one OK spread (0 when
within), upsampled to the image. The map is ``pixel + feature``, smoothed by a Gaussian of ``map_sigma``
pixels (default 0: a defect of a few pixels keeps its full height); the image score is its maximum.

**Calibration sees what is normal.** The held-out OK crops that set the threshold (and, in a fusion,
the member's scale) are joined by copies of each moved by 2 px diagonally both ways and copies 10 %
brighter and darker (:func:`normal_variants`): the model promises not to flag these, so its threshold
is set above them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import cv2
import numpy as np
import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import TimmFeatureExtractor
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional as F

from defectscan.pipeline.backbone import trim_unused_stages
from defectscan.pipeline.blur import gaussian

FEATURE_MARGIN = 1.0  # z-distances up to one OK spread add nothing to the map
NORMAL_SHIFTS_PX = ((2, 2), (-2, -2), (2, -2), (-2, 2))  # crop pixels; see normal_variants
NORMAL_GAINS = (1.1, 0.9)

Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


class VariationNet(nn.Module):
    """Per-pixel tolerance band plus per-location feature Gaussian. It compares pixels, so it takes
    [0, 1] pixels, not the backbone's normalised input (``takes_pixels``); training batches are the
    normalised ones every method gets (:func:`fit_variation` turns them back)."""

    takes_pixels = True

    def __init__(
        self,
        backbone: str,
        layer: str,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        tolerance_abs: float = 0.06,
        tolerance_rel: float = 3.0,
        search_px: int = 2,
        map_sigma: float = 0.0,
        feature_floor: float = 0.05,
        feature_scale: float = 0.25,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.tolerance_abs = tolerance_abs
        self.tolerance_rel = tolerance_rel
        self.search_px = search_px
        self.feature_floor = feature_floor
        self.feature_extractor = trim_unused_stages(
            TimmFeatureExtractor(backbone=backbone, pre_trained=False, layers=[layer])
        )
        info = self.feature_extractor.feature_extractor.feature_info
        channels, stride = info.channels()[-1], info.reduction()[-1]
        self.feature_size = max(stride, round(image_size * feature_scale / stride) * stride)
        cells = self.feature_size // stride
        self.image_mean: torch.Tensor
        self.image_std: torch.Tensor
        self.mu: torch.Tensor
        self.spread_up: torch.Tensor
        self.spread_down: torch.Tensor
        self.feature_mean: torch.Tensor
        self.feature_var: torch.Tensor
        self.register_buffer("image_mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(std).view(1, 3, 1, 1))
        self.register_buffer("mu", torch.zeros(1, 3, image_size, image_size))
        self.register_buffer("spread_up", torch.zeros(1, 3, image_size, image_size))
        self.register_buffer("spread_down", torch.zeros(1, 3, image_size, image_size))
        self.register_buffer("upper", torch.ones(1, 3, image_size, image_size))
        self.register_buffer("lower", torch.zeros(1, 3, image_size, image_size))
        self.register_buffer("feature_mean", torch.zeros(1, channels, cells, cells))
        self.register_buffer("feature_var", torch.ones(1, channels, cells, cells))
        self.blur = gaussian(map_sigma) if map_sigma > 0 else None

    # -- the pieces of the map -------------------------------------------------------------------

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised backbone input back to [0, 1] pixels."""
        return x * self.image_std + self.image_mean

    def match_brightness(self, pixels: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """Each crop's mean and contrast set to the reference's (one gain and offset per crop)."""
        s, m = _std_mean(pixels)
        rs, rm = _std_mean(self.mu if reference is None else reference)
        gain = (rs / s.clamp_min(1e-4)).clamp(0.5, 2.0)
        return torch.addcmul(rm - m * gain, pixels, gain)  # (pixels - m) * gain + rm, in one pass

    def set_bands(self) -> None:
        """The shift-tolerant band, from ``mu`` and the spreads (kept as buffers: fixed once fitted)."""
        k = 2 * self.search_px + 1
        upper = self.mu + self.tolerance_abs + self.tolerance_rel * self.spread_up
        lower = self.mu - self.tolerance_abs - self.tolerance_rel * self.spread_down
        if self.search_px:
            upper = F.max_pool2d(upper, k, stride=1, padding=self.search_px)
            lower = -F.max_pool2d(-lower, k, stride=1, padding=self.search_px)
        self.upper, self.lower = upper, lower

    def pixel_excess(self, pixels: torch.Tensor) -> torch.Tensor:
        """How far each pixel lies outside the band, in absolute tolerances."""
        # lower <= upper: the distance to the band is the distance to the pixel clamped into it
        excess = (pixels - pixels.clamp(self.lower, self.upper)).abs_().amax(1, keepdim=True)
        return excess / self.tolerance_abs

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The feature layer on the [0, 1] image scaled to ``feature_size`` (the early layers'
        full-resolution cost is most of a backbone's time on CPU; the pixel comparison keeps the fine
        detail). Scaled first, then normalised: both are linear, and the small image is cheaper."""
        if pixels.shape[-1] != self.feature_size:
            pixels = F.interpolate(pixels, size=(self.feature_size,) * 2, mode="bilinear", antialias=True)
        return self.feature_extractor(self.to_input(pixels))[self.layer]

    def feature_distance(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-location z-distance to the feature Gaussian, the best over the neighbouring cells."""
        floor = self.feature_floor * self.feature_mean.var(dim=(2, 3), keepdim=True) + 1e-6
        var = self.feature_var + floor
        h, w = feats.shape[-2:]
        mean_p = F.pad(self.feature_mean, (1, 1, 1, 1), mode="replicate")
        var_p = F.pad(var, (1, 1, 1, 1), mode="replicate")
        best = None
        for dy in range(3):
            for dx in range(3):
                diff = feats - mean_p[..., dy : dy + h, dx : dx + w]
                d = (diff * diff / var_p[..., dy : dy + h, dx : dx + w]).mean(1, keepdim=True)
                best = d if best is None else torch.minimum(best, d)
        assert best is not None
        return (best.sqrt() - FEATURE_MARGIN).clamp_min(0)

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels to the backbone's normalised input."""
        return (pixels - self.image_mean) / self.image_std

    def forward(self, x: torch.Tensor) -> InferenceBatch:
        """Maps for a batch of [0, 1] pixels (not the backbone's normalised input: see
        ``takes_pixels``)."""
        pixels = self.match_brightness(x.float())
        pixel = self.pixel_excess(pixels)
        feature = F.interpolate(
            self.feature_distance(self.features(pixels).float()),
            size=x.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        amap = pixel + feature
        if self.blur is not None:
            amap = self.blur(amap)
        return InferenceBatch(pred_score=amap.amax(dim=(1, 2, 3)), anomaly_map=amap)


@torch.no_grad()
def fit_variation(net: VariationNet, batches: Batches) -> dict[str, float]:
    """Fill the model's statistics from weighted OK batches (three passes; only one runs the backbone).

    1. the plain weighted mean image, the brightness reference for step 2;
    2. the mean of the brightness-matched crops (the stored ``mu``), and the feature mean and variance
       (over each crop and two copies moved by random whole-pixel shifts within ``search_px``);
    3. the spreads above and below ``mu`` of the crops matched to it.
    """
    net.eval()
    total = 0.0
    plain = torch.zeros_like(net.mu)
    for x, w in batches():
        plain += (net.to_unit(x) * w.view(-1, 1, 1, 1)).sum(0, keepdim=True)
        total += float(w.sum())
    plain /= total
    mu = torch.zeros_like(net.mu)
    f_sum = torch.zeros_like(net.feature_mean)
    f_sq = torch.zeros_like(net.feature_mean)
    f_total = 0.0
    shifts = torch.Generator().manual_seed(0)
    for x, w in batches():
        ww = w.view(-1, 1, 1, 1).to(x)
        matched = net.match_brightness(net.to_unit(x), plain)
        mu += (matched * ww).sum(0, keepdim=True)
        # the feature reference also sees each crop moved within the search window, so its spread
        # covers the misregistration the pixel comparison tolerates
        for dy, dx in [
            (0, 0),
            *torch.randint(-net.search_px, net.search_px + 1, (2, 2), generator=shifts).tolist(),
        ]:
            feats = net.features(_shifted(matched, dx, dy)).float()
            f_sum += (feats * ww).sum(0, keepdim=True)
            f_sq += (feats * feats * ww).sum(0, keepdim=True)
            f_total += float(w.sum())
    net.mu = mu / total
    net.feature_mean = f_sum / f_total
    net.feature_var = (f_sq / f_total - net.feature_mean**2).clamp_min(0)
    up = torch.zeros_like(net.mu)
    down = torch.zeros_like(net.mu)
    for x, w in batches():
        ww = w.view(-1, 1, 1, 1).to(x)
        dev = net.match_brightness(net.to_unit(x)) - net.mu
        up += (dev.clamp_min(0) ** 2 * ww).sum(0, keepdim=True)
        down += (dev.clamp_max(0) ** 2 * ww).sum(0, keepdim=True)
    net.spread_up = (up / total).sqrt()
    net.spread_down = (down / total).sqrt()
    net.set_bands()
    return {"samples_weight": total, "feature_channels": float(net.feature_mean.shape[1])}


def _std_mean(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the standard deviation (unbiased) and mean over all pixels and channels, shaped
    ``(B, 1, 1, 1)``: ``torch.std_mean`` over the same values, from a sum and a norm (on a CPU,
    ``std_mean`` over three dimensions took 16 times longer)."""
    flat = images.flatten(1)
    n = flat.shape[1]
    mean = flat.mean(1)
    square = torch.linalg.vector_norm(flat, dim=1).square()
    var = ((square - n * mean * mean) / max(n - 1, 1)).clamp_min(0)
    return var.sqrt().view(-1, 1, 1, 1), mean.view(-1, 1, 1, 1)


def _shifted(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Images moved by whole pixels, the uncovered border repeated from the edge."""
    if dx == 0 and dy == 0:
        return images
    pad = max(abs(dx), abs(dy))
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    h, w = images.shape[-2:]
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def normal_variants(crops: list[NDArray[np.uint8]]) -> list[NDArray[np.uint8]]:
    """Each crop, moved by +-2 px and relit by +-10 %: variations the model must call normal."""
    out = list(crops)
    for crop in crops:
        h, w = crop.shape[:2]
        for dx, dy in NORMAL_SHIFTS_PX:
            matrix = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
            out.append(np.asarray(cv2.warpAffine(crop, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)))
        for gain in NORMAL_GAINS:
            out.append(np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return out
