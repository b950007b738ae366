"""A Lookout for Vision dataset into defectscan's MVTec layout, local or in S3.

Each manifest (:mod:`pipeline.lookout_manifest`) is read from its location; every line's image, and
its mask, are read from where the line points (``s3://`` or relative to the manifest) and copied:

* a normal image (``anomaly-label`` 0) to ``train/good/`` (a training manifest) or ``test/good/`` (a
  test manifest);
* an anomalous one (1) to ``test/<type>/``, its mask (the union of its anomaly classes' pixels) to
  ``ground_truth/<type>/<stem>_mask.png``; ``<type>`` is the defect type of its largest class
  (:func:`pipeline.lookout_manifest.defect_type`), ``other`` without a mask or a class that says none.

A line that is malformed, or points to an object that is missing or not an image (or a mask of another
size), is reported by manifest and line number and skipped; the import goes on. The report
(``lookout-import.json`` beside the data) lists what was taken, where it went, and what was skipped.
Image bytes are copied as they are (the format kept); file names are the source's own, numbered by
line where two would collide.
"""

from __future__ import annotations

import posixpath
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from defectscan.pipeline.errors import DefectscanError, InvalidArgumentError
from defectscan.pipeline.images import decode_image, encode_png
from defectscan.pipeline.lookout_manifest import (
    ManifestEntry,
    class_masks,
    defect_type,
    parse_manifest,
    resolve,
)
from defectscan.worker.datasets import IMAGE_SUFFIXES
from defectscan.worker.storage import Storage, StorageUnavailableError, read_location

REPORT = "lookout-import.json"
Role = Literal["train", "test"]


class Taken(BaseModel):
    manifest: str
    line: int
    source: str
    to: str
    anomalous: bool
    classes: list[str] = []
    mask: str | None = None


class Skipped(BaseModel):
    manifest: str
    line: int = Field(description="0: the manifest itself")
    reason: str


class ImportReport(BaseModel):
    schema_: Literal["defectscan.lookout-import/1"] = Field("defectscan.lookout-import/1", alias="schema")
    taken: list[Taken] = []
    skipped: list[Skipped] = []

    def to_json(self) -> bytes:
        return (self.model_dump_json(by_alias=True, indent=2) + "\n").encode()

    def count(self, folder: str) -> int:
        return sum(t.to.startswith(folder) for t in self.taken)


def import_manifests(manifests: list[tuple[str, Role]], out: Storage) -> ImportReport:
    """Copy every manifest's images (and masks) into ``out`` in the MVTec layout; the report is written
    beside them, and returned."""
    report = ImportReport()
    names: set[str] = set()
    for manifest, role in manifests:
        try:
            text = read_location(manifest).decode("utf-8")
        except StorageUnavailableError:  # the store is down: nothing to say about the manifest
            raise
        except (DefectscanError, UnicodeDecodeError) as exc:
            report.skipped.append(Skipped(manifest=manifest, line=0, reason=f"unreadable manifest ({exc})"))
            continue
        entries, problems = parse_manifest(text)
        report.skipped += [Skipped(manifest=manifest, line=p.line, reason=p.reason) for p in problems]
        for entry in entries:
            try:
                report.taken.append(_copy(entry, manifest, role, out, names))
            except StorageUnavailableError:
                raise
            except (DefectscanError, ValueError) as exc:
                report.skipped.append(Skipped(manifest=manifest, line=entry.line, reason=str(exc)))
    if not report.taken:
        out.put(REPORT, report.to_json(), "application/json")
        reasons = "; ".join(f"{s.manifest}:{s.line}: {s.reason}" for s in report.skipped[:3])
        raise InvalidArgumentError("--manifest", f"no usable image in the manifests ({reasons})")
    out.put(REPORT, report.to_json(), "application/json")
    return report


def _copy(entry: ManifestEntry, manifest: str, role: Role, out: Storage, names: set[str]) -> Taken:
    source = resolve(entry.source_ref, manifest)
    data = read_location(source)
    image = decode_image(data, source)  # an image, or the line is skipped
    name = posixpath.basename(source)
    if posixpath.splitext(name)[1].lower() not in IMAGE_SUFFIXES:  # a name that does not say: as PNG
        name, data = f"{name}.png", encode_png(image)
    mask_rgb = None
    if entry.anomalous and entry.anomaly_mask_ref:
        mask_ref = resolve(entry.anomaly_mask_ref, manifest)
        mask_rgb = decode_image(read_location(mask_ref), mask_ref)
        if mask_rgb.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"mask {mask_ref} is {mask_rgb.shape[1]}x{mask_rgb.shape[0]}, the image "
                f"{image.shape[1]}x{image.shape[0]}"
            )
    name = _unique(name, entry.line, names)
    if not entry.anomalous:
        folder = "train/good" if role == "train" else "test/good"
        out.put(f"{folder}/{name}", data)
        return Taken(
            manifest=manifest, line=entry.line, source=source, to=f"{folder}/{name}", anomalous=False
        )
    masks = class_masks(mask_rgb, entry.classes()) if mask_rgb is not None else {}
    largest = max(masks, key=lambda c: int(masks[c].sum())) if masks else None
    kind = defect_type(largest) if largest else "other"
    out.put(f"test/{kind}/{name}", data)
    taken = Taken(
        manifest=manifest,
        line=entry.line,
        source=source,
        to=f"test/{kind}/{name}",
        anomalous=True,
        classes=sorted(masks),
    )
    if masks:
        union = np.logical_or.reduce(list(masks.values()))
        key = f"ground_truth/{kind}/{posixpath.splitext(name)[0]}_mask.png"
        out.put(key, encode_png(np.dstack([union.astype(np.uint8) * 255] * 3)), "image/png")
        taken.mask = key
    return taken


def _unique(name: str, line: int, names: set[str]) -> str:
    """The source's file name, or it numbered by line where the stem is taken (masks go by stem)."""
    stem, ext = posixpath.splitext(name)
    if stem in names:
        stem = f"{stem}-line{line}"
    names.add(stem)
    return f"{stem}{ext}"
