"""Storage of inputs and results under one root, with whole-object writes and safe keys.

A *key* is a relative, slash-separated path. Keys never escape their root: absolute keys, ``..``
segments, backslashes and empty segments are refused. Writes go to a temporary file beside the target
and are renamed into place, so a reader never sees half an object, and a task that runs twice rewrites
the same bytes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

from pipeline.errors import DefectscanError, UnreadableError


class BadKeyError(DefectscanError):
    """A storage key that is absolute, empty, or would escape its root."""

    code = "bad_key"


def safe_key(key: str) -> str:
    """Return ``key`` if it stays inside its root, else raise :class:`BadKeyError`.

    Example:
        >>> safe_key("line3/0001.png")
        'line3/0001.png'
    """
    if not key or "\\" in key or "\x00" in key:
        raise BadKeyError(repr(key), "keys are non-empty, slash-separated and without backslashes")
    path = PurePosixPath(key)
    if path.is_absolute() or any(part in ("", ".", "..") for part in key.split("/")):
        raise BadKeyError(repr(key), "keys are relative and contain no '.', '..' or empty segments")
    return key


def read_local(path: str | os.PathLike[str]) -> bytes:
    """Read a local file's bytes; any OS error becomes :class:`UnreadableError` naming the file."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableError(str(path), exc.strerror or str(exc)) from None


class LocalStorage:
    """A folder on the local filesystem, addressed by keys (the embedded default backend)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The filesystem path of ``key``, after checking the key."""
        return self.root.joinpath(*safe_key(key).split("/"))

    def get(self, key: str) -> bytes:
        return read_local(self.path(key))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` as a whole: temp file, fsync, then rename over the target."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
