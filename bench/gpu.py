"""The job on the device it runs on (CUDA, or the CPU with ``--device cpu``), in one run; ``bench/gpu.sh``
installs and runs it. On synthetic 2400x1200 sheets of 8 instances, with a default model (PatchCore,
256 px, two Lite2 stages) trained on clean sheets on the same device:

1. **scoring**: crops/s of ``model.score`` on the sheets' crops with TTA off and with the default
   views, the crops of several images in one forward (:func:`pipeline.scoring.crops_per_forward`;
   fp16 autocast on CUDA), best of 3 after a warm-up;
2. **the whole job**: ``--processes`` worker processes (default: 8 with CUDA, one per core on the
   CPU), each given its share of the cores (one compute thread per core) and all sharing the device,
   each running the local job (decode, segment, score, grade, render, encode, write) on its share of
   the sheets, started together once each has loaded the model: sheets/s, and the mean milliseconds
   per stage from the verdicts, which say what limits it;
3. **CUDA against the CPU**: the same sheets inspected in a process that sees no GPU; every verdict
   and instance decision must agree, except instances whose CPU score lies within ``--tolerance``
   (relative) of the threshold, and every instance score must agree within ``--tolerance``. With
   ``--device cpu`` both runs are on the CPU (a check of the path, and of determinism).

Prints the figures and writes them as JSON (``--json``). Targets on an H200: at least 1,000 crops/s at
256 px with TTA off, at least 20 sheets/s for the whole job with 8 processes.

    .venv/bin/python bench/gpu.py [--device cuda|cpu] [--sheets 20] [--processes 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
ANGLES = "-3:3:1"
TARGETS = {"crops_per_s_tta_off": 1000.0, "sheets_per_s": 20.0}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _segmenter(template: Path) -> Any:
    from defectscan.pipeline.images import decode_image
    from defectscan.pipeline.segment import Segmenter, SegmentOptions, parse_range

    reference = decode_image(template.read_bytes(), str(template))
    return Segmenter(reference, SegmentOptions(angles=parse_range(ANGLES)))


def prepare(work: Path, sheets: int, train_sheets: int, image_size: int) -> tuple[Path, Path, list[str]]:
    """Sheets on disk, the template, and a model trained on this device: (model dir, template, keys)."""
    from defectscan.pipeline.images import encode_png
    from defectscan.pipeline.model import AnomalyModel, ModelConfig
    from defectscan.pipeline.synth import SheetSpec, reference_template
    from defectscan.producer.synth_files import aligned_ok_crops, write_sheet_images
    from defectscan.worker.storage import LocalStorage

    spec = SheetSpec()
    template = work / "template.png"
    template.write_bytes(encode_png(reference_template()))
    keys = write_sheet_images(LocalStorage(work / "sheets"), sheets, 31, 0.3, spec)
    crops = aligned_ok_crops(_segmenter(template), train_sheets, 99, spec)
    model = AnomalyModel.fit(crops, ModelConfig(image_size=image_size))
    return model.save(work / "model"), template, keys


def scoring_rates(model_dir: Path, template: Path, sheets: Path) -> dict[str, Any]:
    """Crops/s of scoring with TTA off and on, every crop of the sheets, best of 3 after a warm-up."""
    from sheet import sheet_crops  # bench/sheet.py, beside this script

    from defectscan.pipeline.model import AnomalyModel
    from defectscan.pipeline.scoring import crops_per_forward

    model = AnomalyModel.load(model_dir)
    crops, inside = sheet_crops(_segmenter(template), sheets)
    rates: dict[str, Any] = {"crops": len(crops), "image_size": model.config.image_size}
    for name, views in (("tta_off", ("identity",)), ("tta_on", model.config.tta_views)):
        variant = model.with_views(views)
        step = crops_per_forward(variant.config)
        variant.score(crops[:step], inside=inside[:step], batch_size=step)  # warm-up
        best = float("inf")
        for _ in range(3):
            _sync()
            start = time.perf_counter()
            variant.score(crops, inside=inside, batch_size=step)
            _sync()
            best = min(best, time.perf_counter() - start)
        rates[f"crops_per_s_{name}"] = len(crops) / best
        rates[f"crops_per_forward_{name}"] = step
        rates[f"views_{name}"] = list(views)
    return rates


def child(args: argparse.Namespace) -> None:
    """One worker's share of the whole job: load, warm up, say ready, wait for the go, run, report."""
    from defectscan.pipeline.inspection import Inspector
    from defectscan.pipeline.model import AnomalyModel
    from defectscan.pipeline.outputs import OutputOptions
    from defectscan.pipeline.verdict import ModelInfo
    from defectscan.producer.inspect_files import run_inspection
    from defectscan.worker.cores import configure, threads_per_process
    from defectscan.worker.storage import LocalStorage

    threads = configure(threads_per_process(1))
    model = AnomalyModel.load(args.model)
    inspector = Inspector(model, _segmenter(args.template), "bench", pictures=OutputOptions().pictures)
    info = ModelInfo(product="bench", version=model.version, method=model.config.method)
    items = [(key, args.sheets_dir / key) for key in args.keys.split(",") if key]
    run_inspection(items[:1], inspector.many, info, LocalStorage(args.out / "warm"))
    print(json.dumps({"ready": True, "threads": threads}), flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    run_inspection(items, inspector.many, info, LocalStorage(args.out / "run"))
    print(json.dumps({"seconds": time.perf_counter() - start, "images": len(items)}), flush=True)


def whole_job(
    processes: int, model: Path, template: Path, sheets: Path, keys: list[str], out: Path, cpu_only: bool
) -> dict[str, Any]:
    """The job in ``processes`` processes started together, each given its share of the cores."""
    from defectscan.worker.cores import core_slices

    env = {k: v for k, v in os.environ.items() if k != "DEFECTSCAN_TORCH_THREADS"}
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""
    shares = [keys[i::processes] for i in range(processes)]
    procs = []
    for index, (given, share) in enumerate(zip(core_slices(processes), shares, strict=True)):
        args = [sys.executable, __file__, "--child", "--model", str(model), "--template", str(template)]
        args += ["--sheets-dir", str(sheets), "--keys", ",".join(share), "--out", str(out / str(index))]
        procs.append(
            subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=lambda c=given: os.sched_setaffinity(0, c),  # type: ignore[misc]
            )
        )
    threads = [json.loads(_line(p))["threads"] for p in procs]  # every process loaded and warm
    start = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reports = [json.loads(_line(p)) for p in procs]
    seconds = time.perf_counter() - start
    for proc in procs:
        if proc.wait(60) != 0:
            raise RuntimeError(f"a job process failed with status {proc.returncode}")
    verdicts = load_verdicts(out)
    stages: dict[str, float] = {}
    for verdict in verdicts.values():
        for stage, ms in (verdict.get("timings_ms") or {}).items():
            stages[stage] = stages.get(stage, 0.0) + ms / len(verdicts)
    return {
        "processes": processes,
        "threads_per_process": threads,
        "sheets_per_s": len(keys) / seconds,
        "slowest_process_s": max(r["seconds"] for r in reports),
        "stage_ms_per_sheet": {k: round(v, 1) for k, v in stages.items()},
        "_verdicts": verdicts,
    }


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a job process ended early with status {proc.wait()}")
    return line


def load_verdicts(out: Path) -> dict[str, dict[str, Any]]:
    """The run's verdicts by image key."""
    from defectscan.pipeline.outputs import is_verdict_key

    found = {}
    for path in sorted(out.glob("*/run/**/*.json")):
        if is_verdict_key(path.name) and path.name != "summary.json":
            verdict = json.loads(path.read_text())
            found[verdict["image"]["key"]] = verdict
    return found


def agreement(device: dict[str, Any], cpu: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """How the device's verdicts agree with the CPU's (see the module's docstring)."""
    worst, flips, borderline, instances = 0.0, [], 0, 0
    for key, ref in cpu.items():
        got = device.get(key)
        if got is None or len(got["instances"]) != len(ref["instances"]):
            flips.append(key)
            continue
        near_line = False
        for a, b in zip(got["instances"], ref["instances"], strict=True):
            instances += 1
            worst = max(worst, abs(a["score"] - b["score"]) / max(abs(b["score"]), 1e-9))
            near = abs(b["score"] - b["threshold"]) <= tolerance * abs(b["threshold"])
            borderline += near
            near_line |= near
            if a["is_anomalous"] != b["is_anomalous"] and not near:
                flips.append(f"{key}#{b['index']}")
        if got["verdict"] != ref["verdict"] and not near_line:
            flips.append(key)
    return {
        "images": len(cpu),
        "instances": instances,
        "tolerance": tolerance,
        "max_relative_score_difference": worst,
        "borderline_instances": borderline,
        "disagreements": flips,
        "agree": not flips and worst <= tolerance,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--sheets", type=int, default=20)
    parser.add_argument("--train-sheets", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--processes", type=int, default=0, help="default: 8 with CUDA, a core each on CPU")
    parser.add_argument("--tolerance", type=float, default=0.02, help="relative, for scores")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--template", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sheets-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keys", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    from defectscan.worker.cores import cores_given

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device (use --device cpu to run on the CPU)")
    processes = args.processes or (8 if args.device == "cuda" else cores_given())
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "cores": cores_given(),
        "sheets": args.sheets,
    }
    with tempfile.TemporaryDirectory(prefix="defectscan-gpu-") as folder:
        work = Path(folder)
        start = time.perf_counter()
        model, template, keys = prepare(work, args.sheets, args.train_sheets, args.image_size)
        figures["train_s"] = time.perf_counter() - start
        figures["scoring"] = scoring_rates(model, template, work / "sheets")
        run = whole_job(processes, model, template, work / "sheets", keys, work / "device", False)
        reference = whole_job(1, model, template, work / "sheets", keys, work / "cpu", True)
        figures["whole_job"] = {k: v for k, v in run.items() if not k.startswith("_")}
        figures["cpu_reference_sheets_per_s"] = reference["sheets_per_s"]
        figures["agreement"] = agreement(run["_verdicts"], reference["_verdicts"], args.tolerance)
    if args.device == "cuda":
        measured = {
            "crops_per_s_tta_off": figures["scoring"]["crops_per_s_tta_off"],
            "sheets_per_s": figures["whole_job"]["sheets_per_s"],
        }
        figures["targets"] = {name: {"measured": measured[name], "target": TARGETS[name]} for name in TARGETS}
    scoring, job, agree = figures["scoring"], figures["whole_job"], figures["agreement"]
    print(f"device {figures['device']} (torch {figures['torch']}), {figures['cores']} cores given")
    print(
        f"scoring, {scoring['crops']} crops at {scoring['image_size']} px: "
        f"{scoring['crops_per_s_tta_off']:.1f} crops/s TTA off, {scoring['crops_per_s_tta_on']:.1f} with "
        f"{len(scoring['views_tta_on'])} views ({scoring['crops_per_forward_tta_off']} crops a forward)"
    )
    print(
        f"whole job, {args.sheets} sheets in {job['processes']} processes "
        f"({job['threads_per_process']} threads): {job['sheets_per_s']:.2f} sheets/s; "
        f"mean ms per sheet and stage: {job['stage_ms_per_sheet']}"
    )
    print(
        f"against the CPU ({figures['cpu_reference_sheets_per_s']:.2f} sheets/s in one process): "
        f"{agree['images']} images, {agree['instances']} instances, max relative score difference "
        f"{agree['max_relative_score_difference']:.2e} (tolerance {agree['tolerance']}), "
        f"{len(agree['disagreements'])} disagreements: {'agree' if agree['agree'] else 'DISAGREE'}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if not agree["agree"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
