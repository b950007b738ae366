"""Anomaly models on small synthetic crops: training, TTA scoring, calibration, artifact, backbones."""

from __future__ import annotations

import json
import socket
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from defectscan.pipeline.backbone import BackboneError, lite2_weights_path, timm_state_dict
from defectscan.pipeline.calibration import calibrate
from defectscan.pipeline.errors import InvalidArgumentError, ModelFormatError, ModelNotFoundError
from defectscan.pipeline.evaluate import auroc
from defectscan.pipeline.model import AnomalyModel, ModelConfig
from defectscan.pipeline.model_config import DEFAULT_LAYERS, LITE2, STFPM_LAYERS
from defectscan.pipeline.synth import render_instance
from defectscan.pipeline.training_set import fold_sets

SMALL = ModelConfig(image_size=96, batch_size=8, coreset_ratio=0.1)  # tiny crops: keep a usable bank


def _photo(image: np.ndarray, seed: int) -> np.ndarray:
    """A rendered instance as a camera would see it: gain jitter and sensor noise."""
    rng = np.random.default_rng(seed)
    noisy = image * rng.uniform(0.95, 1.05) + rng.normal(0, 2.5, image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _crops(kind: str | None, count: int, seed: int, strength: float = 0.9) -> list[np.ndarray]:
    out = []
    for i in range(count):
        image, _ = render_instance(kind, strength, np.random.default_rng([seed, i]))
        out.append(_photo(image, seed * 1000 + i))
    return out


@pytest.fixture(scope="module")
def good() -> list[np.ndarray]:
    return _crops(None, 14, 1)


@pytest.fixture(scope="module")
def patchcore(good: list[np.ndarray]) -> AnomalyModel:
    return AnomalyModel.fit(good, SMALL)


@pytest.fixture(scope="module")
def test_set() -> tuple[list[np.ndarray], list[int]]:
    ok = _crops(None, 6, 2)
    bad = [c for kind in ("structural", "color", "scratch", "blurry_text") for c in _crops(kind, 3, 3)]
    return ok + bad, [0] * len(ok) + [1] * len(bad)


@pytest.mark.parametrize("method", ["patchcore", "padim"])
def test_defective_crops_score_above_good_ones(
    method: str, good: list[np.ndarray], patchcore: AnomalyModel, test_set: tuple[list[np.ndarray], list[int]]
) -> None:
    model = (
        patchcore
        if method == "patchcore"
        else AnomalyModel.fit(good, ModelConfig(method="padim", image_size=96))
    )
    images, labels = test_set
    scores = [r.score for r in model.score(images)]
    assert auroc(labels, scores) >= 0.9
    ok_max = max(s for s, y in zip(scores, labels, strict=True) if y == 0)
    bad_median = float(np.median([s for s, y in zip(scores, labels, strict=True) if y == 1]))
    assert bad_median > ok_max


def test_maps_come_back_at_the_crops_own_resolution(patchcore: AnomalyModel) -> None:
    crops = [np.zeros((352, 448, 3), np.uint8) + 30, np.zeros((50, 70, 3), np.uint8) + 30]
    results = patchcore.score(crops)
    assert results[0].anomaly_map.shape == (352, 448) and results[1].anomaly_map.shape == (50, 70)
    for r in results:
        assert r.anomaly_map.dtype == np.float32
        assert r.score == pytest.approx(float(r.anomaly_map.max()))  # raw score, never clipped
        assert 0.0 <= r.normalized <= 1.0


def test_scores_are_deterministic(
    patchcore: AnomalyModel, test_set: tuple[list[np.ndarray], list[int]]
) -> None:
    a = patchcore.score(test_set[0][:5])
    b = patchcore.score(test_set[0][:5])
    for x, y in zip(a, b, strict=True):
        assert x.score == y.score and np.array_equal(x.anomaly_map, y.anomaly_map)


def test_tta_realigns_maps(patchcore: AnomalyModel, test_set: tuple[list[np.ndarray], list[int]]) -> None:
    # With views {identity, hflip}, scoring a mirrored crop gives the mirrored map.
    model = patchcore.with_views(["identity", "hflip"])
    crop = test_set[0][-4]
    (plain,) = model.score([crop])
    (mirrored,) = model.score([np.ascontiguousarray(crop[:, ::-1])])
    span = float(plain.anomaly_map.max() - plain.anomaly_map.min())
    realigned = np.abs(mirrored.anomaly_map[:, ::-1] - plain.anomaly_map).max()
    unaligned = np.abs(mirrored.anomaly_map - plain.anomaly_map).max()
    # Not bit-exact: TF-style "same" padding of stride-2 convolutions is asymmetric.
    assert realigned < 0.01 * span and unaligned > 10 * realigned
    (single,) = patchcore.score([crop], use_tta=False)
    assert not np.allclose(single.anomaly_map, plain.anomaly_map)


def test_save_and_load_give_identical_scores(
    patchcore: AnomalyModel,
    test_set: tuple[list[np.ndarray], list[int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    patchcore.save(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["schema"] == "defectscan.model/1" and doc["config"]["method"] == "patchcore"
    assert doc["training"]["ok_count"] == 14 and len(doc["training"]["sha256"]) == 64
    assert doc["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and doc["tta"]["views"] == [
        "identity",
        "hflip",
        "vflip",
    ]
    assert doc["calibration"]["threshold"] == patchcore.calibration.threshold
    assert (tmp_path / "m" / "reference.png").is_file()
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "MODEL_CARD.md",
        "model.json",
        "model.safetensors",
        "reference.png",
        "regions.png",
    }

    def no_pickle(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading a model must not unpickle anything")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = AnomalyModel.load(tmp_path / "m")
    for a, b in zip(patchcore.score(test_set[0]), loaded.score(test_set[0]), strict=True):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)


def test_missing_and_broken_models_are_named(tmp_path: Path, patchcore: AnomalyModel) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        AnomalyModel.load(tmp_path / "nothing")
    assert info.value.code == "model_not_found" and "nothing" in str(info.value)
    patchcore.save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFormatError):
        AnomalyModel.load(tmp_path / "m")


def test_aux_weight_moves_scores_the_expected_way(good: list[np.ndarray]) -> None:
    """A feature seen only in auxiliary images scores higher the lower their weight."""
    aux = _crops("color", 6, 7)
    probe = _crops("color", 2, 8)
    scores = {}
    for weight in (0.05, 0.5, 1.0):
        model = AnomalyModel.fit(good, SMALL, aux=aux, aux_weight=weight)
        scores[weight] = float(np.mean([r.score for r in model.score(probe)]))
    unseen = float(np.mean([r.score for r in AnomalyModel.fit(good, SMALL).score(probe)]))
    assert scores[1.0] < scores[0.5] < scores[0.05]
    assert scores[0.05] <= unseen * 1.05  # even a low weight teaches a little


@pytest.mark.parametrize("method", ["padim", "stfpm"])
def test_aux_weight_is_applied_by_every_learning_method(good: list[np.ndarray], method: str) -> None:
    """PaDiM weighs aux samples in its Gaussians, STFPM in its loss: a feature seen only in auxiliary
    images scores lower when they weigh fully than when they weigh little."""
    aux = _crops("color", 6, 7)
    probe = aux if method == "stfpm" else _crops("color", 3, 8)  # STFPM: how well the student learnt them
    config = SMALL.changed(method=method, epochs=8)
    scores = {}
    for weight in (0.05, 1.0):
        torch.manual_seed(0)
        model = AnomalyModel.fit(good, config, aux=aux, aux_weight=weight)
        scores[weight] = float(np.mean([r.score for r in model.score(probe)]))
        assert model.record.training["aux_weight"] == weight
    assert scores[1.0] < scores[0.05]


def test_calibration_rules() -> None:
    ok = [1.0, 1.2, 0.9, 1.1, 1.05]
    cal = calibrate(ok)
    assert cal.threshold >= max(ok) and cal.rule.startswith("ok-holdout")
    cal = calibrate(ok, [1.15, 2.0, 3.0])
    # Between 1.1 and 1.15: 3 true positives, 1 false (the OK 1.2), F1 6/7, better than 0.8 above 1.2.
    assert cal.rule.startswith("f1-optimal") and cal.threshold == pytest.approx(1.125)
    assert cal.f1 == pytest.approx(6 / 7)


def test_val_defects_report_their_escapes_at_the_false_reject_target(good: list[np.ndarray]) -> None:
    model = AnomalyModel.fit(good, SMALL, val_defects=_crops("structural", 4, 9))
    cal = model.calibration
    assert cal.defect_count == 4 and cal.escapes is not None and 0 <= cal.escapes <= 4
    plain = AnomalyModel.fit(good, SMALL)
    assert cal.threshold == pytest.approx(plain.calibration.threshold, rel=1e-6)  # defects never lower it


def test_patchcore_calibrates_on_every_ok_image_out_of_fold(good: list[np.ndarray]) -> None:
    model = AnomalyModel.fit(good, SMALL)
    cal, training = model.calibration, model.record.training
    assert isinstance(training, dict)
    assert cal.ok_count == len(good) == training["trained_on"] == training["out_of_fold"]
    assert cal.folds == min(5, len(good)) and cal.target_frr == 0.01 and cal.rule.startswith("gumbel")
    assert cal.frr_interval is not None and cal.frr_interval[0] <= 0.01 <= cal.frr_interval[1]
    in_sample = np.median([r.score for r in model.score(good)])
    assert in_sample < training["ok_scores"]["median"]  # each image was scored by banks without it
    strict = AnomalyModel.fit(good, SMALL.changed(target_frr=0.001))
    assert strict.calibration.threshold > cal.threshold
    saved = AnomalyModel.load(model.save(Path(tempfile.mkdtemp()) / "m")).calibration
    assert saved == cal


def test_the_threshold_holds_for_generated_images_too() -> None:
    """Generated images (a new condition's look) scored out of fold raise the threshold to the point
    their own tail allows the target; the OK images' figures are then those at the raised threshold."""
    rng = np.random.default_rng(0)
    ok = list(10 + rng.gumbel(0, 0.3, 200))
    new = list(11 + rng.gumbel(0, 0.3, 200))
    plain = calibrate(ok, [], 0.01, 5)
    both = calibrate(ok, [], 0.01, 5, generated=new)
    assert both.threshold == pytest.approx(calibrate(new, [], 0.01, 5).threshold)
    assert both.threshold > plain.threshold + 0.8
    assert both.generated_count == 200 and both.generated_expected_frr == pytest.approx(0.01, rel=1e-6)
    assert both.expected_frr is not None and both.expected_frr < 0.01 and both.target_frr == 0.01
    assert "generated" in both.rule
    easy = calibrate(ok, [], 0.01, 5, generated=list(np.array(ok) - 1))  # easier than the OK images
    assert easy.threshold == plain.threshold and easy.generated_expected_frr is not None
    assert easy.generated_expected_frr < 0.01


def test_the_threshold_holds_for_the_new_conditions_own_images_from_five_on() -> None:
    """A new condition's own OK images (never trained on) whose scores spread wider than the generated
    images' raise the threshold to their own tail's point; fewer than five are too few to fit."""
    rng = np.random.default_rng(1)
    ok = list(10 + rng.gumbel(0, 0.3, 200))
    generated = list(10.2 + rng.gumbel(0, 0.3, 200))
    real = list(10.2 + rng.gumbel(0, 0.9, 10))  # the same median, three times the spread
    with_generated = calibrate(ok, [], 0.01, 5, generated=generated)
    cal = calibrate(ok, [], 0.01, 5, generated=generated, new_condition=real)
    assert cal.threshold == pytest.approx(calibrate(real, [], 0.01, 5).threshold)
    assert cal.threshold > with_generated.threshold
    assert "new condition's own OK images" in cal.rule and cal.target_frr == 0.01
    assert cal.new_condition_count == 10 and cal.new_condition_expected_frr == pytest.approx(0.01, rel=1e-6)
    assert cal.new_condition_rejected == sum(s > cal.threshold for s in real)
    assert cal.generated_count == 200 and cal.generated_expected_frr is not None
    assert cal.generated_expected_frr < 0.01  # the generated images now sit further below it
    few = calibrate(ok, [], 0.01, 5, generated=generated, new_condition=real[:4])
    assert few == with_generated and few.new_condition_count == 0
    alone = calibrate(ok, [], 0.01, 5, new_condition=real)  # without generated images too
    assert alone.threshold == cal.threshold and alone.generated_count == 0
    by_hand = calibrate(ok, [], 0.01, 5, value=11.0, new_condition=real)  # a threshold set by hand stays
    assert by_hand.threshold == 11.0 and by_hand.new_condition_rejected == sum(s > 11.0 for s in real)


def test_generated_aux_images_are_held_out_with_their_source_and_calibrate(good: list[np.ndarray]) -> None:
    """Aux images made from OK images (here: brighter copies) are scored against banks without their
    source; those scores are kept and the threshold holds for them."""
    brighter = [np.clip(g.astype(np.int16) * 5 // 4, 0, 255).astype(np.uint8) for g in good]
    plain = AnomalyModel.fit(good, SMALL, aux=brighter, aux_weight=0.1)
    made = AnomalyModel.fit(good, SMALL, aux=brighter, aux_weight=0.1, aux_sources=range(len(good)))
    generated = made.record.calibration_scores.generated
    assert len(generated) == len(good) and made.calibration.generated_count == len(good)
    assert plain.record.calibration_scores.generated == [] and plain.calibration.generated_count == 0
    assert np.median(generated) > np.median(made.record.calibration_scores.ok)
    assert made.calibration.threshold > plain.calibration.threshold
    above = int(np.sum(np.array(generated) > made.calibration.threshold))
    assert made.calibration.generated_rejected == above <= 2  # a robust tail fit of 14 scores
    assert made.calibration.generated_expected_frr == pytest.approx(0.01, rel=1e-6)
    with pytest.raises(InvalidArgumentError, match="aux sources"):
        AnomalyModel.fit(good, SMALL, aux=brighter, aux_sources=[len(good)] * len(good))


def test_other_folds_settings_keep_the_holdout_rule(good: list[np.ndarray]) -> None:
    model = AnomalyModel.fit(good, SMALL.changed(folds=0))
    assert model.calibration.rule.startswith("ok-holdout") and model.calibration.target_frr is None


def test_holdout_methods_set_the_operating_point_too(good: list[np.ndarray]) -> None:
    """Whatever ``train --auto`` chooses, the threshold is set for the target false-reject rate."""
    model = AnomalyModel.fit(good, SMALL.changed(method="padim", target_frr=0.05))
    cal = model.calibration
    assert cal.target_frr == 0.05 and cal.expected_frr == pytest.approx(0.05, rel=1e-6)
    assert "holdout" in cal.rule and cal.ok_count == model.record.training["held_out"] >= 2


def test_a_standardised_model_flags_defects_but_not_exposure(
    good: list[np.ndarray],
    patchcore: AnomalyModel,
    test_set: tuple[list[np.ndarray], list[int]],
    tmp_path: Path,
) -> None:
    """``intensity="standardised"``: defects still rank above OK crops, OK crops under a darker exposure
    score as they did (the as-is model scores them far higher), and the setting survives saving."""
    model = AnomalyModel.fit(good, SMALL.changed(intensity="standardised"))
    images, labels = test_set
    assert auroc(labels, [r.score for r in model.score(images)]) >= 0.9
    ok = [img for img, y in zip(images, labels, strict=True) if y == 0]
    darker = [np.clip(img.astype(np.float32) * 0.85, 0, 255).astype(np.uint8) for img in ok]

    def rise(scored_by: AnomalyModel) -> float:
        return float(
            np.mean([r.score for r in scored_by.score(darker)])
            / np.mean([r.score for r in scored_by.score(ok)])
        )

    assert rise(model) < 1.1 and rise(patchcore) > 1.4
    model.save(tmp_path / "m")
    loaded = AnomalyModel.load(tmp_path / "m")
    assert loaded.config.intensity == "standardised"
    assert [r.score for r in loaded.score(darker)] == pytest.approx([r.score for r in model.score(darker)])


def test_lite2_weights_map_onto_timm_offline() -> None:
    state = timm_state_dict()
    reference = timm.create_model(LITE2, pretrained=False).state_dict()
    assert list(state) == list(reference)
    assert all(state[k].shape == reference[k].shape for k in state)
    assert lite2_weights_path().is_file()


def test_other_timm_backbones_need_local_weights(tmp_path: Path, good: list[np.ndarray]) -> None:
    with pytest.raises(BackboneError, match="local weights"):
        AnomalyModel.fit(good, ModelConfig(backbone="resnet18", layers=("layer2", "layer3"), image_size=64))
    weights = tmp_path / "resnet18.safetensors"
    torch.manual_seed(0)
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(weights))
    config = ModelConfig(
        backbone="resnet18", backbone_weights=str(weights), layers=("layer2", "layer3"), image_size=64
    )
    model = AnomalyModel.fit(good, config)
    assert len(model.score(good[:2])) == 2


def test_nothing_reaches_the_network() -> None:
    # The autouse guard in conftest refuses non-loopback connections; every model test ran under it.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("93.184.216.34", 443), timeout=1)


def test_separable_blur_equals_anomalibs_blur() -> None:
    from anomalib.models.components import GaussianBlur2d

    from defectscan.pipeline.blur import SeparableBlur

    full = GaussianBlur2d(sigma=4.0, channels=1)
    fast = SeparableBlur.like(full)
    maps = torch.rand(3, 1, 64, 80, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast(maps), full(maps), rtol=1e-5, atol=1e-6)
    assert set(fast.state_dict()) == set(full.state_dict())


def test_nearest_neighbour_search_equals_anomalibs() -> None:
    """Both of our searches (the pruned index a CPU uses; the full product a GPU uses, split into
    blocks of rows here: 9,000 patches x a 3,000-entry bank is over FULL_SEARCH_CELLS) find
    anomalib's distances, and the whole forward pass gives anomalib's image scores (its re-weighting
    reads the nearest entry of each image's top patch) and maps."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from defectscan.pipeline import bank_search, networks

    net = networks.build("patchcore", LITE2, DEFAULT_LAYERS).eval()
    gen = torch.Generator().manual_seed(0)
    net.memory_bank = torch.rand(3000, 168, generator=gen)
    patches = torch.rand(9000, 168, generator=gen)
    assert patches.shape[0] * 3000 > bank_search.FULL_SEARCH_CELLS
    ours, _ = net.nearest_neighbors(patches, n_neighbors=1)
    full = bank_search.full_nearest_distances(patches, net.memory_bank)
    theirs, _ = PatchcoreModel.nearest_neighbors(net, patches, n_neighbors=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full, theirs, rtol=1e-4, atol=1e-5)

    images = torch.rand(3, 3, 128, 128, generator=gen)
    with torch.no_grad():
        net.train()
        bank = net(images)[::7].clone()  # a bank of real embeddings, so neighbours are meaningful
        net.embedding_store.clear()
        net.eval()
        net.memory_bank = bank
        ours_out = net(images + 0.05)
        net.nearest_neighbors = partial(PatchcoreModel.nearest_neighbors, net)  # anomalib's own search
        theirs_out = net(images + 0.05)
    torch.testing.assert_close(ours_out.pred_score, theirs_out.pred_score, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours_out.anomaly_map, theirs_out.anomaly_map, rtol=1e-4, atol=1e-5)


def test_trimmed_backbone_gives_the_same_features_and_loads_old_models() -> None:
    """The extractor stops after the last stage a method reads; a state dict that still has the later
    stages (a model saved before trimming) loads."""
    from anomalib.models.components import TimmFeatureExtractor

    from defectscan.pipeline.backbone import drop_trimmed, load_weights, trim_unused_stages

    full = TimmFeatureExtractor(backbone=LITE2, pre_trained=False, layers=["blocks.2", "blocks.4"]).eval()
    load_weights(full.feature_extractor, LITE2)
    trimmed = trim_unused_stages(
        TimmFeatureExtractor(backbone=LITE2, pre_trained=False, layers=["blocks.2", "blocks.4"]).eval()
    )
    assert len(trimmed.feature_extractor.blocks) < len(full.feature_extractor.blocks)
    trimmed.load_state_dict(drop_trimmed(full.state_dict(), trimmed), strict=True)
    image = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = full(image), trimmed(image)
    for layer in ("blocks.2", "blocks.4"):
        torch.testing.assert_close(a[layer], b[layer])


def test_stfpm_student_learns_the_teacher_and_flags_defects(
    good: list[np.ndarray], test_set: tuple[list[np.ndarray], list[int]]
) -> None:
    short = AnomalyModel.fit(good, ModelConfig(method="stfpm", image_size=96, epochs=1))
    longer = AnomalyModel.fit(good, ModelConfig(method="stfpm", image_size=96, epochs=30))
    training = longer.record.training
    assert isinstance(training, dict)
    assert training["final_loss"] < short.record.training["final_loss"]  # type: ignore[index]
    images, labels = test_set
    scores = [r.score for r in longer.score(images)]
    ok = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    bad = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    assert np.mean(bad) > np.mean(ok)
    # Better than chance after 30 short epochs; STFPM's real figures come from the dataset runs.
    assert auroc(labels, scores) >= 0.6


def test_stfpm_sample_weight_scales_its_loss(good: list[np.ndarray]) -> None:
    from defectscan.pipeline import networks

    net = networks.build("stfpm", LITE2, STFPM_LAYERS)
    model = AnomalyModel(ModelConfig(method="stfpm", image_size=64), net, calibrate([1.0, 1.1]))
    images = model.scorer.normalise(model.scorer.pixels(good[:2]))

    def one_step_loss(weight: float) -> float:
        torch.manual_seed(0)
        fresh = networks.build("stfpm", LITE2, STFPM_LAYERS)
        fresh.load_state_dict(net.state_dict())
        stats = networks.fit_stfpm(
            fresh, lambda: iter([(images, torch.tensor([weight, weight]))]), epochs=1, lr=0.0
        )
        return stats["final_loss"]

    assert one_step_loss(0.1) == pytest.approx(0.1 * one_step_loss(1.0), rel=1e-4)


def test_out_of_fold_scores_reuse_training_patches_exactly(
    good: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out-of-fold scores from the training pass's patch embeddings equal those of scoring each image
    against its fold's bank with the backbone run again (up to resizing a flipped crop instead of
    flipping a resized one: the training views are flipped before the resize)."""
    fast = AnomalyModel.fit(good, SMALL)
    reuse = AnomalyModel._out_of_fold_scores

    def rescoring(self: AnomalyModel, ok: Any, folds: Any, fitted: Any, offsets: Any) -> list[float]:
        return reuse(self, ok, folds, fitted, {})  # no offsets: every view is scored from its pixels

    monkeypatch.setattr(AnomalyModel, "_out_of_fold_scores", rescoring)
    slow = AnomalyModel.fit(good, SMALL)
    assert np.allclose(fast.calibration_scores, slow.calibration_scores, rtol=0.01)
    assert fast.calibration.threshold == pytest.approx(slow.calibration.threshold, rel=0.01)


def test_fold_sets_keep_the_crops_of_one_photograph_together() -> None:
    groups = [f"sheet{i // 8}.png" for i in range(48)]  # 6 photographs, 8 crops each
    folds = fold_sets(48, 5, groups)
    assert sorted(i for fold in folds for i in fold) == list(range(48)) and len(folds) == 5
    owners = [{groups[i] for i in fold} for fold in folds]
    assert all(a.isdisjoint(b) for k, a in enumerate(owners) for b in owners[k + 1 :])
    assert fold_sets(10, 5, ["a"] * 5 + ["b"] * 5) == fold_sets(10, 5)  # fewer photographs than folds
    assert fold_sets(10, 5) == [{0, 5}, {1, 6}, {2, 7}, {3, 8}, {4, 9}]


def test_scoring_through_folded_batch_norm_gives_the_same_maps(
    patchcore: AnomalyModel, good: list[np.ndarray]
) -> None:
    """Folding stays within float32 rounding: against the network in float64, the folded features
    err no more than the unfolded ones do; scores agree to 2e-4 and verdicts exactly (PatchCore's
    distances between near-equal embeddings amplify the features' last bits in the maps)."""
    import copy

    from defectscan.pipeline.scoring import CropScorer

    folded = patchcore.scorer
    assert folded.net is not patchcore.net and folded.net.memory_bank is patchcore.net.memory_bank
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.net.feature_extractor.modules())
    assert any(k.endswith("bn1.running_mean") for k in patchcore.net.state_dict())  # saved: anomalib's
    batch = folded.normalise(folded.pixels(good[:4]))
    with torch.no_grad():
        exact = copy.deepcopy(patchcore.net.feature_extractor).double()(batch.double())
        plain = patchcore.net.feature_extractor(batch)
        fast = folded.net.feature_extractor(batch)
    for name, want in exact.items():
        plain_error = float((plain[name].double() - want).abs().max())
        folded_error = float((fast[name].double() - want).abs().max())
        assert folded_error <= 2 * plain_error + 1e-6 * float(want.abs().max()), name
    a = patchcore.score(good[:6])
    patchcore.scorer = CropScorer(patchcore.config, patchcore.net, fold=False)
    try:
        b = patchcore.score(good[:6])
    finally:
        patchcore.scorer = folded
    for x, y in zip(a, b, strict=True):
        assert x.score == pytest.approx(y.score, rel=2e-4) and x.is_anomalous == y.is_anomalous
        assert np.abs(x.anomaly_map - y.anomaly_map).max() <= 0.01 * float(y.anomaly_map.max())


def test_folding_refuses_a_network_that_does_not_run_conv_then_norm() -> None:
    from defectscan.pipeline.folded import folded_copy

    class NormFirst(torch.nn.Module):  # registers conv before norm, runs norm first
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(x))

    net = NormFirst().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    probe = torch.randn(1, 3, 16, 16)
    assert folded_copy(net, probe) is None
    ordinary = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        ordinary[1].running_mean.uniform_(-1, 1)
    fused = folded_copy(ordinary, probe)
    assert fused is not None and torch.allclose(fused(probe), ordinary(probe), atol=1e-5)
