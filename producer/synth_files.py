"""Write a synthetic print-sheet set to disk: sheets with ground truth, and MVTec-style crops.

Layout under ``OUT``::

    template.png                         the product's clean reference template
    synth.json                           the parameters that made the set
    sheets/sheet_0000.png                a sheet
    truth/sheet_0000.json                its ground truth: instance poses, boxes, defects
    truth/sheet_0000_mask.png            its defect mask (255 where a defect changed pixels)
    mvtec/train/good/sheet_0000_1.png    aligned crops of good instances (4 in 5)
    mvtec/test/good/...                  the other good crops (1 in 5)
    mvtec/test/<type>/...                crops of defective instances
    mvtec/ground_truth/<type>/<name>_mask.png

Also the pieces of a synthetic *batch* in storage, for the distributed tests and benchmark: sheet
images under ``line<k>/``, aligned OK crops to train on, and a published model (``LATEST``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.images import encode_png
from defectscan.pipeline.segment import Segmenter
from defectscan.pipeline.synth import (
    TEMPLATE_HEIGHT,
    TEMPLATE_WIDTH,
    SheetInstance,
    SheetSpec,
    generate_sheet,
    reference_template,
)
from defectscan.worker.storage import LocalStorage, Storage


@dataclass
class SynthCounts:
    sheets: int = 0
    instances: int = 0
    by_split: dict[str, int] = field(default_factory=dict)


def write_synthetic_set(
    storage: LocalStorage,
    sheets: int,
    defect_rate: float,
    seed: int,
    spec: SheetSpec | None = None,
    on_sheet: Callable[[int], None] | None = None,
) -> SynthCounts:
    """Generate ``sheets`` sheets of series ``seed`` and write them with their crops and truth."""
    spec = spec or SheetSpec()
    storage.put("template.png", encode_png(reference_template()))
    params = {
        "seed": seed,
        "sheets": sheets,
        "defect_rate": defect_rate,
        "sheet": {"width": spec.width, "height": spec.height, "rows": spec.rows, "cols": spec.cols},
        "template": {"width": TEMPLATE_WIDTH, "height": TEMPLATE_HEIGHT, "key": "template.png"},
    }
    storage.put("synth.json", json.dumps(params, indent=2).encode())
    counts = SynthCounts()
    good_seen = 0
    for index in range(sheets):
        sheet = generate_sheet(seed, index, defect_rate, spec)
        stem = f"sheet_{index:04d}"
        records = []
        for inst in sheet.instances:
            name = f"{stem}_{inst.index}"
            if inst.defect is None:
                split = "test/good" if good_seen % 5 == 4 else "train/good"
                good_seen += 1
            else:
                split = f"test/{inst.defect.type}"
                mask = inst.defect.mask.astype(np.uint8) * 255
                storage.put(f"mvtec/ground_truth/{inst.defect.type}/{name}_mask.png", encode_png(mask))
            crop_key = f"mvtec/{split}/{name}.png"
            storage.put(crop_key, encode_png(sheet.crop(inst)))
            counts.by_split[split] = counts.by_split.get(split, 0) + 1
            records.append(_instance_record(inst, crop_key))
        storage.put(f"sheets/{stem}.png", encode_png(sheet.image))
        storage.put(f"truth/{stem}_mask.png", encode_png(sheet.mask))
        truth = {
            "image": f"sheets/{stem}.png",
            "width": spec.width,
            "height": spec.height,
            "template": {"width": TEMPLATE_WIDTH, "height": TEMPLATE_HEIGHT},
            "mask": f"truth/{stem}_mask.png",
            "instances": records,
        }
        storage.put(f"truth/{stem}.json", json.dumps(truth, indent=2).encode())
        counts.sheets += 1
        counts.instances += len(sheet.instances)
        if on_sheet is not None:
            on_sheet(index)
    return counts


def _instance_record(inst: SheetInstance, crop_key: str) -> dict[str, object]:
    defect = None
    if inst.defect is not None:
        ys, xs = np.nonzero(inst.defect.mask)
        defect = {
            "type": inst.defect.type,
            "variant": inst.defect.variant,
            "strength": round(inst.defect.strength, 4),
            "area_px": inst.defect.area_px,
            "box_in_crop": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)],
        }
    return {
        "index": inst.index,
        "centre": [round(inst.pose.cx, 4), round(inst.pose.cy, 4)],
        "angle": round(inst.pose.angle, 4),
        "scale": round(inst.pose.scale, 5),
        "box": [round(v, 3) for v in inst.box],
        "defect": defect,
        "crop": crop_key,
    }


def aligned_ok_crops(
    segmenter: Segmenter, sheets: int, seed: int, spec: SheetSpec
) -> list[NDArray[np.uint8]]:
    """Aligned crops of ``sheets`` defect-free sheets, cut as ``defectscan train`` cuts them."""
    crops: list[NDArray[np.uint8]] = []
    for index in range(sheets):
        clean = generate_sheet(seed, index, 0.0, spec).image
        crops += segmenter.whole_crops(clean, f"sheet {index}")
    return crops


def publish_model(model_dir: Path, models: Storage, product: str) -> str:
    """Copy a model directory to ``<models>/<product>/<version>/`` and promote it in ``LATEST``."""
    version = str(json.loads((model_dir / "model.json").read_text())["version"])
    for path in sorted(model_dir.iterdir()):
        models.put(f"{product}/{version}/{path.name}", path.read_bytes())
    models.put(f"{product}/LATEST", f"{version}\n".encode())
    return version


def write_sheet_images(
    store: Storage, sheets: int, seed: int, defect_rate: float, spec: SheetSpec, folders: int = 2
) -> list[str]:
    """``sheets`` sheet PNGs under ``line<k>/`` folders of ``store``; their keys."""
    keys = []
    for index in range(sheets):
        key = f"line{index % folders}/sheet_{index:03d}.png"
        store.put(key, encode_png(generate_sheet(seed, index, defect_rate, spec).image))
        keys.append(key)
    return keys
