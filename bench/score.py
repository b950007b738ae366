"""Scoring and training speed on CPU, measured in one run on the same synthetic crops.

Reports, for our patchcore model at 256 px (1 % coreset, the default), and beside it the variation
model and the patchcore+variation fusion at the same size:
* images/s at batch 8 with 1 TTA view (a model trained without views) and with 4 (identity, hflip,
  vflip, rot180; a model trained with them), end to end from uint8 crops to maps at crop resolution;
* the floor: the backbone's forward pass alone on the same, already preprocessed batches;
* anomalib's ``Engine.predict`` over the same images (saved as PNG), with anomalib's own PatchCore
  network holding our trained weights and memory bank (median of 3 runs after a warm-up);
* fit time for 300 crops with a 10 % coreset, and the fitting process's peak memory (max RSS);
* coreset quality: agreement of image scores between our coreset and anomalib's exact greedy;
* the share of the memory bank the CPU search compares a test patch with (see
  :mod:`pipeline.bank_search`: the bounds rule out most of the bank when features are clustered, as
  the synthetic print crops are, and next to nothing on textures, where the full product runs).

The scoring speeds are measured interleaved (each repetition runs every variant once) and the median
of each is kept, so that a change in the machine's speed during the run moves every figure alike.
Synthetic print crops by default; ``--data DIR`` (an MVTec-layout folder) takes its train/good images
for training and an even sample of its test images for scoring instead.

    .venv/bin/python bench/score.py [--train 300] [--test 64] [--data DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from itertools import islice
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from defectscan.pipeline.images import encode_png  # noqa: E402
from defectscan.pipeline.model import AnomalyModel, ModelConfig  # noqa: E402
from defectscan.pipeline.networks import BankPatchcore  # noqa: E402
from defectscan.pipeline.synth import instance_crops  # noqa: E402
from defectscan.worker.datasets import read_folder  # noqa: E402


def crops(count: int, seed: int, defect_rate: float) -> list[np.ndarray]:
    return [crop for crop, _ in islice(instance_crops(seed, defect_rate), count)]


def training_images(count: int, data: Path | None) -> list[np.ndarray]:
    if data is None:
        return crops(count, 1, 0.0)
    return read_folder(data / "train" / "good").images[:count]


def test_images(count: int, data: Path | None) -> list[np.ndarray]:
    if data is None:
        return crops(count, 2, 0.25)
    every = read_folder(data / "test").images  # good and defective, sorted by type
    return [every[round(i * len(every) / count)] for i in range(min(count, len(every)))]


def timed_together(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Median seconds of each function, the functions interleaved in every repetition."""
    for fn in fns.values():
        fn()  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in runs.items()}


def searched_share(model: AnomalyModel, images: list[np.ndarray]) -> float:
    """Mean share of the bank the CPU search compares each patch of ``images`` with."""
    net = model.net
    assert isinstance(net, BankPatchcore)
    with torch.no_grad():
        features = net.feature_extractor(model.scorer.normalise(model.scorer.pixels(images)))
        pooled = {layer: net.feature_pooler(feature) for layer, feature in features.items()}
        embedding = net.reshape_embedding(net.generate_embedding(pooled))
    return net._bank_index().searched_fraction(embedding)


def fit_in_child(train: int, coreset: float, out: str, data: Path | None) -> None:
    """Fit in a child process so that its peak memory can be read on its own. No view augmentation:
    the target is for 300 crops."""
    images = training_images(train, data)
    start = time.perf_counter()
    model = AnomalyModel.fit(images, ModelConfig(coreset_ratio=coreset, tta_views=("identity",)))
    model.record.timings_s = {"fit": time.perf_counter() - start}
    model.save(out)
    Path(out, "fit_s").write_text(str(model.record.timings_s["fit"]))


def engine_predict(model: AnomalyModel, images: list[np.ndarray], work: Path) -> float:
    from anomalib.engine import Engine
    from anomalib.models import Patchcore
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms import v2

    folder = work / "predict"
    folder.mkdir()
    for i, img in enumerate(images):
        (folder / f"{i:04d}.png").write_bytes(encode_png(img))
    pre = PreProcessor(
        transform=v2.Compose([v2.Resize((256, 256), antialias=True), v2.Normalize([0.5] * 3, [0.5] * 3)])
    )
    lightning = Patchcore(
        backbone="tf_efficientnet_lite2",
        layers=["blocks.2", "blocks.4"],
        pre_trained=False,
        pre_processor=pre,
    )
    # anomalib's own network class (its search, its blur, all seven backbone stages) with our weights
    # and memory bank: the stages we trim keep their random initial weights, which no output reads
    ours = {k: v for k, v in model.net.state_dict().items() if k not in ("memory_bank", "bank_penalty")}
    missing, unexpected = lightning.model.load_state_dict(ours, strict=False)
    trimmed = [k for k in missing if k != "memory_bank"]
    assert not unexpected and all(".blocks.5." in k or ".blocks.6." in k for k in trimmed), missing
    lightning.model.memory_bank = model.net.memory_bank.clone()
    engine = Engine(
        accelerator="cpu", devices=1, logger=False, default_root_dir=work, enable_progress_bar=False
    )
    seconds = timed_together(
        {"predict": lambda: engine.predict(lightning, data_path=folder, return_predictions=True)}, repeats=3
    )
    return len(images) / seconds["predict"]


def coreset_agreement(train: list[np.ndarray], test: list[np.ndarray]) -> dict[str, float]:
    """Image scores with our coreset vs anomalib's exact k-center greedy, same embeddings and ratio."""
    from anomalib.models.components import KCenterGreedy
    from scipy.stats import spearmanr

    from defectscan.pipeline.training_set import holdout_indices

    model = AnomalyModel.fit(train, ModelConfig(coreset_ratio=0.1, tta_views=("identity",)))
    held = holdout_indices(len(train), model.config.holdout)
    used = [img for i, img in enumerate(train) if i not in held]
    net = model.net
    with torch.no_grad():
        net.train()
        embeddings = torch.cat(
            [net(batch) for batch, _ in model._training_batches(used, [1.0] * len(used))()]
        )
        net.embedding_store.clear()
        net.eval()
    start = time.perf_counter()
    idx = KCenterGreedy(embeddings, 0.1).select_coreset_idxs()
    exact_s = time.perf_counter() - start
    exact_net = copy.deepcopy(net)
    exact_net.memory_bank = embeddings[torch.as_tensor(idx)].contiguous()
    exact = AnomalyModel(model.config, exact_net, model.calibration, model.record)
    a = np.array([r.score for r in model.score(test, use_tta=False)])
    b = np.array([r.score for r in exact.score(test, use_tta=False)])
    return {
        "patches": float(embeddings.shape[0]),
        "exact_coreset_s": exact_s,
        "spearman": float(spearmanr(a, b).statistic),
        "mean_rel_diff": float(np.mean(np.abs(a - b) / np.abs(b))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--coreset", type=float, default=0.1)
    parser.add_argument("--agreement-train", type=int, default=40)
    parser.add_argument("--data", type=Path, help="an MVTec-layout folder instead of synthetic crops")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict[str, object] = {"threads": torch.get_num_threads(), "data": str(args.data or "synthetic")}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "model")
        child = multiprocessing.get_context("spawn").Process(
            target=fit_in_child, args=(args.train, args.coreset, model_dir, args.data)
        )
        child.start()
        child.join()
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        fit_s = float(Path(model_dir, "fit_s").read_text())
        report["fit"] = {
            "crops": args.train,
            "coreset": args.coreset,
            "seconds": fit_s,
            "peak_rss_mb": peak_mb,
        }
        print(
            f"fit: {args.train} crops, {args.coreset:.0%} coreset: {fit_s:.1f} s, peak RSS {peak_mb:.0f} MB",
            flush=True,
        )

        train = training_images(args.train, args.data)
        test = test_images(args.test, args.data)
        began = time.perf_counter()
        one = AnomalyModel.fit(train, ModelConfig(tta_views=("identity",)))
        one_fit_s = time.perf_counter() - began
        began = time.perf_counter()
        four = AnomalyModel.fit(train, ModelConfig(tta_views=("identity", "hflip", "vflip", "rot180")))
        four_fit_s = time.perf_counter() - began
        began = time.perf_counter()
        variation = AnomalyModel.fit(train, ModelConfig(method="variation"))
        variation_fit_s = time.perf_counter() - began
        fused = AnomalyModel.fit(train, ModelConfig(method="patchcore+variation", tta_views=("identity",)))
        report["default_fits"] = {
            "1_view_s": one_fit_s,
            "4_views_s": four_fit_s,
            "variation_s": variation_fit_s,
        }
        print(f"fit, {args.train} crops, 1 % coreset: {one_fit_s:.1f} s; with 4 views: {four_fit_s:.1f} s")
        model = one
        batches = [
            model.scorer.normalise(model.scorer.pixels(test[i : i + 8])) for i in range(0, len(test), 8)
        ]
        extractor = model.net.feature_extractor

        def floor() -> None:
            with torch.no_grad():
                for batch in batches:
                    extractor(batch)

        seconds = timed_together(
            {
                "backbone_floor": floor,
                "ours_1_view": lambda: one.score(test, batch_size=8),
                "ours_4_views": lambda: four.score(test, batch_size=8),
                "variation": lambda: variation.score(test, batch_size=8),
                "patchcore+variation_1_view": lambda: fused.score(test, batch_size=8),
            }
        )
        speeds = {name: len(test) / value for name, value in seconds.items()}
        report["bank_searched_share"] = searched_share(one, test[:8])
        print(f"share of the bank searched per patch: {report['bank_searched_share']:.3f}", flush=True)
        speeds["anomalib_engine_predict"] = engine_predict(model, test, Path(tmp))
        report["images_per_s"] = speeds
        report["ratios"] = {
            "ours_1_view / floor": speeds["ours_1_view"] / speeds["backbone_floor"],
            "ours_1_view / engine_predict": speeds["ours_1_view"] / speeds["anomalib_engine_predict"],
            "ours_4_views / ours_1_view": speeds["ours_4_views"] / speeds["ours_1_view"],
            "variation / ours_1_view": speeds["variation"] / speeds["ours_1_view"],
        }
        for key, value in speeds.items():
            print(f"{key:28} {value:8.2f} images/s", flush=True)
        for key, value in report["ratios"].items():  # type: ignore[union-attr]
            print(f"{key:28} {value:8.2f}x", flush=True)
        agreement = coreset_agreement(crops(args.agreement_train, 3, 0.0), crops(48, 4, 0.5))
        report["coreset_agreement"] = agreement
        print(f"coreset agreement with exact greedy: {json.dumps(agreement)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
