"""Reading image folders and MVTec-layout datasets from local disk.

MVTec layout: ``train/good``, ``test/good``, ``test/<type>``, ``ground_truth/<type>/<stem>_mask.png``.
Unreadable images are reported and skipped, never fatal: a training set with a few bad files still
trains, and the summary says which were skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import DefectscanError, InvalidArgumentError
from pipeline.images import decode_image
from producer.local_segment import expand_inputs
from worker.storage import read_local


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


def mvtec_test_items(root: Path) -> list[TestItem]:
    """The test images of an MVTec-layout folder with their masks (None for good images)."""
    test = root / "test"
    if not test.is_dir():
        raise InvalidArgumentError(str(root), "has no test/ folder (MVTec layout expected)")
    items = []
    for kind_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        for path in expand_inputs([kind_dir]):
            mask = None
            if kind_dir.name != "good":
                candidate = root / "ground_truth" / kind_dir.name / f"{path.stem}_mask.png"
                mask = candidate if candidate.is_file() else None
            items.append(TestItem(kind_dir.name, path, mask))
    if not items:
        raise InvalidArgumentError(str(test), "holds no images")
    return items
