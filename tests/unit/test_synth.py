"""Synthetic print sheets: deterministic, realistic jitter, exact defect masks, MVTec layout on disk."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from defectscan.pipeline import synth
from defectscan.pipeline.images import decode_image, to_gray
from defectscan.pipeline.synth import (
    DEFECT_TYPES,
    TEMPLATE_HEIGHT,
    TEMPLATE_WIDTH,
    Sheet,
    SheetSpec,
    generate_sheet,
    reference_template,
    render_instance,
)
from defectscan.producer.synth_files import write_synthetic_set
from defectscan.worker.storage import LocalStorage


def test_same_seed_same_sheet_other_index_other_sheet() -> None:
    a = generate_sheet(5, 2, 0.5)
    b = generate_sheet(5, 2, 0.5)
    np.testing.assert_array_equal(a.image, b.image)
    assert [i.pose for i in a.instances] == [i.pose for i in b.instances]
    for x, y in zip(a.instances, b.instances, strict=True):
        assert (x.defect is None) == (y.defect is None)
        if x.defect is not None and y.defect is not None:
            np.testing.assert_array_equal(x.defect.mask, y.defect.mask)
    assert not np.array_equal(a.image, generate_sheet(5, 3, 0.5).image)


def test_sheet_shape_grid_and_jitter(sheets: list[Sheet]) -> None:
    spec = SheetSpec()
    for sheet in sheets:
        assert sheet.image.shape == (1200, 2400, 3)
        assert len(sheet.instances) == spec.rows * spec.cols
        for inst in sheet.instances:
            row, col = divmod(inst.index, spec.cols)
            assert abs(inst.pose.cx - (col + 0.5) * 600 + 0.5) <= spec.max_shift
            assert abs(inst.pose.cy - (row + 0.5) * 600 + 0.5) <= spec.max_shift
            assert abs(inst.pose.angle) <= spec.max_angle
            assert abs(inst.pose.scale - 1) <= spec.max_scale
    angles = [i.pose.angle for s in sheets for i in s.instances]
    assert np.std(angles) > 1.0  # jitter is really there


def test_print_is_light_on_dark(template: np.ndarray) -> None:
    gray = to_gray(template)
    assert np.median(gray) < 60  # substrate dominates, dark
    assert np.percentile(gray, 99) > 180  # the print is light


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defect_mask_covers_exactly_what_changed(kind: str) -> None:
    clean, _ = render_instance(None, 0.0, np.random.default_rng(0))
    image, defect = render_instance(kind, 0.8, np.random.default_rng(1))
    assert defect is not None and defect.type == kind
    assert defect.mask.shape == (TEMPLATE_HEIGHT, TEMPLATE_WIDTH)
    changed = np.abs(image - clean).max(axis=2)
    assert defect.area_px > 30
    assert changed[defect.mask].max() > 40  # the defect is visible
    assert changed[~defect.mask].max() < 15  # and nothing changed outside its mask


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defect_area_grows_with_strength(kind: str) -> None:
    areas = [render_instance(kind, s, np.random.default_rng(3))[1].area_px for s in np.linspace(0, 1, 6)]  # type: ignore[union-attr]
    assert all(a <= b for a, b in itertools.pairwise(areas)), areas


@pytest.mark.parametrize(("rate", "expected"), [(0.0, 0), (1.0, 8)])
def test_defect_rate_extremes(rate: float, expected: int) -> None:
    sheet = generate_sheet(9, 0, rate)
    assert sum(i.defect is not None for i in sheet.instances) == expected
    assert (sheet.mask.max() > 0) == (expected > 0)


def test_written_set_has_mvtec_layout_and_truth(tmp_path: Path) -> None:
    counts = write_synthetic_set(LocalStorage(tmp_path), sheets=3, defect_rate=0.5, seed=4)
    assert counts.sheets == 3 and counts.instances == 24
    assert sum(counts.by_split.values()) == 24
    reference = decode_image((tmp_path / "template.png").read_bytes(), "template.png")
    np.testing.assert_array_equal(reference, reference_template())
    defects = 0
    for index in range(3):
        truth = json.loads((tmp_path / f"truth/sheet_{index:04d}.json").read_text())
        assert (tmp_path / truth["image"]).is_file() and (tmp_path / truth["mask"]).is_file()
        for inst in truth["instances"]:
            crop = decode_image((tmp_path / inst["crop"]).read_bytes(), inst["crop"])
            assert crop.shape == (TEMPLATE_HEIGHT, TEMPLATE_WIDTH, 3)
            if inst["defect"] is None:
                # An aligned good crop looks like the reference (illumination and noise aside).
                corr = np.corrcoef(to_gray(crop).ravel(), to_gray(reference).ravel())[0, 1]
                assert corr > 0.95
                continue
            defects += 1
            kind = inst["defect"]["type"]
            assert inst["crop"].startswith(f"mvtec/test/{kind}/")
            name = Path(inst["crop"]).stem
            mask = decode_image((tmp_path / f"mvtec/ground_truth/{kind}/{name}_mask.png").read_bytes(), name)
            assert (mask[..., 0] > 0).sum() == inst["defect"]["area_px"]
    assert defects == 24 - counts.by_split.get("train/good", 0) - counts.by_split.get("test/good", 0)
    assert counts.by_split.get("train/good", 0) > counts.by_split.get("test/good", 0)


def test_a_sheet_does_not_depend_on_how_many_were_made(tmp_path: Path) -> None:
    write_synthetic_set(LocalStorage(tmp_path / "a"), sheets=2, defect_rate=0.3, seed=8)
    write_synthetic_set(LocalStorage(tmp_path / "b"), sheets=3, defect_rate=0.3, seed=8)
    a = (tmp_path / "a/sheets/sheet_0001.png").read_bytes()
    assert a == (tmp_path / "b/sheets/sheet_0001.png").read_bytes()


def test_structural_variants_change_the_same_area_at_the_same_strength() -> None:
    clean = synth._structure_coverage()
    areas = {
        variant: [
            int((np.abs(synth._structure_coverage(3, variant, s) - clean) > 0.04).sum())
            for s in (0.3, 0.6, 1.0)
        ]
        for variant in ("missing", "broken", "bent")
    }
    for variant, row in areas.items():
        assert row == sorted(row) and row[0] < row[-1], (variant, row)  # more with strength
    for level in range(3):  # comparable across variants, so severity can rank them together
        values = [row[level] for row in areas.values()]
        assert max(values) <= 1.25 * min(values), areas
