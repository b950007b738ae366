"""Crops into network input: the per-crop intensity standardisation."""

from __future__ import annotations

import numpy as np
import torch

from defectscan.pipeline.preprocess import STANDARD_MEAN, STANDARD_STD, pixel_batch, standardised


def _texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = rng.uniform(90, 130, (64, 80))  # no tail for the clipping to cut
    return np.repeat(grey[..., None], 3, 2).astype(np.uint8)


def test_each_crop_gets_one_mean_and_spread_and_grey_stays_grey() -> None:
    batch = standardised(pixel_batch([_texture(0), _texture(1) // 2], 64, torch.device("cpu")))
    flat = batch.flatten(1)
    assert torch.allclose(flat.mean(1), torch.full((2,), STANDARD_MEAN), atol=0.01)
    assert torch.allclose(flat.std(1), torch.full((2,), STANDARD_STD), atol=0.01)
    assert torch.equal(batch[:, 0], batch[:, 1]) and torch.equal(batch[:, 1], batch[:, 2])


def test_exposure_and_gain_between_crops_vanish_but_a_mark_stays() -> None:
    crop = _texture(2)
    exposed = np.clip(crop.astype(np.float32) * 0.8 + 5, 0, 255).round().astype(np.uint8)
    marked = crop.copy()
    marked[30:32, 10:60] = 60  # a dark line, 2 px
    a, b, c = standardised(pixel_batch([crop, exposed, marked], 64, torch.device("cpu")))
    assert float((a - b).abs().mean()) < 0.015 and float((a - b).abs().max()) < 0.06  # rounding only
    assert float((a - c).abs().amax(dim=(0, 2))[30:32].min()) > 0.2
    raw = pixel_batch([crop, exposed], 64, torch.device("cpu"))
    assert float((raw[0] - raw[1]).abs().mean()) > 0.05  # as-is, the exposure is plain to see
