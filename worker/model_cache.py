"""Models for the workers: ``PRODUCT@latest`` resolved to a fixed version, fetched once, cached by version.

**Locations.** A model is a directory (local, or a prefix in storage) written by
:meth:`pipeline.model.AnomalyModel.save`. ``<models>/<product>@latest`` reads ``<models>/<product>/LATEST``
(the promoted version id) and means ``<models>/<product>/<version>/``; ``<models>/<product>@<version>``
names a version directly. :func:`resolve_model` returns the pinned directory and its version; the
producer writes both into ``batch.json``, so a batch never changes model half-way.

**Cache.** Each worker process loads a model lazily, on its first task (Celery's
``worker_process_init`` has a 4 s limit), and keeps the last ``maxsize`` versions (LRU). A model in
storage is downloaded into ``$DEFECTSCAN_CACHE`` (default ``~/.cache/defectscan/models``), each file
written whole, and loaded from there; a directory whose ``model.json`` names another version than the
pinned one is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from defectscan.pipeline.errors import ModelFormatError, ModelNotFoundError
from defectscan.pipeline.model_doc import ModelDoc
from defectscan.pipeline.saved_model import MODEL_FILES, MODEL_JSON, parse_doc

if TYPE_CHECKING:
    from defectscan.pipeline.model import AnomalyModel
    from defectscan.pipeline.runtime import Runtime

from defectscan.worker.registry import Registry, registry_location
from defectscan.worker.settings import runtime_cache, settings
from defectscan.worker.storage import LocalStorage, Storage, is_remote, open_storage


def _split(location: str) -> tuple[str, str | None]:
    head, sep, tag = location.rstrip("/").rpartition("@")
    return (head, tag) if sep and "/" not in tag else (location.rstrip("/"), None)


def configured_runtime(runtime: str | None = None) -> Runtime:
    """Where this process runs the networks: ``runtime`` (``--runtime``) or ``DEFECTSCAN_RUNTIME``,
    resolved for its device, compiled networks kept in :func:`worker.settings.runtime_cache`."""
    from defectscan.pipeline.runtime import Runtime, resolve  # torch: only where a model is used
    from defectscan.pipeline.scoring import device

    return Runtime(resolve(runtime or settings().runtime, device().type), runtime_cache())


def model_doc(store: Storage, where: str) -> ModelDoc:
    """The ``model.json`` of the model directory ``store`` (``where`` names it in errors)."""
    try:
        data = store.get(MODEL_JSON)
    except Exception as exc:
        raise ModelNotFoundError(where, f"no model here ({exc})") from None
    return parse_doc(data, f"{where}/{MODEL_JSON}")


def registry_version(location: str) -> tuple[Registry, str, str] | None:
    """``(registry, product, version)`` for ``<models>/PRODUCT@latest`` or ``@VERSION`` (a bare
    ``PRODUCT@...`` goes through ``DEFECTSCAN_REGISTRY``), with ``latest`` resolved; None for a
    directory."""
    if "@" in location and "/" not in location:  # PRODUCT@latest: through the registry
        location = f"{registry_location()}/{location}"
    base, tag = _split(location)
    if tag is None:
        return None
    root, _, product = base.rpartition("/")
    registry = Registry(root)
    if tag == "latest":
        promoted = registry.latest(product)
        if promoted is None:
            raise ModelNotFoundError(location, f"no {base}/LATEST: no version has been promoted")
        tag = promoted
    return registry, product, tag


def resolve_model(location: str) -> tuple[str, str]:
    """``(model directory location, version)`` for a directory or a registry version
    (:func:`registry_version`)."""
    pinned = registry_version(location)
    tag = pinned[2] if pinned else None
    base = pinned[0].model_location(pinned[1], pinned[2]) if pinned else location.rstrip("/")
    doc = model_doc(open_storage(base), base)
    version = doc.version
    if tag is not None and version != tag:
        raise ModelFormatError(f"{base}/model.json", f"holds version {version}, not {tag}")
    return base, version


class ModelCache:
    """The last ``maxsize`` models this process used, by (location, version)."""

    def __init__(self, maxsize: int = 2, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.maxsize = maxsize
        default = settings().cache / "models"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default
        self._models: OrderedDict[tuple[str, str], AnomalyModel] = OrderedDict()
        self.loads = 0

    def get(self, location: str, version: str) -> AnomalyModel:
        key = (location, version)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        from defectscan.pipeline.model import AnomalyModel  # torch: only where a model is used

        model = AnomalyModel.load(self._local(location, version)).use_runtime(configured_runtime())
        if model.version != version:
            raise ModelFormatError(location, f"holds version {model.version}, not {version}")
        self.loads += 1
        self._models[key] = model
        while len(self._models) > self.maxsize:
            self._models.popitem(last=False)
        return model

    def _local(self, location: str, version: str) -> Path:
        if not is_remote(location):
            return Path(location)
        digest = hashlib.sha256(f"{location}@{version}".encode()).hexdigest()[:24]
        target = LocalStorage(self.cache_dir / digest)
        if target.exists(MODEL_JSON):
            return target.root
        source = open_storage(location)
        if not source.exists(MODEL_JSON):
            raise ModelNotFoundError(location, "no model.json: not a defectscan model directory")
        for name in MODEL_FILES:
            if source.exists(name):  # model.json last: its presence marks a complete download
                target.put(name, source.get(name))
        return target.root
