"""The saved model: the one reader and writer of a model directory's files.

A model directory holds ``model.safetensors`` (every tensor of the network, backbone included, so a
model never depends on a weights package or the network), ``model.json`` (:class:`ModelDoc`: config,
preprocessing, calibration with the out-of-sample scores it came from, training-set summary, created_at,
version), ``MODEL_CARD.md`` (:mod:`pipeline.model_card`), ``reference.png`` (the mean OK crop) and
``regions.png`` (the product's region map, :mod:`pipeline.regions`; a user may edit it). Reading
executes no code from the files: JSON through pydantic, tensors through safetensors, pictures as PNG.

``model.json`` is written whole (a temporary file renamed over it), last, with the card beside it: its
presence marks a complete model (:mod:`pipeline.model_doc` is the document's schema).
No torch at import: commands that only read or rewrite a model's document (``defectscan threshold``,
``models list``) stay light; the tensors' functions import it when called.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from defectscan.pipeline.errors import DefectscanError, ModelFormatError, ModelNotFoundError
from defectscan.pipeline.images import decode_image, encode_png
from defectscan.pipeline.model_card import model_card
from defectscan.pipeline.model_doc import SCHEMA, ModelDoc

if TYPE_CHECKING:
    import torch

    from defectscan.pipeline.regions import RegionMap

MODEL_JSON = "model.json"
MODEL_CARD = "MODEL_CARD.md"
WEIGHTS = "model.safetensors"
REFERENCE = "reference.png"
REGIONS = "regions.png"
MODEL_FILES = (WEIGHTS, REFERENCE, REGIONS, MODEL_JSON)  # copied in this order: model.json last
_HEADER = ("schema", "version", "created_at", "derived_from", "config", "preprocessing", "tta", "calibration")


def parse_doc(data: bytes, where: str) -> ModelDoc:
    """A ``model.json`` read and checked, wherever it was stored (``where`` names it in errors)."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(where, f"not JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        schema = raw.get("schema") if isinstance(raw, dict) else None
        raise ModelFormatError(where, f"schema {schema!r} is not {SCHEMA}")
    try:
        return ModelDoc.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ModelFormatError(where, f"invalid ({problems})") from None
    except DefectscanError as exc:
        raise ModelFormatError(where, f"bad config ({exc})") from None


def doc_bytes(doc: ModelDoc) -> bytes:
    """``model.json`` as written: the header first, the stored scores last."""
    raw = doc.model_dump(mode="json", by_alias=True)
    ordered = {k: raw.pop(k) for k in _HEADER if k in raw}
    scores = raw.pop("calibration_scores")
    return (json.dumps({**ordered, **raw, "calibration_scores": scores}, indent=2) + "\n").encode()


def read_doc(directory: Path) -> ModelDoc:
    path = directory / MODEL_JSON
    if not path.is_file():
        raise ModelNotFoundError(str(directory), f"no {MODEL_JSON}: not a defectscan model directory")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(str(path), f"unreadable ({exc})") from None
    return parse_doc(data, str(path))


def doc_files(doc: ModelDoc) -> list[tuple[str, bytes, str]]:
    """The files a document is written as, ``(name, bytes, content type)``, in the order to write
    them (to a directory or to storage): the card, then ``model.json``."""
    return [
        (MODEL_CARD, model_card(doc).encode(), "text/markdown"),
        (MODEL_JSON, doc_bytes(doc), "application/json"),
    ]


def write_doc(directory: Path, doc: ModelDoc) -> None:
    """Write the document's files into ``directory``, each whole (a temporary file renamed over it)."""
    for name, data, _ in doc_files(doc):
        temporary = directory / f".{name}.{secrets.token_hex(4)}"
        temporary.write_bytes(data)
        temporary.replace(directory / name)


@dataclass
class SavedModel:
    """A model directory read back: its document, tensors and pictures."""

    doc: ModelDoc
    state: dict[str, torch.Tensor]
    reference: NDArray[np.uint8] | None
    regions: RegionMap | None


def write_model(
    directory: str | Path,
    doc: ModelDoc,
    state: dict[str, torch.Tensor],
    reference: NDArray[np.uint8] | None,
    regions: RegionMap | None,
) -> Path:
    """Write a model directory (created); ``model.json`` last."""
    from safetensors.torch import save_file  # torch: only where tensors are written

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / WEIGHTS))
    if reference is not None:
        (out / REFERENCE).write_bytes(encode_png(reference))
    if regions is not None:
        (out / REGIONS).write_bytes(encode_png(regions.to_png_rgb()))
    write_doc(out, doc)
    return out


def read_model(directory: str | Path) -> SavedModel:
    """Read a model directory written by :func:`write_model`."""
    from safetensors.torch import load_file  # torch: only where tensors are read

    path = Path(directory)
    doc = read_doc(path)
    try:
        state = load_file(str(path / WEIGHTS))
    except Exception as exc:
        raise ModelFormatError(str(path / WEIGHTS), f"cannot read the weights ({exc})") from None
    reference = regions = None
    if (path / REFERENCE).is_file():
        from defectscan.pipeline.regions import from_png_rgb, region_map  # OpenCV: loading a model

        reference = decode_image((path / REFERENCE).read_bytes(), str(path / REFERENCE))
        labelled = path / REGIONS
        regions = (
            from_png_rgb(decode_image(labelled.read_bytes(), str(labelled)), reference)
            if labelled.is_file()
            else region_map(reference)
        )
    return SavedModel(doc, state, reference, regions)
