"""Fusion of methods, e.g. ``patchcore+variation``: one model whose members each score every crop.

**Normalisation.** Each member's anomaly map is put on a common scale by that member's own distribution
on the held-out OK crops: ``z = (map - loc) / scale``, where ``loc`` and ``scale`` are the mean and
standard deviation of the member's image scores (map maxima) over the held-out OK crops. A pixel at
``z = 3`` is three OK-spreads above what an OK crop's worst pixel usually reaches, whichever member
says so. Every map is at the same network resolution; the fused map is resized to the crop's own size
like any other map, its maximum is the fused score, calibrated like a single method's.

**Rule** (``fusion``). ``lead`` (the default): the first member (PatchCore, the general model) leads
and each other member adds only its confident excess, ``z_1 + sum_i max(z_i - m_i, 0)``, where the
margin ``m_i`` is twice the member's highest ``z`` on the held-out OK crops, and at least 3
(``fusion_margin``). So every held-out OK crop scores exactly as PatchCore scores it, and the variation
model speaks only well beyond anything it said about an OK crop: where it is sure, and not where the
product is not aligned enough for it. Twice, because a few dozen held-out crops do not show the tail of
all OK crops: with the margin at the held-out maximum itself, unaligned OK tiles beyond it cost 0.0013
image AUROC on magnetic_tile; at twice it, the fusion equals PatchCore there (below), while the
few-pixel defects on aligned prints of ``tests/integration/test_variation.py`` still score above every
OK crop.
``mean`` (the mean of the ``z`` maps) and ``max`` are kept for comparison.
Measured on magnetic_tile (unaligned tiles, where the variation model alone reaches only 0.70 image
AUROC), with TTA: ``lead`` 0.9073 / 0.7935, ``mean`` 0.902 / 0.791, ``max`` 0.883 / 0.772 (image / pixel
AUROC), PatchCore alone 0.9073 / 0.7935 (docs/benchmarks.md). A member that is mostly noise drags a mean
down; the lead rule keeps PatchCore's ranking and adds the variation model's few-pixel finds on
aligned prints.

Each member sees the TTA views it can use: flipped views are for PatchCore (trained with them); the
variation model compares aligned pixels, so it takes only the identity and photometric views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from defectscan.pipeline import tta

LEAD_MARGIN = 3.0
MARGIN_FACTOR = 2.0  # the lead margin is this many times a member's highest held-out OK z


class FusedNet(nn.Module):
    """Members by name, and each member's location and scale on held-out OK crops."""

    def __init__(self, members: dict[str, nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.loc: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("loc", torch.zeros(len(members)))
        self.register_buffer("scale", torch.ones(len(members)))
        self.margin: torch.Tensor
        self.register_buffer("margin", torch.full((len(members),), LEAD_MARGIN))

    def set_normalisation(
        self, ok_scores: Mapping[str, Sequence[float]], min_margin: float = LEAD_MARGIN
    ) -> dict[str, dict[str, float]]:
        """Set each member's ``loc``, ``scale`` and lead margin from its held-out OK image scores."""
        out = {}
        for i, name in enumerate(self.members):
            scores = torch.tensor(list(ok_scores[name]), dtype=torch.float64)
            loc = float(scores.mean())
            scale = float(scores.std()) if scores.numel() > 1 else 0.0
            scale = max(scale, 1e-6 * max(abs(loc), 1.0))
            margin = max(min_margin, MARGIN_FACTOR * float((scores.max() - loc) / scale))
            self.loc[i], self.scale[i], self.margin[i] = loc, scale, margin
            out[name] = {"loc": loc, "scale": scale, "margin": margin}
        return out

    def combine(self, maps: Sequence[torch.Tensor], reduce: str = "lead") -> torch.Tensor:
        """Normalise each member's maps ``(B, 1, H, W)`` and combine them (see the module docstring)."""
        z = torch.stack([(m - self.loc[i]) / self.scale[i] for i, m in enumerate(maps)])
        if reduce == "mean":
            return z.mean(0)
        if reduce == "max":
            return z.amax(0)
        margin = self.margin[1:].view(-1, *([1] * (z.dim() - 1)))
        return z[0] + (z[1:] - margin).clamp_min(0).sum(0)


def member_views(name: str, views: Sequence[str]) -> tuple[str, ...]:
    """The views a member scores with: the variation model takes no flipped view."""
    if name == "variation":
        return tuple(v for v in views if v not in tta.GEOMETRIC[1:])
    return tuple(views)
