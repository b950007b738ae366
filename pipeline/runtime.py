"""Where a model's feature extractors run: PyTorch as they are, or compiled by OpenVINO on the CPU.

Rules:

* ``auto`` is OpenVINO on a CPU and torch on CUDA; ``openvino`` asked for on a CUDA process runs torch
  too (the network stays on its device). Without the ``openvino`` package, ``auto`` is torch.
* OpenVINO runs at an explicitly set FP32 precision (``INFERENCE_PRECISION_HINT``): left to itself it
  picks bf16 on CPUs that have it, and the features then move by far more than float rounding.
* The extractor is converted once, with a dynamic batch dimension (``[-1, 3, S, S]``); its IR
  (``.xml`` and ``.bin``, FP32 weights) is kept in the cache folder given, named by what it computes:
  the network's class, its weights (SHA-256 over every tensor of its state), the input size and the
  OpenVINO version. So a process that loads a model again compiles without converting, and since
  PatchCore's and PaDiM's extractors are the frozen ImageNet backbone, every model of one backbone,
  layer set and size shares one IR, in training as in inspection. It is written whole (temporary
  names, the ``.xml`` renamed last).
* It computes with as many threads as torch was given (:func:`torch.get_num_threads`, which the worker
  sets from the cores it has).
* The compiled extractor is checked against the torch one on a probe batch, as the folded copy is
  (:mod:`pipeline.folded`); an extractor that cannot be converted, compiled or matched runs in torch,
  and one log line says why.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.folded import folded_copy
from defectscan.pipeline.fusion import FusedNet
from defectscan.pipeline.model_config import RUNTIMES

log = logging.getLogger("defectscan.runtime")
TOLERANCE = 1e-3  # relative to each output's largest magnitude, as for the folded copy


@dataclass(frozen=True)
class Runtime:
    """The runtime chosen for a model: ``torch`` or ``openvino``, and where its compiled networks are
    kept (``cache``; None: converted again by every process)."""

    name: str = "torch"
    cache: Path | None = None


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(runtime: str, device_type: str) -> str:
    """The runtime that ``--runtime`` names on a device of ``device_type`` (``cpu`` or ``cuda``)."""
    if runtime not in RUNTIMES:
        raise InvalidArgumentError("--runtime", f"{runtime!r} is not one of {', '.join(RUNTIMES)}")
    if device_type != "cpu" or runtime == "torch":
        return "torch"
    if runtime == "openvino" or openvino_available():
        return "openvino"
    return "torch"


class CompiledExtractor(nn.Module):
    """An extractor compiled by OpenVINO, called as the torch one: ``(B, 3, S, S)`` in, ``{layer:
    (B, C, h, w)}`` out (CPU tensors of their own: the request's buffers are reused by the next call)."""

    def __init__(self, compiled: Any, names: list[str]) -> None:
        super().__init__()
        self.compiled = compiled
        self.names = names
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()  # one request: one inference at a time

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        data = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        with self._lock:
            out = self._request.infer(data)
            return {
                name: torch.from_numpy(out[port].copy())
                for name, port in zip(self.names, self.compiled.outputs, strict=True)
            }


def extractor_slots(net: nn.Module, image_size: int) -> list[tuple[str, int]]:
    """``(attribute, input size)`` of each feature extractor ``net`` runs: STFPM's teacher and student,
    else one ``feature_extractor`` (at the variation model's ``feature_size`` where it has one)."""
    modules = net._modules
    if isinstance(modules.get("teacher_model"), nn.Module) and isinstance(
        modules.get("student_model"), nn.Module
    ):
        return [("teacher_model", image_size), ("student_model", image_size)]
    if isinstance(modules.get("feature_extractor"), nn.Module):
        return [("feature_extractor", int(getattr(net, "feature_size", image_size)))]
    return []


def inference_net(
    net: nn.Module, image_size: int, runtime: Runtime | None, device: torch.device
) -> tuple[nn.Module, str]:
    """``net`` scoring through other copies of its feature extractors (parameters, buffers, the memory
    bank and every other module shared with ``net``): compiled by OpenVINO where ``runtime`` says so
    and they can be, else, for a network that takes normalised images, with batch norm folded
    (:mod:`pipeline.folded`); ``net`` itself where neither applies. A fused network's members each.
    Also where its extractors run: ``openvino``, ``torch``, or ``openvino+torch`` where some could not
    be compiled."""
    chosen = runtime or Runtime()
    if isinstance(net, FusedNet):
        twins = {name: inference_net(m, image_size, chosen, device) for name, m in net.members.items()}
        fused = copy.copy(net)  # shares the normalisation buffers
        fused._modules = {**net._modules, "members": nn.ModuleDict({n: t for n, (t, _) in twins.items()})}
        return fused, _where([u for _, u in twins.values()])
    runners: dict[str, nn.Module] = {}
    used = []
    for attr, size in extractor_slots(net, image_size):
        module = net._modules[attr]
        assert module is not None
        probe = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        runner: nn.Module | None = None
        if chosen.name == "openvino" and device.type == "cpu":
            what = f"{type(net).__name__.lower()}-{attr.removesuffix('_model').replace('_', '-')}"
            runner = compiled_extractor(module, size, chosen, probe, what)
        used.append("openvino" if runner is not None else "torch")
        if runner is None and attr == "feature_extractor" and not getattr(net, "takes_pixels", False):
            runner = folded_copy(module, probe.to(device))
        if runner is not None:
            runners[attr] = runner
    if not runners:
        return net, _where(used)
    twin = copy.copy(net)
    twin._modules = {**net._modules, **runners}
    return twin, _where(used)


def _where(used: list[str]) -> str:
    """``openvino``, ``torch`` or ``openvino+torch`` for the runtimes of a network's extractors."""
    parts = sorted({part for u in used for part in u.split("+")})
    return "+".join(parts) if parts else "torch"


@contextmanager
def extractors_swapped(net: nn.Module, runners: dict[str, nn.Module]) -> Iterator[None]:
    """``net`` running ``runners`` in place of its modules of the same names inside the block (its own
    are put back after: the saved state stays torch's)."""
    originals = {name: net._modules[name] for name in runners}
    net._modules.update(runners)
    try:
        yield
    finally:
        net._modules.update(originals)


def compiled_extractor(
    extractor: nn.Module, image_size: int, runtime: Runtime, probe: torch.Tensor, what: str
) -> CompiledExtractor | None:
    """``extractor`` compiled by OpenVINO (see the module docstring), or None (logged) where it cannot
    be, or gives other features than torch on ``probe``. ``what`` names the network in keys and logs."""
    try:
        import openvino as ov

        core = ov.Core()
        model = _ir(ov, core, extractor.eval(), image_size, runtime, what)
        names = [port.get_any_name() for port in model.outputs]
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        compiled = CompiledExtractor(core.compile_model(model, "CPU", config), names)
        with torch.no_grad():
            want, got = extractor(probe.cpu()), compiled(probe)
    except Exception as exc:  # conversion and compilation raise many kinds
        log.warning("OpenVINO cannot run the %s extractor (%s); it runs in torch", what, _first_line(exc))
        return None
    if not isinstance(want, dict) or list(want) != names:
        log.warning("OpenVINO's %s extractor gives other outputs than torch's; it runs in torch", what)
        return None
    worst = max(
        float((want[k].float() - got[k]).abs().max()) / max(float(want[k].abs().max()), 1e-6) for k in names
    )
    if worst > TOLERANCE:
        log.warning("OpenVINO changed the %s features (%.2g relative); it runs in torch", what, worst)
        return None
    return compiled


def _ir(ov: Any, core: Any, extractor: nn.Module, size: int, runtime: Runtime, what: str) -> Any:
    """The extractor's OpenVINO model: read from the cache, or converted (and written to it)."""
    xml = (
        runtime.cache / f"{what}-{size}-{content_key(extractor, ov.__version__)}.xml"
        if runtime.cache
        else None
    )
    if xml is not None and xml.is_file():
        return core.read_model(xml)
    with torch.no_grad():
        model = ov.convert_model(
            extractor,
            example_input=torch.zeros(1, 3, size, size),
            input=[ov.PartialShape([-1, 3, size, size])],
        )
    if xml is not None:
        xml.parent.mkdir(parents=True, exist_ok=True)
        part = xml.with_name(f"{xml.stem}.part-{os.getpid()}.xml")
        ov.save_model(model, part, compress_to_fp16=False)
        os.replace(part.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(part, xml)  # last: an .xml is there only with its weights
    return model


def content_key(module: nn.Module, *more: str) -> str:
    """24 hex digits of SHA-256 over ``module``'s state (names, shapes, dtypes and bytes) and ``more``."""
    digest = hashlib.sha256("\0".join(more).encode())
    for name, tensor in module.state_dict().items():
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
