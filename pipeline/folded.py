"""An inference-only copy of a feature extractor with batch norm folded into its convolutions.

In eval mode a batch norm after a convolution is an affine map per channel, so it can be multiplied
into the convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``): one pass over
the activations instead of two. The copy pairs each ``Conv2d`` with the ``BatchNorm2d`` registered right
after it in the same module (the order timm's EfficientNet and ResNet blocks run them in); a timm
``BatchNormAct2d`` keeps its activation. The copy is checked against the original on a probe batch and
discarded if the two differ beyond float rounding, so an architecture that does not run its layers in
that order is scored unfolded, never wrongly. The model's saved state dict stays anomalib's: the copy
serves scoring only.
"""

from __future__ import annotations

import copy
import logging
from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger("defectscan.folded")
TOLERANCE = 1e-3  # relative to each output's largest magnitude


def folded_copy(extractor: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    """``extractor`` with batch norm folded into its convolutions (a copy, in eval mode), or None when
    nothing folds or the copy does not give the original's outputs on ``probe``."""
    folded = copy.deepcopy(extractor).eval()
    pairs = 0
    for parent in list(folded.modules()):
        names = list(parent._modules)
        for first, second in pairwise(names):
            conv, norm = parent._modules[first], parent._modules[second]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(norm, nn.BatchNorm2d)
                and norm.num_features == conv.out_channels
                and norm.track_running_stats
            ):
                parent._modules[first] = fuse_conv_bn_eval(conv, norm)
                parent._modules[second] = _after_norm(norm)
                pairs += 1
    if not pairs:
        return None
    with torch.no_grad():
        want, got = _outputs(extractor.eval(), probe), _outputs(folded, probe)
    worst = max(
        float((a - b).abs().max()) / max(float(a.abs().max()), 1e-6) for a, b in zip(want, got, strict=True)
    )
    if worst > TOLERANCE:
        log.warning("folding batch norm changed the features (%.2g relative); scoring unfolded", worst)
        return None
    return folded


def _after_norm(norm: nn.BatchNorm2d) -> nn.Module:
    """What runs after a folded batch norm: timm's ``BatchNormAct2d`` applies dropout and an activation."""
    act, drop = getattr(norm, "act", None), getattr(norm, "drop", None)
    parts = [m for m in (drop, act) if isinstance(m, nn.Module)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def _outputs(module: nn.Module, probe: torch.Tensor) -> list[torch.Tensor]:
    out = module(probe)
    if isinstance(out, dict):
        return [v.float() for v in out.values()]
    if isinstance(out, list | tuple):
        return [v.float() for v in out]
    return [out.float()]
