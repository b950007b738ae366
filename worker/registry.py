"""The model registry in storage: versions per product, and the promoted one.

Layout under the registry root (``DEFECTSCAN_REGISTRY``, e.g. ``s3://bucket/models``, or ``--registry``)::

    <product>/<version>/    model.json, model.safetensors, reference.png, regions.png,
                            metrics.json, MODEL_CARD.md
    <product>/LATEST        the promoted version id

Version ids are ``<UTC time to the second>-<6 hex>`` (:func:`pipeline.model_doc.new_version_id`), so they
sort by time and two trainings in the same second still differ. A version is published by copying its
files with ``model.json`` last: a version folder without ``model.json`` is incomplete and not listed.
Promotion rewrites ``LATEST`` (one whole object); batches resolve ``@latest`` once, when they are
enqueued, so a promotion never changes a running batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from defectscan.pipeline.errors import InvalidArgumentError, ModelNotFoundError, NotFoundError
from defectscan.pipeline.model_doc import ModelDoc
from defectscan.pipeline.saved_model import MODEL_CARD, MODEL_JSON, doc_files, parse_doc, read_doc
from defectscan.worker.settings import settings
from defectscan.worker.storage import Storage, join_key, open_storage

REGISTRY_ENV = "DEFECTSCAN_REGISTRY"
METRICS = "metrics.json"


@dataclass(frozen=True)
class VersionInfo:
    version: str
    method: str
    created_at: str
    metrics: dict[str, object]
    latest: bool


def registry_location(explicit: str | None = None) -> str:
    location = explicit or settings().registry
    if not location:
        raise InvalidArgumentError("registry", f"no registry: give --registry or set {REGISTRY_ENV}")
    return location.rstrip("/")


class Registry:
    def __init__(self, location: str) -> None:
        self.location = location.rstrip("/")
        self.store: Storage = open_storage(self.location)

    def model_location(self, product: str, version: str) -> str:
        return f"{self.location}/{join_key(product, version)}"

    def latest(self, product: str) -> str | None:
        key = join_key(product, "LATEST")
        if not self.store.exists(key):
            return None
        return self.store.get(key).decode().strip() or None

    def products(self) -> list[str]:
        """The products that have anything stored, sorted."""
        return sorted(folder.rstrip("/").rsplit("/", 1)[-1] for folder in self.store.folders())

    def require(self, product: str) -> None:
        """Raise :class:`NotFoundError` unless ``product`` has anything in this registry, saying whether
        the registry itself holds nothing (a wrong --registry) or which products it holds."""
        known = self.products()
        if not known:
            raise NotFoundError(
                self.location, f"no registry here (nothing stored): check --registry or {REGISTRY_ENV}"
            )
        if product not in known:
            raise NotFoundError(product, f"no such product in {self.location} (products: {', '.join(known)})")

    def versions(self, product: str) -> list[VersionInfo]:
        """Every complete version of ``product``, oldest first."""
        latest = self.latest(product)
        out = []
        for folder in self.store.folders(join_key(product)):
            version = folder.rstrip("/").rsplit("/", 1)[-1]
            key = join_key(product, version)
            if not self.store.exists(f"{key}/{MODEL_JSON}"):
                continue
            doc = parse_doc(self.store.get(f"{key}/{MODEL_JSON}"), f"{product}@{version}")
            metrics_key = f"{key}/{METRICS}"
            metrics = json.loads(self.store.get(metrics_key)) if self.store.exists(metrics_key) else {}
            out.append(VersionInfo(version, doc.config.method, doc.created_at, metrics, version == latest))
        return sorted(out, key=lambda v: v.version)

    def publish(self, product: str, model_dir: Path, metrics: dict[str, object], card: str) -> str:
        """Copy a saved model with its metrics and card to ``<product>/<version>/``; the version."""
        version = read_doc(model_dir).version
        base = join_key(product, version)
        self.store.put(
            f"{base}/{METRICS}", (json.dumps(metrics, indent=2) + "\n").encode(), "application/json"
        )
        self.store.put(f"{base}/{MODEL_CARD}", card.encode(), "text/markdown")
        for path in sorted(model_dir.iterdir()):
            if path.is_file() and path.name not in (MODEL_JSON, MODEL_CARD):
                self.store.put(f"{base}/{path.name}", path.read_bytes())
        self.store.put(f"{base}/{MODEL_JSON}", (model_dir / MODEL_JSON).read_bytes(), "application/json")
        return version

    def derive(self, product: str, version: str, doc: ModelDoc) -> str:
        """Publish ``doc`` (a new version's ``model.json``, e.g. a new operating point) with the files of
        ``version`` (weights, pictures, metrics) copied beside it; the new version. Nothing is promoted:
        batches that pinned ``version`` keep it."""
        source, new = join_key(product, version), doc.version
        target = join_key(product, new)
        if not self.store.exists(f"{source}/{MODEL_JSON}"):
            raise ModelNotFoundError(f"{product}@{version}", "no such version")
        for obj in self.store.objects(source):
            name = obj.key.rsplit("/", 1)[-1]
            if name not in (MODEL_JSON, MODEL_CARD):
                self.store.put(f"{target}/{name}", self.store.get(obj.key))
        for name, data, content_type in doc_files(doc):
            self.store.put(f"{target}/{name}", data, content_type)
        return new

    def promote(self, product: str, version: str) -> None:
        if not self.store.exists(join_key(product, version, MODEL_JSON)):
            known = ", ".join(v.version for v in self.versions(product)) or "none"
            raise ModelNotFoundError(f"{product}@{version}", f"no such version (known: {known})")
        self.store.put(join_key(product, "LATEST"), f"{version}\n".encode(), "text/plain")
