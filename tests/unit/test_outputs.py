"""An inspection finished in `pipeline/`: the complete verdict and every file, before anything is written."""

from __future__ import annotations

import json

import numpy as np

from defectscan.pipeline.images import decode_image
from defectscan.pipeline.inspection import Inspection
from defectscan.pipeline.outputs import OutputOptions, finish, is_verdict_key
from defectscan.pipeline.verdict import ImageInfo, Instance, ModelInfo, Verdict


def _inspection() -> Inspection:
    instances = [
        Instance(index=k, box=(0, 0, 8, 8), score=s, threshold=1.0, confidence=0.5, is_anomalous=s > 1.0)
        for k, s in enumerate((0.5, 2.0))
    ]
    verdict = Verdict(
        image=ImageInfo(key="line 1/a.png"), model=ModelInfo(method="patchcore"), verdict="defect"
    )
    verdict.instances = instances
    labels = np.zeros((16, 24), np.uint8)
    labels[2:6, 3:9] = 3  # structural
    picture = np.full((16, 24, 3), 90, np.uint8)
    return Inspection(
        verdict,
        anomaly_map=np.linspace(0, 2, 16 * 24, dtype=np.float32).reshape(16, 24),
        heatmap=picture,
        crop_heatmaps=[picture[:8, :8], picture[:8, 8:16]],
        type_mask=labels,
    )


def test_finish_names_every_file_and_leaves_the_inspection_as_it_was() -> None:
    result = _inspection()
    before = result.verdict.model_dump_json()
    done = finish("line 1/a.png", "line 1/a.png", result, OutputOptions(save_maps=True, lookout_compat=True))
    assert result.verdict.model_dump_json() == before  # a copy is finished, not the inspection's verdict
    names = [name for name, _, _ in done.files]
    assert names[-1] == "line 1/a.png.json"  # the verdict last: it describes files that exist
    heatmaps = [i.heatmap for i in done.verdict.instances]
    assert heatmaps == [None, "line 1/a.png.1.heatmap.png"]  # by default, the anomalous instance's only
    assert set(done.verdict.outputs.values()) | set(heatmaps[1:]) == set(names[:-1])
    assert done.verdict.outputs["map"] == "line 1/a.png.map.npy"
    assert done.verdict.lookout is not None and done.verdict.lookout.IsAnomalous
    files = {name: data for name, data, _ in done.files}
    assert json.loads(files[names[-1]]) == json.loads(done.verdict.to_json())
    mask = decode_image(files["line 1/a.png.mask.png"], "mask")
    assert (mask[3, 4] == (255, 200, 0)).all() and (mask[0, 0] == 0).all()  # structural in its colour


def test_finish_under_another_item_key_says_where_the_files_are() -> None:
    done = finish("a.png", "_renamed/0123", _inspection(), OutputOptions())
    assert done.verdict.image.stored_as == "_renamed/0123" and done.verdict.lookout is None
    assert all(name.startswith("_renamed/0123.") for name, _, _ in done.files)
    assert "map" not in done.verdict.outputs


def test_pictures_change_the_files_never_the_verdict() -> None:
    done = {
        p: finish("a.png", "a.png", _inspection(), OutputOptions(pictures=p, lookout_compat=True))
        for p in ("all", "defects", "none")
    }
    names = {p: {name for name, _, _ in d.files} for p, d in done.items()}
    assert names["all"] - names["defects"] == {"a.png.0.heatmap.png"}  # the ok instance's picture
    assert names["none"] == {"a.png.json", "a.png.lookout.json"}  # Lookout's answer keeps its mask
    plain = [d.verdict.model_dump(exclude={"outputs", "instances"}) for d in done.values()]
    assert plain[0] == plain[1] == plain[2]
    scores = [[i.model_dump(exclude={"heatmap"}) for i in d.verdict.instances] for d in done.values()]
    assert scores[0] == scores[1] == scores[2]


def test_the_lookout_answer_beside_a_verdict_is_not_taken_for_one() -> None:
    done = finish("a.png", "a.png", _inspection(), OutputOptions(lookout_compat=True))
    verdicts = [name for name, _, _ in done.files if is_verdict_key(name)]
    assert verdicts == ["a.png.json"] and "a.png.lookout.json" in {name for name, _, _ in done.files}
