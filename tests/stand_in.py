"""A model directory holding only a valid document: for tests of commands that read a model's
document (enqueue pins its version) and never load its weights."""

from __future__ import annotations

from pathlib import Path

from defectscan.pipeline.calibration import calibrate
from defectscan.pipeline.model_config import ModelConfig
from defectscan.pipeline.model_doc import ModelDoc, ModelRecord
from defectscan.pipeline.saved_model import write_doc


def stand_in_model(directory: Path, version: str = "v1") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    doc = ModelDoc.build(
        ModelConfig(), calibrate([1.0, 1.2, 1.1]), ModelRecord(), ((0.5,) * 3, (0.5,) * 3), version
    )
    write_doc(directory, doc)
    return directory
