"""``batch.json``: what a batch inspects, with which pinned model, and how; written once by the producer.

Every worker reads the batch's request from storage, so the tasks themselves carry only the batch's
location and a chunk of keys (small JSON messages), and every chunk of a batch runs with the same model
version and options, however long the batch takes and whatever ``LATEST`` says meanwhile.
"""

from __future__ import annotations

import json
import os

from pydantic import BaseModel, ConfigDict, Field, field_validator

from defectscan.pipeline.images import DEFAULT_MAX_PIXELS
from defectscan.pipeline.outputs import OutputOptions
from defectscan.pipeline.search_options import SegmentOptions
from defectscan.worker.storage import Storage, is_remote

BATCH_SCHEMA = "defectscan.batch/1"
BATCH_JSON = "batch.json"  # the request, in the batch folder
MANIFEST = "manifest.jsonl"  # one JSON line per input: key, size, etag
TEMPLATE_KEY = "template.png"  # the template, copied into the batch folder
ITEMS = "items"


class BatchSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    schema_: str = Field(default=BATCH_SCHEMA, alias="schema")
    batch_id: str
    inputs: str = Field(description="location of the inputs: s3://bucket/prefix or a path")
    out: str = Field(description="the results location; this batch lives in <out>/<batch_id>/")
    model: str = Field(description="the pinned model directory (a location)")
    model_version: str
    product: str | None = None
    template: bool = Field(False, description=f"whether {TEMPLATE_KEY} in the batch folder segments")
    segment: SegmentOptions = SegmentOptions()
    min_area: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    outputs: OutputOptions = OutputOptions()
    images: int = 0
    chunk: int = 16
    created_at: str

    @field_validator("outputs", mode="before")
    @classmethod
    def _pictures_as_enqueued(cls, value: object) -> object:
        """A batch enqueued before ``pictures`` existed drew every picture: it keeps doing so."""
        if isinstance(value, dict) and "pictures" not in value:
            return {**value, "pictures": "all"}
        return value

    def to_json(self) -> bytes:
        return (self.model_dump_json(by_alias=True, indent=2) + "\n").encode()


def manifest_keys(store: Storage) -> list[str]:
    """The input keys of a batch folder's manifest, in order."""
    return [json.loads(line)["key"] for line in store.get(MANIFEST).decode().splitlines() if line.strip()]


def absolute_location(location: str) -> str:
    """A local path made absolute (workers run elsewhere); ``s3://`` locations as they are."""
    return location if is_remote(location) else os.path.abspath(location)
