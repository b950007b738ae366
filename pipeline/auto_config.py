"""A model that configures itself from OK images alone (``train --auto``): candidate configurations
are measured against defects planted on held-out OK crops (:mod:`pipeline.planted_defects`), and the
one that separates them best is kept.

1. **Split.** A quarter of the photographs' OK crops is held out (a third or a half where a quarter
   is fewer than 8 crops); the rest trains every candidate. The held-out crops are scored as they
   are, and again with one planted defect each (kinds in turn, seeded), so the clean and the defective
   sets differ only by the defects.
2. **Candidates**, cheapest first (:func:`candidates`): today's default (PatchCore, 256 px, Lite2
   ``blocks.2, blocks.4``) first, then the same on standardised intensities (each crop stretched to one
   mean and spread: exposure between crops is not seen, faint marks gain contrast), PaDiM, PatchCore
   fused with the variation model where the crops are aligned prints, PatchCore at 384 px, PatchCore
   with a finer layer set (``blocks.1`` too: four times the patches), and PatchCore at 512 px.
3. **Criterion**: the mean of the image AUROC (clean against planted crops' scores) and the AUPRO of
   the planted defects' masks (:func:`pipeline.evaluate.aupro`, maps and masks on a 256 px grid; per
   region, so a 2 px crack counts as much as a large stain). The highest wins; a candidate must beat
   an earlier (cheaper) one by more than :data:`MARGIN` to be preferred, so the default stays where
   nothing is clearly better.
4. **Budget**: each candidate's time is estimated from the default's (by its pixels and method) and a
   candidate that would end past the budget is skipped and recorded as such.

The chosen configuration then trains on all OK crops with the user's operating point (target false-
reject rate, folds), so the threshold work holds for whatever was chosen. Every candidate's figures go
into ``model.json`` (``training.auto``) and the model card.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.evaluate import aupro, auroc
from defectscan.pipeline.model_config import DEFAULT_BUDGET_MIN, PADIM_LAYERS, ModelConfig
from defectscan.pipeline.planted_defects import KINDS, placement, planted_set
from defectscan.pipeline.training_set import reference_image

if TYPE_CHECKING:
    from defectscan.pipeline.model import AnomalyModel
    from defectscan.pipeline.runtime import Runtime

MARGIN = 0.005  # how much a costlier candidate must gain on the criterion to be preferred
GRID = 256  # px: the grid maps and masks are compared on
FINE_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
# time against PatchCore at the same size, measured (docs/benchmarks.md): a stride-4 layer quadruples
# PatchCore's patches
_COST = {"patchcore": 1.0, "padim": 1.2, "patchcore+variation": 1.25}
_FINE_COST = 3.6

# (a config, the crops it trains on, the crops it scores) -> their scores and anomaly maps
Measure = Callable[
    [ModelConfig, list[NDArray[np.uint8]], list[NDArray[np.uint8]]],
    tuple[list[float], list[NDArray[np.float32]]],
]


class Candidate(BaseModel):
    """One configuration tried, and how it separated the planted defects (None where skipped)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    method: str
    image_size: int
    layers: tuple[str, ...]
    intensity: str = "as-is"
    image_auroc: float | None = None
    aupro: float | None = None
    criterion: float | None = None
    seconds: float | None = None
    skipped: str | None = None


class AutoSearch(BaseModel):
    """What ``--auto`` tried and chose (``training.auto`` in ``model.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chosen: str
    criterion: str = "mean of image AUROC and AUPRO on planted defects"
    trained_on: int
    held_out: int
    planted: dict[str, int]
    budget_min: float
    seconds: float
    candidates: list[Candidate]


def candidates(base: ModelConfig, aligned: bool) -> list[tuple[str, ModelConfig]]:
    """The configurations ``--auto`` tries, cheapest first (the module docstring); each keeps ``base``'s
    other settings (backbone, operating point, coreset ratio)."""

    def variant(**changes: Any) -> ModelConfig:
        """``base`` changed: the method's own default views, intensities as-is unless ``changes`` say."""
        return base.changed(**{"tta_views": (), "intensity": "as-is", **changes})

    def patchcore(size: int, layers: tuple[str, ...] = (), intensity: str = "as-is") -> ModelConfig:
        return variant(method="patchcore", image_size=size, layers=layers, intensity=intensity)

    out = [
        ("patchcore-256", patchcore(256)),
        ("patchcore-256-standardised", patchcore(256, intensity="standardised")),
        ("padim-256", variant(method="padim", image_size=256, layers=PADIM_LAYERS)),
    ]
    if aligned:
        fused = variant(method="patchcore+variation", image_size=256, layers=())
        out.append(("patchcore+variation-256", fused))
    out += [
        ("patchcore-384", patchcore(384)),
        ("patchcore-256-fine", patchcore(256, FINE_LAYERS)),
        ("patchcore-512", patchcore(512)),
    ]
    return out


def cost(config: ModelConfig) -> float:
    """A configuration's training and scoring time relative to the default's (pixels times method)."""
    fine = _FINE_COST if config.method.startswith("patchcore") and "blocks.1" in config.layers else 1.0
    return (config.image_size / 256) ** 2 * _COST.get(config.method, 1.5) * fine


def separation(
    clean: Sequence[float],
    planted: Sequence[float],
    maps: Sequence[NDArray[np.float32]],
    masks: Sequence[NDArray[np.bool_]],
    clean_maps: Sequence[NDArray[np.float32]] = (),
) -> tuple[float, float]:
    """Image AUROC (clean against planted scores) and the AUPRO of the planted masks in their maps
    (clean crops' maps add OK pixels where given), on a :data:`GRID` grid."""
    image = auroc([0] * len(clean) + [1] * len(planted), [*clean, *planted]) or 0.5
    grid_maps = [cv2.resize(m, (GRID, GRID), interpolation=cv2.INTER_LINEAR) for m in [*maps, *clean_maps]]
    grid_masks = [
        cv2.resize(m.astype(np.float32), (GRID, GRID), interpolation=cv2.INTER_AREA) > 0.25 for m in masks
    ] + [np.zeros((GRID, GRID), bool)] * len(clean_maps)
    pro = aupro(np.stack(grid_maps), np.stack(grid_masks)) if grid_maps else None
    return image, pro if pro is not None else 0.0


def choose(measured: Sequence[Candidate]) -> Candidate:
    """The candidate with the best criterion; a later (costlier) one must beat the best so far by more
    than :data:`MARGIN`."""
    best: Candidate | None = None
    for cand in measured:
        if cand.criterion is None:
            continue
        if best is None or cand.criterion > (best.criterion or 0.0) + MARGIN:
            best = cand
    if best is None:
        raise InvalidArgumentError("--auto", "no candidate configuration could be measured")
    return best


def split(n: int, groups: Sequence[str] = ()) -> tuple[list[int], list[int]]:
    """Indices of the crops that train the candidates and of those held out: every 4th photograph's
    crops (every 3rd or 2nd where that holds fewer than 8 out), at least 8 crops each way."""
    if n < 16:
        raise InvalidArgumentError("--auto", f"needs at least 16 OK images to hold some out, got {n}")
    keys = list(groups) if len(groups) == n else [str(i) for i in range(n)]
    names = list(dict.fromkeys(keys))
    for every in (4, 3, 2):  # a quarter of the photographs, or more where that holds too few crops out
        held_names = set(names[every - 1 :: every])
        held = [i for i, k in enumerate(keys) if k in held_names]
        train = [i for i, k in enumerate(keys) if k not in held_names]
        if len(held) >= 8 and len(train) >= 8:
            break
    else:
        raise InvalidArgumentError("--auto", "too few photographs to hold some out: give more OK images")
    return train, held


def search(
    ok: Sequence[NDArray[np.uint8]],
    base: ModelConfig,
    measure: Measure,
    groups: Sequence[str] = (),
    budget_min: float = DEFAULT_BUDGET_MIN,
    seed: int = 0,
    tried: Sequence[tuple[str, ModelConfig]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[ModelConfig, AutoSearch]:
    """The configuration ``--auto`` chooses for ``ok`` and the record of the search (module docstring).

    ``measure(config, train, crops)`` trains ``config`` on ``train`` and returns the scores and anomaly
    maps of ``crops`` (:func:`measured_by_training`); ``tried`` replaces :func:`candidates`."""
    train_idx, held_idx = split(len(ok), groups)
    train = [ok[i] for i in train_idx]
    held = [ok[i] for i in held_idx]
    at = placement(reference_image(train))
    planted = list(planted_set(held, at, seed, KINDS))
    configs = list(tried) if tried is not None else candidates(base, aligned=at.printed)
    start = clock()
    unit: float | None = None  # seconds per unit of cost, from the first candidate measured
    results: list[Candidate] = []
    for name, config in configs:
        described = {
            "name": name,
            "method": config.method,
            "image_size": config.image_size,
            "layers": config.layers,
            "intensity": config.intensity,
        }
        spent = clock() - start
        if unit is not None and spent + unit * cost(config) > budget_min * 60:
            results.append(Candidate(**described, skipped=f"over the budget ({budget_min:g} min)"))
            log(f"{name}: skipped, it would pass the budget")
            continue
        began = clock()
        scores, maps = measure(config, train, [*held, *(p.image for p in planted)])
        took = clock() - began
        unit = unit if unit is not None else took / cost(config)
        image, pro = separation(
            scores[: len(held)],
            scores[len(held) :],
            maps[len(held) :],
            [p.mask for p in planted],
            maps[: len(held)],
        )
        cand = Candidate(
            **described,
            image_auroc=round(image, 4),
            aupro=round(pro, 4),
            criterion=round((image + pro) / 2, 4),
            seconds=round(took, 1),
        )
        results.append(cand)
        log(f"{name}: image AUROC {image:.4f}, AUPRO {pro:.4f} ({took:.0f} s)")
    best = choose(results)
    chosen = dict(configs)[best.name]
    record = AutoSearch(
        chosen=best.name,
        trained_on=len(train),
        held_out=len(held),
        planted=dict(Counter(p.kind for p in planted)),
        budget_min=budget_min,
        seconds=round(clock() - start, 1),
        candidates=results,
    )
    return chosen, record


def trained_for_search(
    config: ModelConfig, train: Sequence[NDArray[np.uint8]], runtime: Runtime | None = None
) -> AnomalyModel:
    """``config`` trained on ``train`` as the search trains its candidates: a small holdout calibrates
    it, no folds (they only set the threshold, which the search does not use)."""
    from defectscan.pipeline.model import AnomalyModel  # torch: only when a search runs

    return AnomalyModel.fit(train, config.changed(folds=0, holdout=0.1), runtime=runtime)


def measured_by_training(
    config: ModelConfig,
    train: list[NDArray[np.uint8]],
    crops: list[NDArray[np.uint8]],
    runtime: Runtime | None = None,
) -> tuple[list[float], list[NDArray[np.float32]]]:
    """The search's :data:`Measure`: ``config`` trained on ``train`` (its networks in ``runtime``)
    scores ``crops``."""
    results = trained_for_search(config, train, runtime).score(crops)
    return [r.score for r in results], [r.anomaly_map for r in results]


def fit_auto(
    ok: Sequence[NDArray[np.uint8]],
    base: ModelConfig,
    fit: Callable[[ModelConfig], AnomalyModel],
    groups: Sequence[str] = (),
    budget_min: float = DEFAULT_BUDGET_MIN,
    log: Callable[[str], None] = lambda _: None,
    runtime: Runtime | None = None,
) -> AnomalyModel:
    """``train --auto``: the search on ``ok`` (its candidates' networks in ``runtime``), then
    ``fit(chosen)``: the chosen configuration trained on all OK images with ``base``'s operating point
    (and whatever else ``fit`` adds: auxiliary images, labelled defects); the search is recorded as
    ``training.auto``."""
    measure = partial(measured_by_training, runtime=runtime)
    chosen, record = search(ok, base, measure, groups, budget_min, base.seed, log=log)
    log(f"chosen: {record.chosen}; training it on all {len(ok)} OK images")
    model = fit(chosen)
    model.record.training["auto"] = record.model_dump(mode="json")
    return model
