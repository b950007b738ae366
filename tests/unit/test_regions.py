"""The region map: structure, edge band, interior, background and text, from a reference image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from defectscan.pipeline.images import encode_png
from defectscan.pipeline.model import AnomalyModel, ModelConfig
from defectscan.pipeline.regions import (
    BACKGROUND,
    EDGE,
    INTERIOR,
    TEXT,
    from_png_rgb,
    region_map,
    structure_mask,
)
from defectscan.pipeline.synth import reference_template, text_box


def _box_mask(shape: tuple[int, ...], box: tuple[int, int, int, int], grow: int = 0) -> np.ndarray:
    x, y, w, h = box
    out = np.zeros(shape[:2], bool)
    out[max(y - grow, 0) : y + h + grow, max(x - grow, 0) : x + w + grow] = True
    return out


def test_text_is_found_where_the_template_has_it_and_nowhere_else() -> None:
    reference = reference_template()
    labels = region_map(reference).labels
    truth = _box_mask(reference.shape, text_box())
    text = labels == TEXT
    assert (text & truth).sum() / truth.sum() > 0.95  # the whole line is covered
    assert not (text & ~_box_mask(reference.shape, text_box(), grow=12)).any()  # the sunburst is not text


def test_structure_edges_interior_and_background() -> None:
    image = np.full((120, 160, 3), 20, np.uint8)
    image[30:90, 40:120] = 230  # a filled rectangle of print on a dark substrate
    regions = region_map(image, edge_px=3)
    inside = np.zeros(image.shape[:2], bool)
    inside[30:90, 40:120] = True
    assert np.array_equal(regions.structure, inside)
    assert (regions.labels[40:80, 50:110] == INTERIOR).all()
    assert (regions.labels[:20] == BACKGROUND).all()
    assert regions.labels[30, 80] == EDGE and regions.labels[28, 80] == EDGE  # both sides of the boundary
    assert regions.labels[24, 80] == BACKGROUND and regions.labels[36, 80] == INTERIOR
    inverted = 255 - image  # dark print on a light substrate: the print is still the structure
    assert np.array_equal(structure_mask(inverted), inside)


def test_labelled_png_round_trip_and_model_artifact(tmp_path: Path) -> None:
    reference = reference_template()
    regions = region_map(reference)
    assert np.array_equal(from_png_rgb(regions.to_png_rgb(), reference).labels, regions.labels)
    crops = [reference.copy() for _ in range(4)]
    model = AnomalyModel.fit(crops, ModelConfig(image_size=64, coreset_ratio=0.5, tta_views=("identity",)))
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "regions.png").is_file()
    loaded = AnomalyModel.load(tmp_path / "m")
    assert loaded.regions is not None and np.array_equal(loaded.regions.labels, regions.labels)
    # a user's edited map overrides the derived one
    edited = regions.to_png_rgb()
    edited[:, :] = (0, 0, 0)
    (tmp_path / "m" / "regions.png").write_bytes(encode_png(edited))
    overridden = AnomalyModel.load(tmp_path / "m").regions
    assert overridden is not None and (overridden.labels == BACKGROUND).all()
