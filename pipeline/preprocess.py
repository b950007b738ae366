"""Crops into network input: resized to the model's square size and scaled to [0, 1] (one rule for the
anomaly model and the pair comparer), then normalised with the backbone's mean and std.

Shrinking uses area averaging (no aliasing of fine print); enlarging, bilinear interpolation. A model
with ``intensity="standardised"`` sees each crop stretched to one mean and spread (:func:`standardised`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from numpy.typing import NDArray


def resized(image: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """``image`` at ``size`` x ``size``."""
    shrink = min(image.shape[:2]) > size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(image, (size, size), interpolation=interpolation), np.uint8)


def pixel_batch(images: Sequence[NDArray[np.uint8]], size: int, device: torch.device) -> torch.Tensor:
    """RGB uint8 images (any sizes) as one ``(B, 3, size, size)`` float batch in [0, 1] on ``device``."""
    stacked = np.stack([resized(img, size) for img in images])
    return torch.from_numpy(stacked).to(device).permute(0, 3, 1, 2).float().div_(255.0)


STANDARD_MEAN = 0.5
STANDARD_STD = 0.25  # of the [0, 1] range: 64 grey levels; a wider spread lifts faint lines (benchmarks)


def standardised(batch: torch.Tensor) -> torch.Tensor:
    """Each image of a [0, 1] batch ``(B, C, H, W)`` shifted and scaled to mean :data:`STANDARD_MEAN` and
    standard deviation :data:`STANDARD_STD` over all its pixels and channels (one gain and offset per
    image, so grey stays grey and hues keep their order), clipped to [0, 1]. Exposure and gain between
    crops vanish, faint marks gain contrast; a crop that is as a whole too light or too dark does not
    stand out any more."""
    flat = batch.flatten(1)
    mean = flat.mean(1).view(-1, 1, 1, 1)
    std = flat.std(1).clamp_min(1e-3).view(-1, 1, 1, 1)
    return ((batch - mean) / std * STANDARD_STD + STANDARD_MEAN).clamp_(0.0, 1.0)


class Normaliser:
    """The backbone's input normalisation: ``(x - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch - self.mean) / self.std
