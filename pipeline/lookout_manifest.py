"""Amazon Lookout for Vision's dataset manifests: SageMaker Ground Truth JSON lines, read and checked.

One JSON object a line (the format of Lookout's developer guide, "Creating a manifest file"):

* ``source-ref``: the image, an ``s3://`` URI (Lookout's) or, here, a path relative to the manifest;
* ``anomaly-label``: 0 normal, 1 anomalous, with ``anomaly-label-metadata`` (``class-name`` ``normal`` or
  ``anomaly``, ``type`` ``groundtruth/image-classification``, ...);
* for segmentation, ``anomaly-mask-ref``: a colour mask PNG, with ``anomaly-mask-ref-metadata``
  whose ``internal-color-map`` maps an index to ``{"class-name", "hex-color"}`` (``BACKGROUND`` is the
  background class, white in Lookout's own masks).

:func:`parse_manifest` returns the lines that hold an entry and, by line number, the ones that do not
(not JSON, no ``source-ref``, a label other than 0/1, a colour map that is not one); a run goes on
without them. :func:`class_masks` splits a colour mask into one boolean mask per anomaly class, and
:func:`defect_type` maps a class name onto defectscan's defect types where the name says which, else
``other``. No I/O here: :mod:`worker.lookout_import` reads the objects.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import PurePosixPath

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

BACKGROUND = "background"
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
# words in a class name that say which of our types it is (checked in this order)
_TYPE_WORDS = (
    ("structural", ("crack", "missing", "broken", "bent", "dent", "hole", "chip", "tear", "struct", "shape")),
    ("color_scratch", ("scratch", "colou", "color", "stain", "discolo", "spot", "contamin", "dirt")),
    ("blurry_text", ("blur", "text", "print", "font", "ink", "smudge", "legib")),
)


class ColourClass(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    class_name: str = Field(alias="class-name")
    hex_color: str = Field(alias="hex-color")

    @field_validator("hex_color")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _HEX.match(value):
            raise ValueError(f"{value!r} is not a #rrggbb colour")
        return value.lower()


class MaskMetadata(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    internal_color_map: dict[str, ColourClass] = Field(alias="internal-color-map")


class ManifestEntry(BaseModel):
    """One checked line: the image, its label, and its mask with the mask's classes (if any)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    line: int = 0
    source_ref: str = Field(alias="source-ref", min_length=1)
    anomaly_label: int = Field(alias="anomaly-label")
    anomaly_mask_ref: str | None = Field(None, alias="anomaly-mask-ref")
    anomaly_mask_ref_metadata: MaskMetadata | None = Field(None, alias="anomaly-mask-ref-metadata")

    @field_validator("anomaly_label")
    @classmethod
    def _label(cls, value: int) -> int:
        if value not in (0, 1):
            raise ValueError("must be 0 (normal) or 1 (anomaly)")
        return value

    @property
    def anomalous(self) -> bool:
        return self.anomaly_label == 1

    def classes(self) -> dict[str, str]:
        """The mask's anomaly classes: hex colour -> class name (the background left out)."""
        meta = self.anomaly_mask_ref_metadata
        if meta is None:
            return {}
        return {
            c.hex_color: c.class_name
            for c in meta.internal_color_map.values()
            if c.class_name.lower() != BACKGROUND
        }


class Problem(BaseModel):
    """A line left out, and why (``line`` 0: the manifest itself)."""

    line: int
    reason: str


def parse_manifest(text: str) -> tuple[list[ManifestEntry], list[Problem]]:
    """The entries of a manifest's text, and its bad lines by number (blank lines are neither)."""
    entries, problems = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(Problem(line=number, reason=f"not JSON ({exc.msg})"))
            continue
        if not isinstance(data, dict):
            problems.append(Problem(line=number, reason="not a JSON object"))
            continue
        try:
            entries.append(ManifestEntry.model_validate({**data, "line": number}))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            problems.append(Problem(line=number, reason=f"{where}: {error['msg']}"))
    return entries, problems


def resolve(ref: str, manifest: str) -> str:
    """Where a reference points: an ``s3://`` URI as it is; anything else relative to the manifest's
    folder (in the same bucket for a manifest in S3). A relative reference may not climb above the
    manifest's bucket."""
    if ref.startswith("s3://"):
        return ref
    if manifest.startswith("s3://"):
        bucket, _, key = manifest[len("s3://") :].partition("/")
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(key), ref))
        if joined.startswith("..") or joined.startswith("/"):
            raise ValueError(f"{ref!r} climbs above s3://{bucket}")
        return f"s3://{bucket}/{joined}"
    if PurePosixPath(ref).is_absolute():
        return ref
    return posixpath.normpath(posixpath.join(posixpath.dirname(manifest), ref))


def class_masks(mask: NDArray[np.uint8], classes: dict[str, str]) -> dict[str, NDArray[np.bool_]]:
    """One boolean mask per anomaly class of a colour mask (RGB), by the class's exact colour; a class
    with no pixel is left out."""
    out: dict[str, NDArray[np.bool_]] = {}
    for colour, name in classes.items():
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], np.uint8)
        hit = np.all(mask == rgb, axis=-1)
        if hit.any():
            out[name] = out[name] | hit if name in out else hit
    return out


def defect_type(class_name: str) -> str:
    """defectscan's defect type for a Lookout class name, where the name says which; else ``other``.

    Example:
        >>> defect_type("scratch"), defect_type("missing-print"), defect_type("blurred-text")
        ('color_scratch', 'structural', 'blurry_text')
        >>> defect_type("bubble")
        'other'
    """
    name = class_name.lower()
    for kind, words in _TYPE_WORDS:
        if any(word in name for word in words):
            return kind
    return "other"
