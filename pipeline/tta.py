"""Test-time augmentation: views of a batch, and the inverse that maps each view's anomaly map back.

Geometric views (``hflip``, ``vflip``, ``rot180``) move pixels, so their anomaly maps are flipped back
before they are combined; photometric views (``bright``, ``dark``: gain 1.1 and 0.9 on [0, 1]
images) move none, and their inverse is the identity. All views of a batch go through the network in
one batch, view-major: ``[view0 of every image, view1 of every image, ...]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from defectscan.pipeline.model_config import DEFAULT_VIEWS, GEOMETRIC, PHOTOMETRIC, VIEWS, check_views

__all__ = [
    "DEFAULT_VIEWS",
    "GEOMETRIC",
    "PHOTOMETRIC",
    "VIEWS",
    "apply",
    "check_views",
    "expand",
    "invert",
    "merge",
]


def apply(view: str, images: torch.Tensor) -> torch.Tensor:
    """One view of a batch of [0, 1] images ``(B, C, H, W)``."""
    if view == "identity":
        return images
    if view == "hflip":
        return images.flip(-1)
    if view == "vflip":
        return images.flip(-2)
    if view == "rot180":
        return images.flip(-1, -2)
    return (images * PHOTOMETRIC[view]).clamp(0.0, 1.0)


def invert(view: str, maps: torch.Tensor) -> torch.Tensor:
    """Map a view's anomaly maps ``(B, 1, H, W)`` back to the original image's frame."""
    if view in PHOTOMETRIC:
        return maps
    return apply(view, maps) if view != "identity" else maps


def expand(images: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """All views of ``images`` in one batch, view-major."""
    return torch.cat([apply(v, images) for v in views], dim=0)


def merge(maps: torch.Tensor, views: Sequence[str], reduce: str = "mean") -> torch.Tensor:
    """Invert each view's maps and combine them: ``(V*B, 1, H, W)`` -> ``(B, 1, H, W)``."""
    per_view = maps.chunk(len(views), dim=0)
    aligned = torch.stack([invert(v, m) for v, m in zip(views, per_view, strict=True)], dim=0)
    if reduce == "mean":
        return aligned.mean(dim=0)
    if reduce == "max":
        return aligned.amax(dim=0)
    raise ValueError(f"unknown TTA reduction {reduce!r}; use mean or max")


def merge_scores(scores: torch.Tensor, views: Sequence[str], reduce: str = "mean") -> torch.Tensor:
    """Combine per-view image scores ``(V*B,)`` -> ``(B,)``."""
    stacked = scores.reshape(len(views), -1)
    return stacked.mean(dim=0) if reduce == "mean" else stacked.amax(dim=0)
