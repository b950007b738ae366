"""Crops into network input: resized to the model's square size and scaled to [0, 1] (one rule for the
anomaly model and the pair comparer), then normalised with the backbone's mean and std.

Shrinking uses area averaging (no aliasing of fine print); enlarging, bilinear interpolation.
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


class Normaliser:
    """The backbone's input normalisation: ``(x - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch - self.mean) / self.std
