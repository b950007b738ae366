"""Fast coreset selection: as good a cover as the exact greedy, deterministic."""

from __future__ import annotations

import torch
from anomalib.models.components import KCenterGreedy

from defectscan.pipeline.coreset import k_center_greedy


def _clustered(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(60, 64, generator=g) * 3
    return centres[torch.randint(0, 60, (n,), generator=g)] + torch.randn(n, 64, generator=g)


def _radius(points: torch.Tensor, idx: torch.Tensor) -> tuple[float, float]:
    d = torch.cdist(points, points[idx]).amin(1)
    return float(d.max()), float(d.mean())


def test_cover_matches_the_exact_greedy() -> None:
    points = _clustered(4000, 0)
    ours = k_center_greedy(points, 200)
    exact = torch.as_tensor(KCenterGreedy(points, 200 / 4000).select_coreset_idxs())
    assert len(set(ours.tolist())) == 200
    (ours_max, ours_mean), (exact_max, exact_mean) = _radius(points, ours), _radius(points, exact)
    assert ours_max <= exact_max * 1.1 and ours_mean <= exact_mean * 1.1


def test_deterministic() -> None:
    points = _clustered(2000, 2)
    assert torch.equal(k_center_greedy(points, 100), k_center_greedy(points, 100))
