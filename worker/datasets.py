"""Reading image folders and MVTec-layout datasets from local disk.

MVTec layout: ``train/good``, ``test/good``, ``test/<type>``, ``ground_truth/<type>/<stem>_mask.png``.
Unreadable images are reported and skipped, never fatal: a training set with a few bad files still
trains, and the summary says which were skipped.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.errors import DefectscanError, InvalidArgumentError
from defectscan.pipeline.images import decode_image
from defectscan.worker.storage import open_storage, read_local

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def expand_inputs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, and image files (by suffix) found recursively in the folders given, sorted."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            )
        else:
            out.append(path)
    return out


@dataclass
class ImageSet:
    images: list[NDArray[np.uint8]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    skipped: list[DefectscanError] = field(default_factory=list)


def read_folder(folder: Path, on_error: Callable[[DefectscanError], None] | None = None) -> ImageSet:
    """Every image under ``folder`` (recursively, sorted), decoded to RGB."""
    if not folder.is_dir():
        raise InvalidArgumentError(str(folder), "is not a folder")
    out = ImageSet()
    for path in expand_inputs([folder]):
        try:
            out.images.append(decode_image(read_local(path), str(path)))
            out.names.append(str(path.relative_to(folder)))
        except DefectscanError as exc:
            out.skipped.append(exc)
            if on_error is not None:
                on_error(exc)
    return out


@dataclass
class TestItem:
    kind: str
    path: Path
    mask: Path | None


def mask_for(image: Path) -> Path | None:
    """The MVTec mask of ``<root>/test/<type>/<stem>.*``: ``<root>/ground_truth/<type>/<stem>_mask.png``."""
    kind_dir = image.parent
    if kind_dir.name == "good" or kind_dir.parent.name != "test":
        return None
    candidate = kind_dir.parent.parent / "ground_truth" / kind_dir.name / f"{image.stem}_mask.png"
    return candidate if candidate.is_file() else None


@dataclass
class PairItem(TestItem):
    template: Path = Path()


def read_pairs(csv_path: Path) -> list[PairItem]:
    """Rows of (image, its template) from a CSV whose first two columns are paths, relative to the
    CSV's folder (a header row is recognised and skipped; deeppcb's test_pairs.csv works as it is).
    Kinds and masks follow the MVTec layout when the images lie in one."""
    if not csv_path.is_file():
        raise InvalidArgumentError(str(csv_path), "pairs CSV not found")
    items = []
    with csv_path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if len(row) < 2 or not row[0].strip():
                continue
            image, template = (csv_path.parent / row[0].strip(), csv_path.parent / row[1].strip())
            if number == 1 and not image.exists() and not template.exists():
                continue  # a header
            kind = image.parent.name if image.parent.parent.name == "test" else "unknown"
            items.append(PairItem(kind, image, mask_for(image), template))
    if not items:
        raise InvalidArgumentError(str(csv_path), "lists no image pairs")
    return items


def mvtec_test_items(root: Path) -> list[TestItem]:
    """The test images of an MVTec-layout folder with their masks (None for good images)."""
    test = root / "test"
    if not test.is_dir():
        raise InvalidArgumentError(str(root), "has no test/ folder (MVTec layout expected)")
    items = []
    for kind_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        for path in expand_inputs([kind_dir]):
            items.append(TestItem(kind_dir.name, path, mask_for(path)))
    if not items:
        raise InvalidArgumentError(str(test), "holds no images")
    return items


def read_images(location: str) -> tuple[list[Any], list[str], list[str]]:
    """Decoded images under ``location`` (by suffix, key order), their keys, and the skipped ones' errors."""
    store = open_storage(location)
    images, names, skipped = [], [], []
    for obj in store.objects():
        if Path(obj.key).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            images.append(decode_image(store.get(obj.key), f"{location.rstrip('/')}/{obj.key}"))
            names.append(obj.key)
        except DefectscanError as exc:
            skipped.append(str(exc))
    return images, names, skipped
