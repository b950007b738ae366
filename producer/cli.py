"""The ``defectscan`` command and its sub-commands.

Every sub-command is a thin wrapper: it parses options, calls ``pipeline`` (through the shell modules
that read and write files), and turns typed errors into readable messages.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from defectscan.pipeline.calibration import MIN_NEW_CONDITION, Calibration
from defectscan.pipeline.errors import InvalidArgumentError
from defectscan.pipeline.images import decode_image, encode_png
from defectscan.pipeline.model_config import INTENSITIES, LITE2, METHODS, ModelConfig
from defectscan.pipeline.outputs import Inspection, OutputOptions
from defectscan.pipeline.saved_model import read_doc
from defectscan.pipeline.verdict import ModelInfo, Verdict
from defectscan.producer.augment_cli import augment
from defectscan.producer.batch_cli import BATCH_COMMANDS
from defectscan.producer.console import err, print_error, progress_bar
from defectscan.producer.evaluation import print_metrics
from defectscan.producer.exits import Exit, ended
from defectscan.producer.local_cluster import local_cluster
from defectscan.producer.local_segment import SegmentationRecord, crop_sources, segment_files
from defectscan.producer.lookout_cli import lookout, staged_manifest
from defectscan.producer.models_cli import MODEL_COMMANDS
from defectscan.producer.ops_cli import OPS_COMMANDS
from defectscan.producer.options import (
    auto_options,
    pictures_option,
    runtime_option,
    search_options,
    segment_options,
)
from defectscan.producer.report_cli import report
from defectscan.producer.review_cli import review
from defectscan.producer.threshold_cli import threshold
from defectscan.worker.datasets import (
    IMAGE_SUFFIXES,
    ImageSet,
    expand_inputs,
    mvtec_test_items,
    read_folder,
    read_pairs,
)
from defectscan.worker.model_cache import configured_runtime
from defectscan.worker.storage import LocalStorage, read_local

if TYPE_CHECKING:  # the commands import torch- and OpenCV-backed modules where they run: --help stays fast
    from defectscan.pipeline.segment import Segmenter


def _parse_box(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not x,y,w,h in whole pixels") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise click.BadParameter(f"{text!r}: x and y must be >= 0, w and h > 0")
    return x, y, w, h


class Cli(click.Group):
    """The command group. However a command ends, it ends with one status and at most one error line
    (:mod:`producer.exits`): click runs it without its own error handling, and what it raises is mapped
    here, for the console script and for click's test runner alike."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except (Exception, KeyboardInterrupt) as exc:  # not SystemExit: a command's own exit status
            if not standalone_mode:
                raise
            if isinstance(exc, click.exceptions.NoArgsIsHelpError):  # a bare group: its help, as asked
                exc.show()
                sys.exit(Exit.USAGE)
            sys.exit(ended(exc, argv))
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else Exit.OK)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="defectscan")
def cli() -> None:
    """defectscan: visual inspection of printed and repeated parts."""


@cli.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--sheets", default=20, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--defect-rate", default=0.25, show_default=True, type=click.FloatRange(0.0, 1.0))
@click.option("--seed", default=0, show_default=True, type=int)
def synth(out: Path, sheets: int, defect_rate: float, seed: int) -> None:
    """Generate synthetic print sheets with ground truth, and MVTec-style aligned crops, into OUT."""
    from defectscan.producer.synth_files import write_synthetic_set  # OpenCV: only where sheets are drawn

    with progress_bar(sheets, "synth") as bar:
        counts = write_synthetic_set(
            LocalStorage(out), sheets, defect_rate, seed, on_sheet=lambda _: bar.advance(bar.task_ids[0])
        )
    splits = ", ".join(f"{k} {v}" for k, v in sorted(counts.by_split.items()))
    click.echo(f"wrote {counts.sheets} sheets with {counts.instances} instances to {out} ({splits})")


@cli.group()
def template() -> None:
    """Reference templates."""


@template.command("cut")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--box", required=True, help="x,y,w,h of the template in IMAGE, in pixels.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def template_cut(image: Path, box: str, out: Path) -> None:
    """Cut a reference template out of IMAGE by hand."""
    x, y, w, h = _parse_box(box)
    rgb = decode_image(read_local(image), str(image))
    height, width = rgb.shape[:2]
    if x + w > width or y + h > height:
        raise InvalidArgumentError(str(image), f"box {box} reaches outside the {width}x{height} image")
    out.parent.mkdir(parents=True, exist_ok=True)
    LocalStorage(out.parent).put(out.name, encode_png(rgb[y : y + h, x : x + w]))
    click.echo(f"wrote {w}x{h} template to {out}")


def _segmenter(
    template_path: Path, angles: str, scales: str, min_score: float, max_instances: int, pyramid: bool
) -> Segmenter:
    from defectscan.pipeline.segment import Segmenter

    options = search_options(angles, scales, min_score, max_instances, pyramid)
    return Segmenter(decode_image(read_local(template_path), str(template_path)), options)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--template", "template_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--keep-partial", is_flag=True, help="Also write crops that reach past the image's edge.")
@segment_options
def segment(
    images: tuple[Path, ...],
    template_path: Path,
    out: Path,
    max_instances: int,
    min_score: float,
    angles: str,
    scales: str,
    max_pixels: int,
    pyramid: bool,
    keep_partial: bool,
) -> None:
    """Find every instance of a template in IMAGES (files or folders) and cut aligned crops into OUT.

    Writes OUT/<image-stem>.json with the detections and OUT/<image-stem>_<k>.png per crop (an instance
    that reaches past the image's edge is listed as partial, its crop written only with --keep-partial:
    its black fill is unfit for training). A file that fails gets an "error" in its JSON and the run goes
    on; the exit status is 1 if any file failed.
    """
    segmenter = _segmenter(template_path, angles, scales, min_score, max_instances, pyramid)
    paths = expand_inputs(images)
    with progress_bar(len(paths), "segment") as bar:

        def report(path: Path, record: SegmentationRecord) -> None:
            bar.advance(bar.task_ids[0])
            if record.error is not None:
                print_error(record.error.message, record.error.code)

        summary = segment_files(
            paths, segmenter, str(template_path), LocalStorage(out), max_pixels, report, keep_partial
        )
    click.echo(
        f"segmented {summary.images} images: {summary.detections} instances, "
        f"{len(summary.failures)} failed; results in {out}"
    )
    if summary.failures:
        sys.exit(Exit.FAILED)


def _read_set(folder: Path, label: str) -> ImageSet:
    images = read_folder(folder, on_error=lambda exc: print_error(f"skipped {exc}", exc.code))
    if not images.images:
        raise InvalidArgumentError(str(folder), f"holds no readable {label} images")
    return images


@cli.command()
@click.option("--ok", "ok_dir", type=click.Path(file_okay=False, path_type=Path), help="OK images.")
@click.option(
    "--manifest",
    help="A Lookout for Vision manifest (a path or s3://) instead of --ok: normal images train, "
    "anomalous ones are the labelled defects (unless --val-defects).",
)
@click.option(
    "--aux", "aux_dir", type=click.Path(file_okay=False, path_type=Path), help="Auxiliary OK-like images."
)
@click.option("--aux-weight", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option(
    "--new-condition",
    "new_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="OK images of a new condition (the images --aux was restyled from), never trained on: from five "
    "on, the threshold holds for them too.",
)
@click.option("--method", default="patchcore", show_default=True, type=click.Choice(METHODS))
@click.option("--image-size", default=256, show_default=True, type=int)
@click.option(
    "--intensity",
    default="as-is",
    show_default=True,
    type=click.Choice(INTENSITIES),
    help="standardised: each crop stretched to one mean and spread first (exposure and gain between "
    "crops are not seen, faint marks gain contrast; a crop too light or dark as a whole is not flagged).",
)
@click.option("--augment", default="", help="Comma list of hflip, vflip, rot180, colorjitter.")
@click.option(
    "--val-defects", type=click.Path(file_okay=False, path_type=Path), help="Defect crops: F1 threshold."
)
@click.option("--coreset-ratio", default=0.01, show_default=True, type=float)
@click.option(
    "--tta",
    "tta_views",
    default="",
    help="Comma list of TTA views; default identity,hflip,vflip (variation: identity).",
)
@click.option("--backbone", default=LITE2, show_default=True, help="A timm model name.")
@click.option(
    "--backbone-weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Local ImageNet weights for --backbone (safetensors or a state dict); Lite2 needs none.",
)
@click.option("--layers", default="", help="Comma list of backbone layers; default per method.")
@click.option(
    "--target-frr",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0.0, 0.5, min_open=True, max_open=True),
    help="The share of good parts the threshold may reject (PatchCore: set from out-of-fold scores).",
)
@click.option(
    "--folds", default=5, show_default=True, type=click.IntRange(0), help="Out-of-fold folds (0: a holdout)."
)
@auto_options
@runtime_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def train(
    ok_dir: Path | None,
    manifest: str | None,
    aux_dir: Path | None,
    aux_weight: float,
    new_dir: Path | None,
    method: str,
    image_size: int,
    intensity: str,
    augment: str,
    val_defects: Path | None,
    coreset_ratio: float,
    tta_views: str,
    backbone: str,
    backbone_weights: Path | None,
    layers: str,
    target_frr: float,
    folds: int,
    auto: bool,
    budget_min: float,
    runtime: str | None,
    out: Path,
) -> None:
    """Train an anomaly model on OK images only (aligned crops, or whole images) into OUT."""
    if (ok_dir is None) == (manifest is None):
        raise click.UsageError("give exactly one of --ok and --manifest")
    context = click.get_current_context()
    chosen_by_hand = [
        f"--{name.replace('_', '-')}"
        for name in ("method", "image_size", "intensity", "layers", "tta_views")
        if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    ]
    if auto and chosen_by_hand:
        raise click.UsageError(f"--auto chooses {', '.join(chosen_by_hand)} itself: leave them out")
    with staged_manifest(manifest, "train") as staged:
        if staged is not None:
            ok_dir = staged / "train" / "good"
            if val_defects is None and (staged / "test").is_dir():
                val_defects = staged / "test"
        assert ok_dir is not None
        from defectscan.pipeline.auto_config import fit_auto
        from defectscan.pipeline.model import AnomalyModel
        from defectscan.worker.augmentation import aux_sources

        networks_in = configured_runtime(runtime)

        config = ModelConfig(
            method=method,
            backbone=backbone,
            backbone_weights=str(backbone_weights) if backbone_weights else None,
            layers=tuple(v for v in layers.split(",") if v),
            image_size=image_size,
            intensity=intensity,
            coreset_ratio=coreset_ratio,
            tta_views=tuple(v for v in tta_views.split(",") if v),
            target_frr=target_frr,
            folds=folds,
        )
        ok = _read_set(ok_dir, "OK")
        sources = crop_sources(ok_dir)  # crops `segment` cut: one fold per photograph
        aux = _read_set(aux_dir, "auxiliary") if aux_dir else ImageSet()
        made_from = aux_sources(str(aux_dir), aux.names, ok.names) if aux_dir else []
        new = _read_set(new_dir, "new condition") if new_dir else ImageSet()
        if new_dir and len(new.images) < MIN_NEW_CONDITION:
            raise InvalidArgumentError(
                "--new-condition", f"needs at least {MIN_NEW_CONDITION} images, got {len(new.images)}"
            )
        defects = _read_set(val_defects, "defect") if val_defects else ImageSet()
        start = time.perf_counter()
        groups = [sources.get(name, name) for name in ok.names] if sources else []

        def fitted(chosen: ModelConfig) -> AnomalyModel:
            return AnomalyModel.fit(
                ok.images,
                chosen,
                aux=aux.images,
                aux_weight=aux_weight,
                aux_sources=made_from,
                augment=[a for a in augment.split(",") if a],
                val_defects=defects.images,
                names=ok.names,
                groups=groups,
                new_condition=new.images,
                runtime=networks_in,
            )

        model = (
            fit_auto(ok.images, config, fitted, groups, budget_min, log=click.echo, runtime=networks_in)
            if auto
            else fitted(config)
        )
        fit_s = round(time.perf_counter() - start, 2)
        model.record.timings_s = {"fit": fit_s}
        model.save(out)
        cal = model.calibration
        click.echo(
            f"trained {model.config.method} at {model.config.image_size} px on {len(ok.images)} OK images "
            f"({len(ok.skipped)} skipped) in "
            f"{fit_s} s; threshold {cal.threshold:.4g} ({cal.rule}); {_operating_point(cal)}"
            f"version {model.version}; saved to {out}"
        )


def _operating_point(cal: Calibration) -> str:
    """The expected false-reject rate (and escapes on labelled defects) in words, or nothing."""
    if cal.expected_frr is None or cal.frr_interval is None:
        return ""
    low, high = cal.frr_interval
    text = (
        f"expected false-reject rate {cal.expected_frr:.2%} (90 %: {low:.2%}-{high:.2%}, {cal.ok_count} OK)"
    )
    if cal.escapes is not None and cal.defect_count:
        text += f", escapes {cal.escapes} of {cal.defect_count} labelled defects"
    if cal.generated_count and cal.generated_expected_frr is not None:
        text += f"; on {cal.generated_count} generated images {cal.generated_expected_frr:.2%}"
    if cal.new_condition_count and cal.new_condition_expected_frr is not None:
        rate = cal.new_condition_expected_frr
        text += f"; on the new condition's {cal.new_condition_count} OK images {rate:.2%}"
    return text + "; "


@cli.command()
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="MVTec layout.")
@click.option("--manifest", help="A Lookout for Vision (test) manifest instead of --data: a path or s3://.")
@click.option(
    "--pairs",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV of image,template paths: compare each image with its own template (no --model needed).",
)
@click.option("--image-size", default=512, show_default=True, type=int, help="With --pairs: compare size.")
@click.option("--no-tta", is_flag=True, help="Score the identity view only.")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write metrics here."
)
@runtime_option
def evaluate(
    model_dir: Path | None,
    data: Path | None,
    manifest: str | None,
    pairs: Path | None,
    image_size: int,
    no_tta: bool,
    json_out: Path | None,
    runtime: str | None,
) -> None:
    """Evaluate a model on an MVTec-layout folder (--model, --data), or golden templates per image
    (--pairs): AUROC, pixel AUROC, AUPRO, F1, per type, timings."""
    from defectscan.pipeline.model import AnomalyModel
    from defectscan.pipeline.pairs import PairComparer
    from defectscan.worker.evaluation import run_evaluation, run_pair_evaluation

    if pairs is not None:
        result = run_pair_evaluation(
            PairComparer(image_size=image_size, runtime=configured_runtime(runtime)), read_pairs(pairs)
        )
    elif model_dir is None or (data is None) == (manifest is None):
        raise click.UsageError("give --model and one of --data and --manifest, or --pairs")
    else:
        with staged_manifest(manifest, "test") as staged:  # a manifest's outage: said before the load
            model = AnomalyModel.load(model_dir).use_runtime(configured_runtime(runtime))
            root = staged if staged is not None else data
            assert root is not None
            result = run_evaluation(model, mvtec_test_items(root), use_tta=not no_tta)
    print_metrics(result, err if json_out is None else Console())
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")


@cli.command()
@click.argument("input_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--template", "template_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--pairs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of image,template paths: compare each image with its own template (no --model needed).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--product", help="Product name recorded in the verdicts.")
@click.option(
    "--min-area", default=16, show_default=True, type=click.IntRange(1), help="Smallest region, px."
)
@click.option("--save-maps", is_flag=True, help="Also write <image>.map.npy (float32 anomaly map).")
@pictures_option
@click.option(
    "--lookout-compat",
    is_flag=True,
    help="Add Lookout for Vision's DetectAnomalyResult: IsAnomalous, Confidence, Anomalies, AnomalyMask.",
)
@click.option("--image-size", default=512, show_default=True, type=int, help="With --pairs: compare size.")
@click.option("--threshold", default=1.0, show_default=True, type=float, help="With --pairs: map threshold.")
@segment_options
@runtime_option
def inspect(
    input_dir: Path | None,
    model_dir: Path | None,
    template_path: Path | None,
    pairs: Path | None,
    out: Path,
    product: str | None,
    min_area: int,
    save_maps: bool,
    pictures: str,
    lookout_compat: bool,
    image_size: int,
    threshold: float,
    max_instances: int,
    min_score: float,
    angles: str,
    scales: str,
    max_pixels: int,
    pyramid: bool,
    runtime: str | None,
) -> None:
    """Inspect every image under INPUT_DIR with --model (segmenting with --template, if given), or every
    pair of --pairs: verdict JSON and heatmap per image under OUT, mirroring the inputs, and summary.json.

    The exit status is 1 if any image failed (its verdict says why); the run never stops for one. A
    missing or empty INPUT_DIR, or no model at --model, is refused before anything is written."""
    if pairs is None:
        if input_dir is None or model_dir is None:
            raise click.UsageError("give INPUT_DIR and --model, or --pairs")
        items = [(_relative(path, input_dir), path) for path in expand_inputs([input_dir])]
        if not items:
            raise InvalidArgumentError(str(input_dir), f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
        read_doc(model_dir)  # no model there: said before torch is loaded
    from defectscan.pipeline.inspection import Inspector, inspect_pair
    from defectscan.pipeline.model import AnomalyModel
    from defectscan.pipeline.pairs import PairComparer
    from defectscan.producer.inspect_files import one_at_a_time, run_inspection
    from defectscan.worker.report import ModelFacts

    storage = LocalStorage(out)
    options = OutputOptions(save_maps=save_maps, lookout_compat=lookout_compat, pictures=pictures)
    if pairs is not None:
        comparer = PairComparer(image_size=image_size, runtime=configured_runtime(runtime))
        rows = read_pairs(pairs)
        templates: dict[str, Path] = {}
        items = []
        for row in rows:
            key = _relative(row.path, pairs.parent)
            templates[key] = row.template
            items.append((key, row.path))

        def compare(data: bytes, key: str) -> Inspection:
            tpl_path = templates[key]
            template = decode_image(read_local(tpl_path), str(tpl_path), max_pixels)
            return inspect_pair(
                data,
                key,
                template,
                _relative(tpl_path, pairs.parent),
                comparer,
                threshold,
                min_area,
                max_pixels,
            )

        run = one_at_a_time(compare)
        info = ModelInfo(method="variation (own template)")
        facts = ModelFacts(method=info.method, threshold=threshold)
    else:
        assert input_dir is not None and model_dir is not None
        model = AnomalyModel.load(model_dir).use_runtime(configured_runtime(runtime))
        segmenter = (
            _segmenter(template_path, angles, scales, min_score, max_instances, pyramid)
            if template_path
            else None
        )
        run = Inspector(model, segmenter, product, min_area, max_pixels, pictures=options.pictures).many

        info = ModelInfo(product=product, version=str(model.version), method=model.config.method)
        facts = ModelFacts.of(model.version, model.config.method, model.calibration)
    with progress_bar(len(items), "inspect") as bar:

        def report(key: str, verdict: Verdict) -> None:
            bar.advance(bar.task_ids[0])
            if verdict.error is not None:
                print_error(verdict.error.message, verdict.error.code)

        summary = run_inspection(items, run, info, storage, options, report, facts)
    click.echo(
        f"inspected {summary.images} images: {json.dumps(summary.verdicts)}; {summary.instances} instances, "
        f"{summary.anomalous_instances} anomalous, {summary.defects} defects {json.dumps(summary.types)}; "
        f"results in {out} (open {out / 'report.html'})"
    )
    if summary.failures:
        sys.exit(Exit.FAILED)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


@cli.command()
@click.argument("out", default="demo-output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--sheets", default=8, show_default=True, type=click.IntRange(1, 1000))
def demo(out: Path, sheets: int) -> None:
    """The main job on local folders, as a user runs it: photographs of good sheets are segmented and
    the model trained on their crops; then new sheets, a quarter of their instances defective, are
    inspected."""
    data, good, model_dir, results = out / "data", out / "good", out / "model", out / "results"
    scales = ["--scales", "0.95:1.05:0.05"]
    synth.main(
        [str(good), "--sheets", str(sheets), "--defect-rate", "0", "--seed", "8"], standalone_mode=False
    )
    template = str(good / "template.png")
    segment.main(
        [str(good / "sheets"), "--template", template, "--out", str(out / "crops"), *scales],
        standalone_mode=False,
    )
    train.main(["--ok", str(out / "crops"), "--out", str(model_dir)], standalone_mode=False)
    synth.main(
        [str(data), "--sheets", str(sheets), "--defect-rate", "0.25", "--seed", "7"], standalone_mode=False
    )
    args = [str(data / "sheets"), "--model", str(model_dir), "--template", template]
    try:
        inspect.main([*args, "--out", str(results), "--product", "demo-foil", *scales], standalone_mode=False)
    except SystemExit as exc:  # inspect exits 1 when an image failed; the demo reports and goes on
        if exc.code not in (0, None):
            err.print(f"some images failed; see {results / 'summary.json'}")
    click.echo((results / "summary.json").read_text().rstrip())
    click.echo(f"verdicts and pictures: {results}/<sheet>.png.json, .heatmap.png, .mask.png")
    click.echo(f"the run's page (open it in a browser): {results / 'report.html'}")
    click.echo(f"model: {model_dir}   sample sheets: {data / 'sheets'}   ground truth: {data / 'truth'}")


for _command in (
    *BATCH_COMMANDS,
    local_cluster,
    *MODEL_COMMANDS,
    threshold,
    report,
    review,
    lookout,
    augment,
    *OPS_COMMANDS,
):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point (exit statuses: :mod:`producer.exits`)."""
    cli.main(prog_name="defectscan")


if __name__ == "__main__":
    main()
