"""Typed errors with stable codes.

Every error names the thing it is about (a file, a key, a model version) in ``subject``; the shell maps
``code`` to a verdict error code and prints ``str(error)`` to people.
"""

from __future__ import annotations


class DefectscanError(Exception):
    """Base class: ``code`` is stable and machine-readable, the message is for people."""

    code = "error"

    def __init__(self, subject: str, detail: str) -> None:
        super().__init__(f"{subject}: {detail}")
        self.subject = subject
        self.detail = detail

    def as_dict(self) -> dict[str, str]:
        """The ``{"code", "message"}`` pair that goes into a verdict or a result file."""
        return {"code": self.code, "message": str(self)}


class UnreadableError(DefectscanError):
    """The bytes could not be read at all (missing file, permissions, storage error)."""

    code = "unreadable"


class EmptyFileError(DefectscanError):
    """The file has zero bytes."""

    code = "empty_file"


class DecodeError(DefectscanError):
    """The bytes are not an image, or the image is corrupt or truncated."""

    code = "decode_error"


class TooLargeError(DefectscanError):
    """The image has more pixels than the configured limit; refused before decoding."""

    code = "too_large"


class TooSmallError(DefectscanError):
    """The image is smaller than the template it is searched for."""

    code = "too_small"


class InvalidArgumentError(DefectscanError):
    """A parameter (range, box, option) is malformed or out of bounds."""

    code = "invalid_argument"


class NoMatchError(DefectscanError):
    """The template was not found in the image."""

    code = "no_match"


class ModelNotFoundError(DefectscanError):
    """No model directory, or not a defectscan model, at the given place."""

    code = "model_not_found"


class ModelFormatError(DefectscanError):
    """A model directory whose files are unreadable or inconsistent."""

    code = "bad_model"
