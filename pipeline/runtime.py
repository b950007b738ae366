"""Where a model's feature extractor runs: PyTorch as it is, or compiled by OpenVINO on the CPU.

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


@contextmanager
def extractor_swapped(net: nn.Module, runner: nn.Module | None) -> Iterator[None]:
    """``net`` running ``runner`` as its feature extractor inside the block (its own is put back after:
    the saved state stays torch's); nothing changes with ``runner`` None."""
    if runner is None:
        yield
        return
    original = net._modules["feature_extractor"]
    net._modules["feature_extractor"] = runner
    try:
        yield
    finally:
        net._modules["feature_extractor"] = original


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
