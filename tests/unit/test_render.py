"""Pictures: defect captions land where they are asked for and stay inside the picture."""

from __future__ import annotations

import numpy as np

from defectscan.pipeline.defect_mask import TYPE_COLOURS, TYPES, colour_mask, type_areas, type_mask
from defectscan.pipeline.render import label_defects
from defectscan.pipeline.verdict import Defect


def test_a_caption_is_drawn_just_above_its_corner_and_nowhere_else() -> None:
    image = np.full((400, 600, 3), 128, np.uint8)
    out = label_defects(image, [((300.0, 200.0), "structural major")])
    changed = np.argwhere(np.any(out != image, axis=2))
    assert len(changed) > 100
    assert changed[:, 0].max() <= 200 and changed[:, 0].min() >= 170  # rows just above y = 200
    assert changed[:, 1].min() >= 300 and changed[:, 1].max() < 500
    assert np.array_equal(label_defects(image, []), image)


def test_a_caption_at_the_edge_stays_in_the_picture() -> None:
    image = np.zeros((100, 120, 3), np.uint8)
    out = label_defects(image, [((118.0, 2.0), "color_scratch critical")])
    changed = np.argwhere(np.any(out != image, axis=2))
    assert len(changed) > 50 and changed[:, 0].min() == 0  # pushed down into the picture, drawn whole


def test_captions_at_one_corner_do_not_cover_each_other() -> None:
    image = np.zeros((300, 400, 3), np.uint8)
    first = [((50.0, 100.0), "structural critical")]
    alone = label_defects(image, first)
    both = label_defects(image, [*first, ((52.0, 98.0), "other minor")])
    box = np.argwhere(np.any(alone != image, axis=2))
    (y0, x0), (y1, x1) = box.min(axis=0), box.max(axis=0)
    assert np.array_equal(both[y0 : y1 + 1, x0 : x1 + 1], alone[y0 : y1 + 1, x0 : x1 + 1])  # intact
    assert np.argwhere(np.any(both != alone, axis=2))[:, 0].min() > y1  # the second went below


def _defect(kind: str) -> Defect:
    return Defect(
        type=kind, level="minor", severity=10.0, box=(0, 0, 1, 1), area_px=1, area_pct=1.0, peak=1.0, mean=1.0
    )


def test_the_type_mask_colours_each_region_by_its_type_and_counts_its_area() -> None:
    a = np.zeros((10, 20), bool)
    a[0:2, 0:10] = True  # 20 px
    b = np.zeros((10, 20), bool)
    b[5:10, 10:20] = True  # 50 px
    labels = type_mask((10, 20), [(_defect("structural"), a), (_defect("blurry_text"), b)])
    assert type_areas(labels) == {"structural": 10.0, "blurry_text": 25.0}
    picture = colour_mask(labels)
    assert (
        tuple(picture[0, 0]) == TYPE_COLOURS["structural"]
        and tuple(picture[9, 19]) == TYPE_COLOURS["blurry_text"]
    )
    assert tuple(picture[9, 0]) == (0, 0, 0)
    assert labels.max() <= len(TYPES)
