"""TTA views: each inverse undoes its view, and merging realigns maps before combining them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from defectscan.pipeline import tta


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(tta.GEOMETRIC),
    st.integers(1, 3),
    st.integers(2, 9),
    st.integers(2, 9),
    st.integers(0, 99),
)
def test_inverse_undoes_each_geometric_view(view: str, b: int, h: int, w: int, seed: int) -> None:
    maps = torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(tta.invert(view, tta.apply(view, maps)), maps)


def test_photometric_views_keep_geometry_and_clip() -> None:
    images = torch.tensor([[[[0.0, 0.5, 0.95]]]])
    assert torch.allclose(tta.apply("bright", images), torch.tensor([[[[0.0, 0.55, 1.0]]]]))
    assert torch.allclose(tta.apply("dark", images), images * 0.9)
    assert torch.equal(tta.invert("bright", images), images)


def test_merge_realigns_before_averaging() -> None:
    # A "network" whose map marks one pixel: after inverting each view, all views agree on it.
    images = torch.zeros(2, 1, 4, 5)
    images[0, 0, 1, 3] = 1.0
    images[1, 0, 2, 0] = 1.0
    views = tta.check_views(["hflip", "vflip", "rot180", "bright"])
    merged = tta.merge(tta.expand(images, views), views, "mean")
    assert merged.shape == images.shape
    assert torch.equal(merged > 0.9, images > 0.5)


def test_max_and_mean_differ_only_in_reduction() -> None:
    maps = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)])
    views = ("identity", "bright")
    assert torch.equal(tta.merge(maps, views, "mean"), torch.full((1, 1, 2, 2), 2.0))
    assert torch.equal(tta.merge(maps, views, "max"), torch.full((1, 1, 2, 2), 3.0))
    assert torch.equal(tta.merge_scores(torch.tensor([1.0, 5.0, 3.0, 1.0]), views), torch.tensor([2.0, 3.0]))


def test_views_are_checked_and_identity_first() -> None:
    assert tta.check_views(["vflip", "identity", "vflip"]) == ("identity", "vflip")
    with pytest.raises(ValueError, match="unknown TTA views"):
        tta.check_views(["spin"])
