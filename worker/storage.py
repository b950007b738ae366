"""Storage of inputs and results: one interface, a local folder or an S3-compatible bucket.

A *location* is ``s3://bucket/prefix`` or a local path; :func:`open_storage` turns it into a
:class:`Storage` rooted there. A *key* is a relative, slash-separated path under that root. Keys never
escape their root: absolute keys, ``..`` and ``.`` segments, empty segments and NUL are refused
(:class:`BadKeyError`). Any other character is part of a name, a backslash too: on POSIX file systems and
S3 it separates nothing, and inputs are named so.

**Writes are whole objects.** Locally, a write goes to a temporary file beside the target that is
renamed into place; on S3 a ``PutObject`` is atomic. A reader never sees half an object, and a task that
runs twice rewrites the same bytes.

**S3** goes through boto3, so the standard AWS chain supplies credentials, region and endpoint
(``AWS_ENDPOINT_URL`` included); :class:`S3Settings` adds the endpoint, region and path-style
addressing as explicit options (``DEFECTSCAN_S3_ADDRESSING=path`` for stores without virtual-host
buckets). Listing pages through ``ListObjectsV2``; folders come from its ``Delimiter``. Transient errors
(throttling, 5xx, dropped connections, timeouts) are retried by botocore's *standard* retry mode with
exponential backoff and jitter (``max_attempts``); what still fails is raised as
:class:`StorageUnavailableError`, which the Celery tasks retry with their own backoff. A missing or
forbidden object is :class:`UnreadableError` naming its ``s3://`` location, never retried.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from defectscan.pipeline.errors import (
    DefectscanError,
    InvalidArgumentError,
    KeyTooLongError,
    UnreadableError,
    WriteFailedError,
)
from defectscan.worker.settings import aws_client_env, settings


class BadKeyError(DefectscanError):
    """A storage key that is absolute, empty, or would escape its root."""

    code = "bad_key"


class StorageUnavailableError(DefectscanError):
    """The store did not answer (after botocore's retries): worth retrying later."""

    code = "storage_unavailable"


def safe_key(key: str) -> str:
    """Return ``key`` if it stays inside its root, else raise :class:`BadKeyError`.

    Example:
        >>> safe_key("line3/0001.png")
        'line3/0001.png'
    """
    if not key or "\x00" in key:
        raise BadKeyError(repr(key), "keys are non-empty and without NUL")
    path = PurePosixPath(key)
    if path.is_absolute() or any(part in ("", ".", "..") for part in key.split("/")):
        raise BadKeyError(repr(key), "keys are relative and contain no '.', '..' or empty segments")
    return key


def join_key(*parts: str) -> str:
    """Keys joined with ``/``, each checked; empty parts are skipped.

    Example:
        >>> join_key("results", "", "b1/items")
        'results/b1/items'
    """
    return "/".join(safe_key(p.strip("/")) for p in parts if p.strip("/"))


def read_local(path: str | os.PathLike[str]) -> bytes:
    """Read a local file's bytes; any OS error becomes :class:`UnreadableError` naming the file."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableError(str(path), exc.strerror or str(exc)) from None


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the storage's root
    size: int
    etag: str  # S3's ETag; locally size and modification time


class Storage(Protocol):
    """What the shell needs from a store: whole-object reads and writes, and listing."""

    @property
    def location(self) -> str: ...

    def get(self, key: str) -> bytes: ...

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    def exists(self, key: str) -> bool: ...

    def objects(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def folders(self, prefix: str = "") -> list[str]: ...

    def child(self, prefix: str) -> Storage: ...

    def url(self, key: str, expires_s: int = 86400) -> str:
        """An address a browser opens ``key`` at: a file URI, or a presigned S3 GET link."""
        ...


def open_storage(location: str | os.PathLike[str], settings: S3Settings | None = None) -> Storage:
    """The storage rooted at ``s3://bucket/prefix`` or at a local path."""
    text = os.fspath(location)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise BadKeyError(text, "an S3 location is s3://bucket[/prefix]")
        return S3Storage(bucket, prefix, settings)
    return LocalStorage(text)


def read_location(location: str) -> bytes:
    """The bytes of one object given by its full location (``s3://bucket/key`` or a path)."""
    if is_remote(location):
        parent, _, name = location.rstrip("/").rpartition("/")
        return open_storage(parent).get(name)
    return read_local(location)


def is_remote(location: str | os.PathLike[str]) -> bool:
    return os.fspath(location).startswith("s3://")


class LocalStorage:
    """A folder on the local filesystem, addressed by keys (the embedded default backend)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        """The filesystem path of ``key``, after checking the key."""
        return self.root.joinpath(*safe_key(key).split("/"))

    def get(self, key: str) -> bytes:
        return read_local(self.path(key))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
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

    def objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every file under ``prefix`` (a key or ``""``), sorted by key as S3 lists; temp files skipped."""
        base = self.path(prefix) if prefix.strip("/") else self.root
        if not base.is_dir():
            return
        found = []
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                if not (name.startswith(".") and name.endswith(".part")):
                    path = Path(dirpath) / name
                    found.append((path.relative_to(self.root).as_posix(), path))
        for key, path in sorted(found):
            stat = path.stat()
            yield ObjectInfo(key, stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}")

    def folders(self, prefix: str = "") -> list[str]:
        base = self.path(prefix) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() + "/" for p in base.iterdir() if p.is_dir())

    def child(self, prefix: str) -> LocalStorage:
        return LocalStorage(self.path(prefix))

    def url(self, key: str, expires_s: int = 86400) -> str:
        return self.path(key).resolve().as_uri()


_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class S3Settings:
    """Explicit S3 options; anything left ``None`` comes from boto3's standard chain and variables."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str | None = None  # "path", "virtual" or "auto"
    max_attempts: int = 8

    @classmethod
    def from_env(cls) -> S3Settings:
        given = settings()
        return cls(addressing_style=given.s3_addressing or None, max_attempts=given.s3_max_attempts)

    def client(self) -> Any:
        """This process's client for these settings and the AWS variables as they are now: made once
        and shared (a boto3 client is thread-safe; making one costs about 0.1 s of CPU, parsing the
        service's JSON model, which a client per store or per chunk paid again and again)."""
        key = (self, os.getpid(), aws_client_env())
        with _CLIENTS_LOCK:
            made = _CLIENTS.get(key)
            if made is None:
                made = _CLIENTS[key] = self._new_client()
        return made

    def _new_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            s3={"addressing_style": self.addressing_style or "auto"},
            signature_version="s3v4",  # presigned links too (SigV4: what every S3 region takes)
            connect_timeout=10,
            read_timeout=60,
        )
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
        )


class S3Storage:
    """Keys under ``s3://bucket/prefix`` of an S3-compatible store (SeaweedFS, Ceph, MinIO, AWS)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        settings: S3Settings | None = None,
        client: Any = None,
        page_size: int = 1000,
    ) -> None:
        self.bucket = bucket
        self.page_size = page_size
        self.prefix = join_key(prefix) if prefix.strip("/") else ""
        self.settings = settings or S3Settings.from_env()
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _full(self, key: str) -> str:
        return join_key(self.prefix, safe_key(key))

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """Run one client call; its failures become our typed errors, naming ``what``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise _mapped(what, exc) from None

    def get(self, key: str) -> bytes:
        full = self._full(key)
        what = f"s3://{self.bucket}/{full}"
        response = self._call(what, self.client.get_object, Bucket=self.bucket, Key=full)
        return bytes(self._call(what, response["Body"].read))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=full)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and _status(exc) == 404:
                return False
            raise _mapped(f"s3://{self.bucket}/{full}", exc) from None
        return True

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        full = self._full(key)
        extra = {"ContentType": content_type} if content_type else {}
        try:
            self._call(
                f"s3://{self.bucket}/{full}",
                self.client.put_object,
                Bucket=self.bucket,
                Key=full,
                Body=data,
                **extra,
            )
        except UnreadableError as exc:  # refused, not unavailable: name the write's failure
            kind = KeyTooLongError if "KeyTooLong" in exc.detail else WriteFailedError
            raise kind(exc.subject, exc.detail) from None

    def _pages(self, prefix: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
        full = self._full(prefix) + "/" if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(**kwargs, PaginationConfig={"PageSize": self.page_size}))
        what = f"s3://{self.bucket}/{full}"
        while True:
            page = self._call(what, lambda: next(pages, None))
            if page is None:
                return
            yield page

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in key order (S3 lists in UTF-8 binary order)."""
        for page in self._pages(prefix, None):
            for item in page.get("Contents", []):
                yield ObjectInfo(self._relative(item["Key"]), int(item["Size"]), str(item["ETag"]).strip('"'))

    def folders(self, prefix: str = "") -> list[str]:
        return [
            self._relative(common["Prefix"])
            for page in self._pages(prefix, "/")
            for common in page.get("CommonPrefixes", [])
        ]

    def child(self, prefix: str) -> S3Storage:
        return S3Storage(
            self.bucket, join_key(self.prefix, prefix), self.settings, self._client, self.page_size
        )

    def url(self, key: str, expires_s: int = 86400) -> str:
        """A presigned GET link (SigV4: at most 7 days); signing is local, nothing is sent."""
        if not 0 < expires_s <= 7 * 86400:
            raise InvalidArgumentError("--expires", "a presigned link lasts from 1 s to 7 days")
        params = {"Bucket": self.bucket, "Key": self._full(key)}
        return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s))


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _mapped(what: str, exc: Exception) -> DefectscanError:
    """A botocore failure as :class:`StorageUnavailableError` (worth retrying) or :class:`UnreadableError`."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):  # connection, timeout, ... after botocore's own retries
        return StorageUnavailableError(what, type(exc).__name__)
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    if _status(exc) >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "Throttling"):
        return StorageUnavailableError(what, f"{code or _status(exc)}: {message}")
    return UnreadableError(what, f"{code or _status(exc)}: {message or 'refused'}")
