"""Typed errors with stable codes.

Every error names the thing it is about (a file, a key, a model version) in ``subject``; the shell maps
``code`` to a verdict error code and prints ``str(error)`` to people. An error's ``args`` are
``(subject, detail)``, so it is rebuilt from them: Celery's JSON result encoding (type, module, args)
carries it across processes as the same type, never as an unpicklable wrapper.

:func:`error_code` gives any exception's code, ours or not (``internal_error`` for a bug), so one input's
failure always becomes that input's ``error`` verdict.
"""

from __future__ import annotations

import errno


class DefectscanError(Exception):
    """Base class: ``code`` is stable and machine-readable, the message is for people."""

    code = "error"

    def __init__(self, subject: str, detail: str = "") -> None:
        super().__init__(subject, detail)
        self.subject = subject
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.subject}: {self.detail}" if self.detail else self.subject

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


class NotFoundError(DefectscanError):
    """The thing named (a batch, a run, a product, a model) does not exist where it was looked for."""

    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """No model directory, or not a defectscan model, at the given place."""

    code = "model_not_found"


class ModelFormatError(DefectscanError):
    """A model directory whose files are unreadable or inconsistent."""

    code = "bad_model"


class KeyTooLongError(DefectscanError):
    """A result's name is longer than the file system or store accepts."""

    code = "key_too_long"


class WriteFailedError(DefectscanError):
    """A result could not be written (refused by the store, disk full, permissions)."""

    code = "write_failed"


def error_code(exc: BaseException) -> str:
    """The verdict code for any exception: ours carry theirs; a name too long is ``key_too_long``; memory
    exhaustion ``out_of_memory``; anything else is a bug in this input's handling, ``internal_error``."""
    if isinstance(exc, DefectscanError):
        return exc.code
    if isinstance(exc, MemoryError):
        return "out_of_memory"
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return KeyTooLongError.code
    return "internal_error"


def error_message(exc: BaseException) -> str:
    """A one-line message for people: ours as they say it, others with their type."""
    if isinstance(exc, DefectscanError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
