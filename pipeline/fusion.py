"""Fusion of methods, e.g. ``patchcore+variation``: one model whose members each score every crop.

**Rule.** Each member's anomaly map is put on a common scale by that member's own distribution on the
held-out OK crops: ``z = (map - loc) / scale``, where ``loc`` and ``scale`` are the mean and standard
deviation of the member's image scores (map maxima) over the held-out OK crops. A pixel at ``z = 3`` is
three OK-spreads above what an OK crop's worst pixel usually reaches, whichever member says so. The
fused map is the mean of the members' ``z`` maps (``fusion="max"`` takes the maximum instead); every map
is at the same network resolution and the result is resized to the crop's own size like any other map.
The fused image score is the maximum of the fused map, calibrated like a single method's.

Each member sees the TTA views it can use: flipped views are for PatchCore (trained with them); the
variation model compares aligned pixels, so it takes only the identity and photometric views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from pipeline import tta


class FusedNet(nn.Module):
    """Members by name, and each member's location and scale on held-out OK crops."""

    def __init__(self, members: dict[str, nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.loc: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("loc", torch.zeros(len(members)))
        self.register_buffer("scale", torch.ones(len(members)))

    def set_normalisation(self, ok_scores: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
        """Set each member's ``loc`` and ``scale`` from its held-out OK image scores."""
        out = {}
        for i, name in enumerate(self.members):
            scores = torch.tensor(list(ok_scores[name]), dtype=torch.float64)
            loc = float(scores.mean())
            scale = float(scores.std()) if scores.numel() > 1 else 0.0
            scale = max(scale, 1e-6 * max(abs(loc), 1.0))
            self.loc[i], self.scale[i] = loc, scale
            out[name] = {"loc": loc, "scale": scale}
        return out

    def combine(self, maps: Sequence[torch.Tensor], reduce: str = "mean") -> torch.Tensor:
        """Normalise each member's maps ``(B, 1, H, W)`` and combine them."""
        z = torch.stack([(m - self.loc[i]) / self.scale[i] for i, m in enumerate(maps)])
        return z.mean(0) if reduce == "mean" else z.amax(0)


def member_views(name: str, views: Sequence[str]) -> tuple[str, ...]:
    """The views a member scores with: the variation model takes no flipped view."""
    if name == "variation":
        return tuple(v for v in views if v not in tta.GEOMETRIC[1:])
    return tuple(views)
