"""From a Lookout for Vision project to defectscan: manifests in SeaweedFS with Lookout-style colour
masks of several classes, relative and s3:// references, a malformed line and a missing object,
imported, trained on and evaluated against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from defectscan.pipeline.images import decode_image, encode_png
from defectscan.pipeline.synth import SheetSpec
from defectscan.producer.cli import cli
from defectscan.producer.synth_files import write_synthetic_set
from defectscan.worker.retrain import RetrainRequest, read_training_set
from defectscan.worker.storage import LocalStorage, S3Storage

SPEC = SheetSpec(width=1000, height=420, rows=1, cols=2)
CLASSES = {  # the synthetic defect -> the Lookout class a user named it, its colour, and our type
    "structural": ("dent", "#1f77b4", "structural"),
    "scratch": ("scratch", "#2ca02c", "color_scratch"),
    "color": ("stain", "#ff7f0e", "color_scratch"),
    "blurry_text": ("blurred-text", "#d62728", "blurry_text"),
}
COLOUR_MAP = {
    "0": {"class-name": "BACKGROUND", "hex-color": "#ffffff", "confidence": 0.0},
    **{
        str(i + 1): {"class-name": n, "hex-color": c, "confidence": 0.0}
        for i, (n, c, _) in enumerate(CLASSES.values())
    },
}


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], np.uint8)


def _line(source: str, label: int, mask: str | None = None) -> str:
    line: dict[str, Any] = {
        "source-ref": source,
        "anomaly-label": label,
        "anomaly-label-metadata": {
            "class-name": "anomaly" if label else "normal",
            "human-annotated": "yes",
            "type": "groundtruth/image-classification",
        },
    }
    if mask is not None:
        line["anomaly-mask-ref"] = mask
        line["anomaly-mask-ref-metadata"] = {
            "internal-color-map": COLOUR_MAP,
            "type": "groundtruth/semantic-segmentation",
        }
    return json.dumps(line)


@pytest.fixture(scope="module")
def project(env: dict[str, str], dev_s3: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A Lookout project in S3: images under lfv/images/, masks under lfv/masks/, two manifests."""
    import uuid

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    dev_s3.create_bucket(bucket)
    store = S3Storage(bucket, "lfv")
    local = tmp_path_factory.mktemp("lfv")
    write_synthetic_set(LocalStorage(local), sheets=4, defect_rate=0.5, seed=21, spec=SPEC)
    mvtec = local / "mvtec"
    train_lines, test_lines, expected = [], [], {"masks": {}, "types": {}}
    for path in sorted((mvtec / "train" / "good").glob("*.png")):
        store.put(f"images/train/{path.name}", path.read_bytes())
        train_lines.append(_line(f"images/train/{path.name}", 0))  # relative to the manifest
    for path in sorted((mvtec / "test" / "good").glob("*.png")):
        store.put(f"images/test/{path.name}", path.read_bytes())
        test_lines.append(_line(f"s3://{bucket}/lfv/images/test/{path.name}", 0))  # absolute
    defects = sorted(p for p in (mvtec / "test").glob("*/*.png") if p.parent.name != "good")
    for n, path in enumerate(defects):
        kind = path.parent.name
        binary = (
            decode_image((mvtec / "ground_truth" / kind / f"{path.stem}_mask.png").read_bytes(), "m")[..., 0]
            > 0
        )
        colour = np.full((*binary.shape, 3), 255, np.uint8)
        name = f"{kind}-{path.name}"
        colour[binary] = _rgb(CLASSES[kind][1])
        if n == 0:  # a second class on part of the first defect (smaller than the first class)
            _, xs = np.nonzero(binary)
            second = "structural" if kind != "structural" else "scratch"
            part = binary & (np.arange(binary.shape[1])[None, :] > np.percentile(xs, 80))
            colour[part] = _rgb(CLASSES[second][1])
        store.put(f"images/test/{name}", path.read_bytes())
        store.put(f"masks/{name}", encode_png(colour))
        test_lines.append(_line(f"images/test/{name}", 1, f"masks/{name}"))
        expected["masks"][name] = binary
        expected["types"][name] = CLASSES[kind][2]
    test_lines.insert(2, "{this is not json")  # line 3
    test_lines.append(_line("images/test/gone.png", 0))  # a missing object: the last line
    store.put("train.manifest", ("\n".join(train_lines) + "\n").encode())
    store.put("test.manifest", ("\n".join(test_lines) + "\n").encode())
    return {
        "bucket": bucket,
        "train": f"s3://{bucket}/lfv/train.manifest",
        "test": f"s3://{bucket}/lfv/test.manifest",
        "counts": (len(train_lines), len(test_lines) - len(defects) - 2, len(defects)),
        "last_line": len(test_lines),
        **expected,
    }


def test_lookout_import_copies_a_project_into_the_mvtec_layout(project: dict[str, Any]) -> None:
    out = f"s3://{project['bucket']}/mvtec"
    result = CliRunner().invoke(
        cli, ["lookout", "import", "--train", project["train"], "--test", project["test"], "--out", out]
    )
    assert result.exit_code == 0, result.output
    store = S3Storage(project["bucket"], "mvtec")
    report = json.loads(store.get("lookout-import.json"))
    skipped = {(s["manifest"].rsplit("/", 1)[-1], s["line"]): s["reason"] for s in report["skipped"]}
    assert set(skipped) == {("test.manifest", 3), ("test.manifest", project["last_line"])}
    assert (
        "not JSON" in skipped[("test.manifest", 3)]
        and "gone.png" in skipped[("test.manifest", project["last_line"])]
    )
    keys = [o.key for o in store.objects()]
    train_good, test_good, defective = project["counts"]
    assert sum(k.startswith("train/good/") for k in keys) == train_good
    assert sum(k.startswith("test/good/") for k in keys) == test_good
    assert sum(k.startswith("test/") and not k.startswith("test/good/") for k in keys) == defective
    for name, kind in project["types"].items():
        assert f"test/{kind}/{name}" in keys  # the largest class decides the type, by its name
        mask = decode_image(store.get(f"ground_truth/{kind}/{Path(name).stem}_mask.png"), name)[..., 0] > 0
        assert np.array_equal(mask, project["masks"][name])  # every class's pixels, as one mask
    first = next(t for t in report["taken"] if t["anomalous"])
    assert len(first["classes"]) == 2  # the two-class mask was read as two classes


def test_train_and_evaluate_read_manifests(project: dict[str, Any], tmp_path: Path) -> None:
    model = tmp_path / "model"
    args = [
        "train",
        "--manifest",
        project["train"],
        "--image-size",
        "64",
        "--coreset-ratio",
        "0.1",
        "--out",
        str(model),
    ]
    trained = CliRunner().invoke(cli, args)
    assert trained.exit_code == 0, trained.output
    doc = json.loads((model / "model.json").read_text())
    assert doc["training"]["ok_count"] == project["counts"][0]
    metrics = tmp_path / "metrics.json"
    evaluated = CliRunner().invoke(
        cli, ["evaluate", "--model", str(model), "--manifest", project["test"], "--json", str(metrics)]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "skipped" in evaluated.output and "line 3" in evaluated.output  # the bad lines, by number
    result = json.loads(metrics.read_text())
    assert result["good"] == project["counts"][1] and result["defective"] == project["counts"][2]
    assert set(result["per_type"]) == set(project["types"].values()) and "pixel_auroc" in result


def test_retrain_reads_a_manifest_as_its_training_set(project: dict[str, Any]) -> None:
    req = RetrainRequest(request_id="r", product="foil", registry="unused", manifest=project["test"])
    images, _, skipped, defects = read_training_set(req)
    assert len(images) == project["counts"][1] and len(defects) == project["counts"][2]
    assert any("line 3" in s or ":3:" in s for s in skipped) and len(skipped) == 2
