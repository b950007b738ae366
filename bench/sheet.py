"""The whole local job per sheet, in one run: synthetic 2400x1200 sheets with 8 instances each,
segmented, scored with TTA by the model of ``make demo``, graded, rendered, encoded and written (the
local ``inspect`` path, report included).

* **sheets/s and crops/s** of that path, best of ``--repeats``;
* **per stage**, the share of the job's time: decode, segment, crop, preprocess, backbone, search, maps
  (the rest of scoring: TTA merge, map generation, back to crop size), grade, render, encode, write.
  The stages are timed by wrapping the functions the job calls (the job itself is unchanged);
* **the floor for scoring**: the backbone alone on the same crops and TTA views, already preprocessed,
  in the same batches; scoring's time over it;
* **anomalib's path** (``--anomalib``): ``Engine.predict`` with its default visualiser on the same
  crops (as PNG files), with anomalib's own PatchCore holding our weights and memory bank;
* **against a baseline** (``--baseline REF``): the same job, the same sheets and model, with the code
  of git ``REF`` (checked out with ``git worktree``), the two run alternately in child processes;
  the ratio of sheets/s.

    make demo && .venv/bin/python bench/sheet.py [--sheets 8] [--baseline main] [--runtime auto|torch]
        [--anomalib] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
SCALES = "0.95:1.05:0.05"  # as the demo segments

# The job, as a script a child process runs with either this tree's code or a baseline's: only names
# both have (the local inspect run), so a baseline from before this bench measures the same thing.
JOB = r"""
import inspect, json, sys, time, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
from defectscan.pipeline.images import decode_image
from defectscan.pipeline import inspection
from defectscan.pipeline.inspection import inspect_image
from defectscan.pipeline.model import AnomalyModel
from defectscan.pipeline.outputs import OutputOptions
from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range
from defectscan.pipeline.verdict import ModelInfo
from defectscan.producer.inspect_files import run_inspection
from defectscan.worker.storage import LocalStorage

model_dir, template, sheets, out, repeats, runtime, cache = sys.argv[1:8]
model = AnomalyModel.load(model_dir)
if hasattr(model, "use_runtime"):  # a tree with runtimes: the one asked for (a baseline has torch only)
    model = model.use_runtime(runtime, Path(cache))
segmenter = Segmenter(decode_image(Path(template).read_bytes(), template),
                      SegmentOptions(scales=parse_range("@SCALES@")))
items = sorted((p.relative_to(sheets).as_posix(), p) for p in Path(sheets).rglob("*.png"))
info = ModelInfo(product="bench", version=str(getattr(model, "version", None)), method=model.config.method)
options = OutputOptions()  # what `inspect` writes by default, in either tree
own = {"pictures": options.pictures} if "pictures" in inspect.signature(inspect_image).parameters else {}
if hasattr(inspection, "Inspector"):  # images share forward passes
    job = inspection.Inspector(model, segmenter, "bench", pictures=options.pictures).many
else:
    job = lambda data, key: inspect_image(data, key, model, segmenter, "bench", **own)
best = float("inf")
for r in range(int(repeats)):
    start = time.perf_counter()
    run_inspection(items, job, info, LocalStorage(Path(out) / str(r)), options)
    best = min(best, time.perf_counter() - start)
print(json.dumps({"seconds": best, "sheets": len(items)}))
""".replace("@SCALES@", SCALES)


def write_sheets(folder: Path, count: int) -> None:
    from defectscan.pipeline.synth import SheetSpec
    from defectscan.producer.synth_files import write_sheet_images
    from defectscan.worker.storage import LocalStorage

    write_sheet_images(LocalStorage(folder), count, 7, 0.25, SheetSpec())


def run_job(
    python_path: str, model: Path, template: Path, sheets: Path, out: Path, repeats: int, runtime: str
) -> float:
    """Seconds per sheet of the job in a child process with ``python_path`` first on its path (its
    networks in ``runtime`` where that tree has runtimes; compiled networks cached beside ``out``)."""
    env = {**os.environ, "PYTHONPATH": python_path}
    cache = str(out.parent / "ir-cache")
    args = [sys.executable, "-c", JOB, str(model), str(template), str(sheets), str(out), str(repeats)]
    args += [runtime, cache]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True, cwd=python_path)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return float(figures["seconds"]) / int(figures["sheets"])


class Stages:
    """Seconds spent in named stages, by wrapping functions and methods while a job runs (on any
    thread: the writer thread's encoding overlaps the next image's inspection, so shares may add up
    to more than the wall time)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._local = threading.local()
        self._lock = threading.Lock()

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._local, "depth", 0):  # a stage inside a stage counts once, in the outer one
                return fn(*args, **kwargs)
            self._local.depth = 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[stage] += time.perf_counter() - start
                self._local.depth = 0

        return timed

    @contextmanager
    def patched(self, targets: list[tuple[object, str, str]]) -> Iterator[None]:
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
        try:
            for owner, name, stage in targets:
                setattr(owner, name, self.wrap(stage, getattr(owner, name)))
            yield
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)


def staged_job(model: Any, segmenter: Any, sheets: Path, out: Path) -> tuple[dict[str, float], float, int]:
    """The job in this process with its stages timed: seconds per stage, total seconds, crops."""
    from defectscan.pipeline import inspection, outputs, scoring
    from defectscan.pipeline.outputs import OutputOptions
    from defectscan.pipeline.preprocess import Normaliser
    from defectscan.pipeline.segment import Segmenter
    from defectscan.pipeline.verdict import ModelInfo
    from defectscan.producer.inspect_files import run_inspection
    from defectscan.worker.storage import LocalStorage

    stages = Stages()
    options = OutputOptions()  # what `inspect` writes by default
    net = model.scorer.net
    targets: list[tuple[object, str, str]] = [
        (inspection, "decode_oriented", "decode"),
        (Segmenter, "find", "segment"),
        (Segmenter, "crops", "crop"),
        (Segmenter, "inside", "crop"),
        (scoring, "filled", "preprocess"),
        (scoring.CropScorer, "pixels", "preprocess"),
        (Normaliser, "__call__", "preprocess"),
        (model.scorer.net.feature_extractor, "forward", "backbone"),
        (type(net), "nearest_neighbors", "search"),
        (type(net), "compute_anomaly_score", "search"),
        (inspection, "grade_regions", "grade"),
        (inspection, "heatmap_overlay", "render"),
        (inspection, "label_defects", "render"),
        (outputs, "encode_png", "encode"),
        (outputs, "colour_mask", "encode"),
        (LocalStorage, "put", "write"),
    ]
    items = sorted((p.relative_to(sheets).as_posix(), p) for p in sheets.rglob("*.png"))
    info = ModelInfo(product="bench", version=model.version, method=model.config.method)
    scored_ms = 0.0
    crops = 0

    inspector = inspection.Inspector(model, segmenter, "bench", pictures=options.pictures)

    def inspect(reads: Any) -> Any:
        nonlocal scored_ms, crops
        for result in inspector.many(reads):
            scored_ms += result.verdict.timings_ms.get("score", 0.0)
            crops += len(result.verdict.instances)
            yield result

    with stages.patched(targets):
        start = time.perf_counter()
        run_inspection(items, inspect, info, LocalStorage(out), options)
        total = time.perf_counter() - start
    seconds = dict(stages.seconds)
    inner = sum(seconds.get(k, 0.0) for k in ("preprocess", "backbone", "search"))
    seconds["maps"] = max(scored_ms / 1000 - inner, 0.0)
    return seconds, total, crops


def sheet_crops(segmenter: Any, sheets: Path) -> tuple[list[Any], list[Any]]:
    """Every instance's crop of the sheets under ``sheets``, and which of its pixels lie in its sheet."""
    from defectscan.pipeline.images import decode_image

    crops, inside = [], []
    for path in sorted(sheets.rglob("*.png")):
        image = decode_image(path.read_bytes(), path.name)
        found = segmenter.find(image)
        crops += segmenter.crops(image, found)
        inside += segmenter.inside(image, found)
    return crops, inside


def backbone_floor(model: Any, segmenter: Any, sheets: Path) -> tuple[float, float]:
    """Seconds of the backbone alone on the job's crops and views, batched as scoring batches them, and
    seconds of scoring the same crops (``model.score``), measured interleaved, best of 3."""
    import torch

    from defectscan.pipeline import tta

    crops, inside = sheet_crops(segmenter, sheets)
    from defectscan.pipeline.scoring import crops_per_forward

    scorer, step, views = model.scorer, crops_per_forward(model.config), model.config.tta_views
    batches = [
        scorer.normalise(tta.expand(scorer.pixels(crops[i : i + step]), views))
        for i in range(0, len(crops), step)
    ]
    floor, scoring = float("inf"), float("inf")
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            for batch in batches:
                model.scorer.net.feature_extractor(batch)  # the backbone scoring runs
            floor = min(floor, time.perf_counter() - start)
            start = time.perf_counter()
            model.score(crops, inside=inside)
            scoring = min(scoring, time.perf_counter() - start)
    return floor, scoring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sheets", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", type=Path, default=Path("demo-output/model"))
    parser.add_argument("--template", type=Path, default=Path("demo-output/good/template.png"))
    parser.add_argument("--baseline", help="A git ref to measure the same job against (git worktree).")
    parser.add_argument("--rounds", type=int, default=3, help="With --baseline: alternations.")
    parser.add_argument("--anomalib", action="store_true", help="Also time anomalib's Engine.predict.")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--runtime", default="auto", choices=("auto", "torch", "openvino"), help="Where the networks run."
    )
    args = parser.parse_args()

    from defectscan.pipeline.images import decode_image
    from defectscan.pipeline.model import AnomalyModel
    from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range

    figures: dict[str, Any] = {"sheets": args.sheets}
    with tempfile.TemporaryDirectory(prefix="defectscan-sheet-") as folder:
        work = Path(folder)
        write_sheets(work / "sheets", args.sheets)
        model_dir, template = args.model.resolve(), args.template.resolve()
        model = AnomalyModel.load(model_dir).use_runtime(args.runtime, work / "ir-cache")
        figures["runtime"] = model.runtime_used
        segmenter = Segmenter(
            decode_image(template.read_bytes(), str(template)), SegmentOptions(scales=parse_range(SCALES))
        )
        staged_job(model, segmenter, work / "sheets", work / "warm")  # warm-up: caches, bank index
        seconds, total, crops = staged_job(model, segmenter, work / "sheets", work / "staged")
        figures.update(
            sheets_per_s=args.sheets / total,
            crops_per_s=crops / total,
            stage_share={k: v / total for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])},
            other_share=max(1 - sum(seconds.values()) / total, 0.0),
        )
        floor, scoring = backbone_floor(model, segmenter, work / "sheets")
        figures.update(backbone_floor_s=floor, scoring_s=scoring, scoring_over_floor=scoring / floor)
        if args.anomalib:
            sys.path.insert(0, str(ROOT / "bench"))
            from score import engine_predict  # bench/score.py: anomalib's path on our weights

            crops_list = []
            for path in sorted((work / "sheets").rglob("*.png")):
                image = decode_image(path.read_bytes(), path.name)
                crops_list += segmenter.crops(image, segmenter.find(image))
            anomalib_rate = engine_predict(model, crops_list, work)
            figures.update(
                anomalib_crops_per_s=anomalib_rate, ours_over_anomalib=figures["crops_per_s"] / anomalib_rate
            )
        if args.baseline:
            base = work / "baseline"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(base), args.baseline],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            try:
                ours, theirs = [], []
                for r in range(args.rounds):
                    for tree, runs, name in ((base, theirs, "b"), (ROOT, ours, "o")):
                        out = work / f"{name}{r}"
                        runs.append(
                            run_job(
                                str(tree),
                                model_dir,
                                template,
                                work / "sheets",
                                out,
                                args.repeats,
                                args.runtime,
                            )
                        )
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
            figures.update(
                baseline=args.baseline,
                seconds_per_sheet=statistics.median(ours),
                baseline_seconds_per_sheet=statistics.median(theirs),
                speedup_over_baseline=statistics.median(theirs) / statistics.median(ours),
            )
    views = ",".join(model.config.tta_views)
    print(f"whole job, {args.sheets} sheets of 8 instances (TTA {views}; networks in {figures['runtime']}):")
    print(f"  {figures['sheets_per_s']:.3f} sheets/s, {figures['crops_per_s']:.2f} crops/s (stages timed)")
    for stage, share in figures["stage_share"].items():
        print(f"  {stage:<11} {100 * share:5.1f} %")
    print(f"  {'other':<11} {100 * figures['other_share']:5.1f} %")
    print(
        f"scoring {figures['scoring_s']:.2f} s, backbone alone {figures['backbone_floor_s']:.2f} s: "
        f"{figures['scoring_over_floor']:.2f}x its floor (target <= 1.5x)"
    )
    if "anomalib_crops_per_s" in figures:
        print(
            f"anomalib Engine.predict + visualiser: {figures['anomalib_crops_per_s']:.2f} crops/s; "
            f"the whole job here is {figures['ours_over_anomalib']:.2f}x its rate"
        )
    if "speedup_over_baseline" in figures:
        print(
            f"against {args.baseline}: {figures['seconds_per_sheet']:.2f} s/sheet vs "
            f"{figures['baseline_seconds_per_sheet']:.2f}: "
            f"{figures['speedup_over_baseline']:.2f}x (target >= 2x)"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
