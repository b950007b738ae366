"""Errors cross process boundaries as themselves: Celery's JSON encoding of an exception (type, module,
args) rebuilds ours with their type, code and message, never as an unpicklable wrapper."""

from __future__ import annotations

import json

import pytest

from defectscan.pipeline.errors import DecodeError, DefectscanError, KeyTooLongError, NoMatchError, error_code
from defectscan.worker.app import app
from defectscan.worker.chunks import ChunkFailedError, WorkerLostError
from defectscan.worker.storage import BadKeyError, StorageUnavailableError


@pytest.mark.parametrize(
    "exc",
    [
        DecodeError("line/a.png", "corrupt or truncated image data"),
        KeyTooLongError("s3://b/" + "x" * 300, "KeyTooLongError: Your key is too long"),
        NoMatchError("a.png", "no instance of the template was found"),
        BadKeyError("'../x'", "keys are relative"),
        StorageUnavailableError("s3://b/k", "EndpointConnectionError"),
        WorkerLostError("a.png", "its chunk died 3 times while inspecting it"),
        ChunkFailedError("chunk", "the chunk failed after its retries"),
    ],
)
def test_our_errors_round_trip_through_celerys_json_encoding(exc: DefectscanError) -> None:
    encoded = json.loads(json.dumps(app.backend.prepare_exception(exc, "json")))
    rebuilt = app.backend.exception_to_python(encoded)
    assert type(rebuilt) is type(exc)
    assert str(rebuilt) == str(exc) and rebuilt.code == exc.code  # type: ignore[attr-defined]
    assert rebuilt.subject == exc.subject and rebuilt.detail == exc.detail  # type: ignore[attr-defined]


def test_any_exception_has_a_code() -> None:
    assert error_code(DecodeError("a", "b")) == "decode_error"
    assert error_code(MemoryError()) == "out_of_memory"
    assert error_code(OSError(36, "File name too long")) == "key_too_long"
    assert error_code(ValueError("bug")) == "internal_error"
