"""One image, inspected: decode, segment, score, find regions, render; the verdict and its pictures.

The same function serves the local ``defectscan inspect`` and the workers, so a verdict is the same
whichever path produced it. Nothing here reads or writes files: bytes in, a verdict and arrays out.

* With a segmenter, every instance of the template is cut out aligned and scored; with none, the whole
  image is one instance. No template match is an error (``no_match``) in the verdict.
* In golden-template mode (``inspect_pair``) the image is compared with its own template
  (:mod:`pipeline.pairs`); the threshold is in the comparison's units (1.0: one absolute tolerance
  outside the band) and the confidence is ``sigmoid((score - threshold) / threshold)``.
* The image-level anomaly map puts each instance's map back where the instance lies (the inverse of the
  crop's pose), the maximum where instances overlap, 0 elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray

from defectscan.pipeline.defect_mask import type_mask
from defectscan.pipeline.errors import DefectscanError, NoMatchError
from defectscan.pipeline.geometry import placement_matrix
from defectscan.pipeline.grade import grade_regions, level_of
from defectscan.pipeline.images import DEFAULT_MAX_PIXELS, decode_oriented, gray_rgb, is_gray
from defectscan.pipeline.model import AnomalyModel
from defectscan.pipeline.outputs import Inspection, Pictures, wanted
from defectscan.pipeline.pairs import PairComparer
from defectscan.pipeline.regions import region_map
from defectscan.pipeline.render import heatmap_overlay, label_defects
from defectscan.pipeline.scoring import ScoreResult, crops_per_forward
from defectscan.pipeline.segment import Detection, Segmenter
from defectscan.pipeline.verdict import Defect, ImageInfo, Instance, ModelInfo, Note, Verdict, error_verdict

log = logging.getLogger("defectscan.inspection")


class _Clock:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round(self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - start), 2)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def _failed(info: ImageInfo, model: ModelInfo, clock: _Clock, exc: Exception) -> Inspection:
    """The image's ``error`` verdict for ``exc`` (a typed error with its code; anything else, a bug or
    memory exhaustion, as ``internal_error`` or ``out_of_memory``, logged with its traceback)."""
    if not isinstance(exc, DefectscanError):
        log.exception("inspecting %s failed", info.key)
    verdict = error_verdict(info, model, exc)
    verdict.timings_ms = clock.ms
    return Inspection(verdict)


def _decoded(data: bytes, info: ImageInfo, clock: _Clock, max_pixels: int) -> NDArray[np.uint8]:
    with clock.stage("decode"):
        rgb, orientation = decode_oriented(data, info.key, max_pixels)
    info.height, info.width = rgb.shape[:2]
    info.exif_orientation = orientation if orientation != 1 else None
    return rgb


def _guarded(
    data: bytes,
    key: str,
    model: ModelInfo,
    max_pixels: int,
    body: Callable[[NDArray[np.uint8], _Clock], Inspection],
    passes: tuple[type[BaseException], ...] = (),
) -> Inspection:
    """Decode and run ``body``; any failure becomes an ``error`` verdict naming the image, so one input
    never stops the others. Exceptions of the ``passes`` types are the caller's (an interruption such as
    a task's time limit) and are raised on."""
    clock = _Clock()
    info = ImageInfo(key=key, sha256=hashlib.sha256(data).hexdigest())
    try:
        result = body(_decoded(data, info, clock, max_pixels), clock)
    except passes:
        raise
    except Exception as exc:
        return _failed(info, model, clock, exc)
    result.verdict.image = info
    result.verdict.timings_ms = clock.ms
    return result


@dataclass
class _Cut:
    """An image decoded and cut into its instances' crops, waiting for their scores."""

    info: ImageInfo
    clock: _Clock
    rgb: NDArray[np.uint8] = field(repr=False)
    notes: list[Note]
    detections: list[Detection]
    crops: list[NDArray[np.uint8]] = field(repr=False)
    inside: list[NDArray[np.bool_] | None] = field(repr=False)


@dataclass
class Inspector:
    """Inspects images with a trained model (and a template's segmenter, if any).

    :meth:`many` scores the crops of several images in the same forward passes: images are cut until
    their crops fill ``crops_per_forward`` (default: :func:`pipeline.scoring.crops_per_forward`), then
    scored together and finished in order. Verdicts and maps are those of one image at a time. A
    failure is the image's ``error`` verdict (one that fails a shared forward is retried alone, so the
    failure falls on its own image), except exceptions of the ``passes`` types, which are raised on.
    Pictures are rendered as ``pictures`` asks (:func:`pipeline.outputs.wanted`); the verdict is the
    same whatever it asks."""

    model: AnomalyModel
    segmenter: Segmenter | None = None
    product: str | None = None
    min_area: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    passes: tuple[type[BaseException], ...] = ()
    pictures: Pictures = "all"
    crops_per_forward: int = 0

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(product=self.product, version=self.model.version, method=self.model.config.method)

    @property
    def batch(self) -> int:
        return self.crops_per_forward or crops_per_forward(self.model.config)

    def one(self, data: bytes, key: str) -> Inspection:
        """Inspect one encoded image."""
        return next(self.many([(key, lambda: data)]))

    def many(self, items: Iterable[tuple[str, Callable[[], bytes]]]) -> Iterator[Inspection]:
        """Each ``(key, read)`` item's inspection, in order; ``read()`` gives the encoded image (a
        failure to read is the image's error verdict, unless it is of a ``passes`` type)."""
        group: list[_Cut | Inspection] = []
        crops = 0
        for key, read in items:
            cut = self._cut(key, read)
            group.append(cut)
            crops += len(cut.crops) if isinstance(cut, _Cut) else 0
            if crops >= self.batch:
                yield from self._finish_group(group)
                group, crops = [], 0
        yield from self._finish_group(group)

    def _cut(self, key: str, read: Callable[[], bytes]) -> _Cut | Inspection:
        clock, info = _Clock(), ImageInfo(key=key)
        try:
            data = read()
            info.sha256 = hashlib.sha256(data).hexdigest()
            rgb, notes = _in_model_mode(_decoded(data, info, clock, self.max_pixels), self.model.colour_mode)
            with clock.stage("segment"):
                if self.segmenter is None:
                    return _Cut(info, clock, rgb, notes, [], [rgb], [None])
                detections = self.segmenter.find(rgb, key)
                if not detections:
                    raise NoMatchError(key, "no instance of the template was found")
                crops = self.segmenter.crops(rgb, detections)
                inside = list(self.segmenter.inside(rgb, detections))
            return _Cut(info, clock, rgb, notes, detections, crops, inside)
        except self.passes:
            raise
        except Exception as exc:
            return _failed(info, self.model_info, clock, exc)

    def _finish_group(self, group: list[_Cut | Inspection]) -> Iterator[Inspection]:
        cuts = [c for c in group if isinstance(c, _Cut)]
        scored = self._scores(cuts) if len(cuts) > 1 else {}
        for item in group:
            if isinstance(item, Inspection):
                yield item
                continue
            try:
                results = scored.get(id(item)) or self._scores([item])[id(item)]
                yield self._finished(item, results)
            except self.passes:
                raise
            except Exception as exc:
                yield _failed(item.info, self.model_info, item.clock, exc)

    def _scores(self, cuts: list[_Cut]) -> dict[int, list[ScoreResult]]:
        """The cuts' crops scored in shared forwards, per cut; empty if that failed for more than one
        cut (each is then scored alone)."""
        start = time.perf_counter()
        try:
            results = self.model.score(
                [c for cut in cuts for c in cut.crops],
                inside=[m for cut in cuts for m in cut.inside],
                batch_size=self.batch,
            )
        except self.passes:
            raise
        except Exception:
            if len(cuts) == 1:
                raise
            log.warning("scoring %d images together failed; each is scored alone", len(cuts), exc_info=True)
            return {}
        share = 1000 * (time.perf_counter() - start) / max(1, len(results))
        out, at = {}, 0
        for cut in cuts:
            out[id(cut)] = results[at : at + len(cut.crops)]
            at += len(cut.crops)
            cut.clock.ms["score"] = round(cut.clock.ms.get("score", 0.0) + share * len(cut.crops), 2)
        return out

    def _finished(self, cut: _Cut, results: list[ScoreResult]) -> Inspection:
        """Grade, render and give the verdict of a scored cut."""
        model, clock, detections, crops = self.model, cut.clock, cut.detections, cut.crops
        height, width = cut.rgb.shape[:2]
        threshold = model.calibration.threshold
        instances, image_map = [], np.zeros((height, width), np.float32)
        labels = np.zeros((height, width), np.uint8)
        crop_labels: list[list[tuple[tuple[float, float], str]]] = []
        image_labels: list[tuple[float, tuple[float, float], str]] = []
        with clock.stage("grade"):
            for index, res in enumerate(results):
                det = detections[index] if detections else None
                box = det.box if det else (0.0, 0.0, float(width), float(height))
                graded = grade_regions(
                    crops[index],
                    res.anomaly_map,
                    threshold,
                    model.reference,
                    model.regions,
                    self.min_area,
                    model.config.levels,
                )
                defects = [d for d, _ in graded]
                instances.append(
                    Instance(
                        index=index,
                        box=tuple(round(v, 2) for v in box),
                        angle=round(det.pose.angle, 4) if det else 0.0,
                        scale=round(det.pose.scale, 5) if det else 1.0,
                        match_score=round(det.score, 5) if det else None,
                        score=res.score,
                        threshold=threshold,
                        confidence=round(res.normalized, 6),
                        is_anomalous=res.is_anomalous,
                        **_worst(defects, model.config.levels),
                    )
                )
                matrix = _placement(det, res.anomaly_map.shape)
                _place(image_map, res.anomaly_map, matrix)
                _place(labels, type_mask(res.anomaly_map.shape, graded), matrix)
                crop_labels.append(_captions(defects))
                image_labels += [(d.severity, _corner(d.box, matrix), _caption(d)) for d in defects]
        anomalous = any(i.is_anomalous for i in instances)
        with clock.stage("render"):
            heatmap = None
            if wanted(self.pictures, anomalous):
                image_labels.sort(key=lambda label: -label[0])  # the worst defects get their places first
                overlay = heatmap_overlay(cut.rgb, image_map, threshold)
                heatmap = label_defects(overlay, [(corner, text) for _, corner, text in image_labels])
            per_crop = [
                label_defects(heatmap_overlay(c, r.anomaly_map, threshold), marks)
                if wanted(self.pictures, r.is_anomalous)
                else None
                for c, r, marks in zip(crops, results, crop_labels, strict=True)
            ]
        verdict = Verdict(
            image=cut.info,
            model=self.model_info,
            verdict="defect" if anomalous else "ok",
            instances=instances,
            notes=cut.notes,
            timings_ms=clock.ms,
        )
        return Inspection(verdict, image_map, heatmap, per_crop if detections else [], labels)


def inspect_image(
    data: bytes,
    key: str,
    model: AnomalyModel,
    segmenter: Segmenter | None = None,
    product: str | None = None,
    min_area: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    passes: tuple[type[BaseException], ...] = (),
    pictures: Pictures = "all",
) -> Inspection:
    """Inspect one encoded image (see :class:`Inspector`)."""
    inspector = Inspector(model, segmenter, product, min_area, max_pixels, passes, pictures)
    return inspector.one(data, key)


def inspect_pair(
    data: bytes,
    key: str,
    template: NDArray[np.uint8],
    template_key: str,
    comparer: PairComparer,
    threshold: float = 1.0,
    min_area: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Inspection:
    """Inspect one encoded image against its own (decoded) template."""
    info = ModelInfo(method=f"variation (own template, {comparer.image_size} px)")

    def body(rgb: NDArray[np.uint8], clock: _Clock) -> Inspection:
        height, width = rgb.shape[:2]
        with clock.stage("score"):
            res = comparer.compare(rgb, template)
        with clock.stage("grade"):
            aligned = res.template if res.template is not None else template
            graded = grade_regions(rgb, res.anomaly_map, threshold, aligned, region_map(aligned), min_area)
            defects = [d for d, _ in graded]
            instance = Instance(
                index=0,
                box=(0.0, 0.0, float(width), float(height)),
                angle=round(res.angle, 4),
                score=res.score,
                threshold=threshold,
                confidence=round(_sigmoid((res.score - threshold) / max(threshold, 1e-9)), 6),
                is_anomalous=res.score > threshold,
                **_worst(defects),
            )
        with clock.stage("render"):
            overlay = heatmap_overlay(rgb, res.anomaly_map, threshold)
            heatmap = label_defects(overlay, _captions(defects))
        verdict = Verdict(
            image=ImageInfo(key=key),
            model=info,
            verdict="defect" if instance.is_anomalous else "ok",
            template=template_key,
            instances=[instance],
        )
        labels = type_mask((height, width), graded)
        return Inspection(verdict, res.anomaly_map, heatmap, type_mask=labels)

    return _guarded(data, key, info, max_pixels, body)


def _in_model_mode(rgb: NDArray[np.uint8], mode: str) -> tuple[NDArray[np.uint8], list[Note]]:
    """The image in the colour mode the model was trained in: a colour image for a grayscale model is
    converted as a grayscale file of it decodes; a grayscale image for a colour model cannot be, and is
    inspected with a ``mode_mismatch`` note (its colour-based scores are not comparable)."""
    if mode == "gray" and not is_gray(rgb):
        return gray_rgb(rgb), [Note(code="converted_to_gray", message="converted to grayscale, as trained")]
    if mode == "rgb" and is_gray(rgb):
        message = "a grayscale image inspected by a model trained on colour images: scores are not comparable"
        return rgb, [Note(code="mode_mismatch", message=message)]
    return rgb, []


def _placement(det: Detection | None, shape: tuple[int, int]) -> NDArray[np.float64] | None:
    """The crop-to-image matrix of an instance (``None`` for a whole-image instance)."""
    return None if det is None else placement_matrix(det.pose, shape[1], shape[0])


def _place(
    image_array: NDArray[np.uint8 | np.float32],
    crop_array: NDArray[np.uint8 | np.float32],
    matrix: NDArray[np.float64] | None,
) -> None:
    """Put a crop's map (or label mask) back where the crop came from (max where instances overlap)."""
    if matrix is None:
        np.maximum(image_array, crop_array, out=image_array)
        return
    flags = cv2.INTER_NEAREST if crop_array.dtype == np.uint8 else cv2.INTER_LINEAR
    size = (image_array.shape[1], image_array.shape[0])
    placed = cv2.warpAffine(crop_array, matrix, size, flags=flags, borderValue=0)
    np.maximum(image_array, placed, out=image_array)


def _corner(box: tuple[int, int, int, int], matrix: NDArray[np.float64] | None = None) -> tuple[float, float]:
    """The top-left corner of a crop box's footprint, in the image when ``matrix`` is given."""
    x, y, w, h = box
    if matrix is None:
        return float(x), float(y)
    corners = np.array([[x, y, 1], [x + w, y, 1], [x, y + h, 1], [x + w, y + h, 1]], np.float64)
    placed = corners @ np.asarray(matrix, np.float64).T
    return float(placed[:, 0].min()), float(placed[:, 1].min())


def _caption(defect: Defect) -> str:
    return f"{defect.type} {defect.level}"


def _captions(defects: list[Defect]) -> list[tuple[tuple[float, float], str]]:
    """Captions for a crop's own heatmap, the worst defect first."""
    return [(_corner(d.box), _caption(d)) for d in sorted(defects, key=lambda d: -d.severity)]


def _worst(defects: list[Defect], levels: tuple[float, float, float] | None = None) -> dict[str, object]:
    """An instance's defects with its severity and level: those of its worst defect."""
    if not defects:
        return {"defects": [], "severity": 0.0, "level": "none"}
    worst = max(d.severity for d in defects)
    return {"defects": defects, "severity": worst, "level": level_of(worst, *([levels] if levels else []))}
