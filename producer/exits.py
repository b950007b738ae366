"""How a ``defectscan`` command ends: its exit status and the one line it prints, in one place.

Rules:

* Every outcome is one of :class:`Exit`; :data:`COMMANDS` says which a command can end with, and the
  README's table of exit statuses is :func:`markdown_table` (a test keeps the two the same).
* A mistake or an outage prints exactly one line on stderr, ``error <what happened; what to do>
  [<tag>]``, never a traceback: :func:`outcome` maps any exception to its status, line and tag.
* An exception nobody expected (a bug) prints one line too, naming a log file that holds the full
  traceback (:func:`log_traceback`, under ``$DEFECTSCAN_CACHE/logs``), and exits :attr:`Exit.INTERNAL`.

This module imports nothing heavy: client libraries are looked up in ``sys.modules`` only, since an
exception of a library that was never imported cannot occur.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import traceback
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path

import click

from defectscan.pipeline.errors import DefectscanError, NotFoundError
from defectscan.producer.console import print_error
from defectscan.worker.settings import settings


class Exit(IntEnum):
    """Exit statuses; the values never change (scripts test them)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    TIMEOUT = 3
    STALLED = 4
    NOT_FOUND = 5
    UNAVAILABLE = 6
    INTERNAL = 70  # sysexits' EX_SOFTWARE
    INTERRUPTED = 130  # 128 + SIGINT, as shells report it


MEANING: dict[Exit, str] = {
    Exit.OK: "done: every input has a verdict (`ok` or `defect`), or the request was taken",
    Exit.FAILED: "done, but some inputs got an `error` verdict (their codes are in the summary); "
    "for `health`: unhealthy",
    Exit.USAGE: "a mistake in the command: a bad option value, a missing or empty input, "
    "an unusable file or setting",
    Exit.TIMEOUT: "`--timeout` passed before the batch finished",
    Exit.STALLED: "the batch is stalled: images pending, none done for `--stalled-after`, no chunk running",
    Exit.NOT_FOUND: "no such batch, model, model version, product, registry, run or retrain request",
    Exit.UNAVAILABLE: "the broker or the S3 store did not answer (after waiting for it)",
    Exit.INTERNAL: "a bug: one line names the log file that holds the traceback",
    Exit.INTERRUPTED: "interrupted (Ctrl-C)",
}

# What each command can end with, besides INTERNAL and INTERRUPTED, which any command can.
COMMANDS: dict[str, tuple[Exit, ...]] = {
    "inspect": (Exit.OK, Exit.FAILED, Exit.USAGE, Exit.NOT_FOUND),
    "segment": (Exit.OK, Exit.FAILED, Exit.USAGE),
    "train": (Exit.OK, Exit.USAGE, Exit.UNAVAILABLE),
    "evaluate": (Exit.OK, Exit.USAGE, Exit.NOT_FOUND, Exit.UNAVAILABLE),
    "enqueue": (Exit.OK, Exit.USAGE, Exit.NOT_FOUND, Exit.UNAVAILABLE),
    "wait": (Exit.OK, Exit.FAILED, Exit.USAGE, Exit.TIMEOUT, Exit.STALLED, Exit.NOT_FOUND, Exit.UNAVAILABLE),
    "status": (Exit.OK, Exit.USAGE, Exit.NOT_FOUND, Exit.UNAVAILABLE),
    "retrain": (Exit.OK, Exit.USAGE, Exit.UNAVAILABLE),
    "models": (Exit.OK, Exit.USAGE, Exit.NOT_FOUND, Exit.UNAVAILABLE),
    "review": (Exit.OK, Exit.USAGE, Exit.NOT_FOUND, Exit.UNAVAILABLE),
    "report": (Exit.OK, Exit.USAGE, Exit.NOT_FOUND, Exit.UNAVAILABLE),
    "threshold": (Exit.OK, Exit.USAGE, Exit.NOT_FOUND, Exit.UNAVAILABLE),
    "local-cluster": (Exit.OK, Exit.USAGE),
    "health": (Exit.OK, Exit.FAILED),
}
ANY_COMMAND = (Exit.INTERNAL, Exit.INTERRUPTED)

TAGS: dict[Exit, str] = {
    Exit.USAGE: "usage",
    Exit.NOT_FOUND: "not_found",
    Exit.UNAVAILABLE: "unavailable",
    Exit.INTERNAL: "internal_error",
}


class CommandError(click.ClickException):
    """A command's end that is not a bug: ``message`` says what happened and what to do."""

    exit_code = int(Exit.FAILED)


class NotFound(CommandError):
    exit_code = int(Exit.NOT_FOUND)


class Unavailable(CommandError):
    exit_code = int(Exit.UNAVAILABLE)


def _from(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """The exception classes ``names`` of ``module`` if it was imported, else none."""
    found = sys.modules.get(module)
    return tuple(getattr(found, name) for name in names if found is not None and hasattr(found, name))


def _broker_url() -> str:
    try:
        from kombu.utils.url import maybe_sanitize_url

        from defectscan.worker.app import bookkeeping_url

        return str(maybe_sanitize_url(bookkeeping_url()))
    except Exception:  # the settings themselves may be what is wrong
        return "the broker"


def _defectscan_status(exc: DefectscanError) -> Exit:
    if isinstance(exc, NotFoundError):
        return Exit.NOT_FOUND
    if exc.code == "storage_unavailable":
        return Exit.UNAVAILABLE
    return Exit.USAGE


def outcome(exc: BaseException) -> tuple[Exit, str, str]:
    """``(status, message, tag)`` for an exception that ended a command; :attr:`Exit.INTERNAL` for a bug
    (the caller logs its traceback)."""
    if isinstance(exc, click.exceptions.Abort | KeyboardInterrupt):
        return Exit.INTERRUPTED, "interrupted", "interrupted"
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "defectscan"
        return Exit.USAGE, f"{exc.format_message()} (see `{where} --help`)", TAGS[Exit.USAGE]
    if isinstance(exc, click.ClickException):
        status = next((e for e in Exit if e == exc.exit_code), Exit.FAILED)
        return status, exc.format_message(), TAGS.get(status, "failed")
    if isinstance(exc, DefectscanError):
        return _defectscan_status(exc), str(exc), exc.code
    redis_down = _from("redis.exceptions", "ConnectionError", "TimeoutError", "BusyLoadingError")
    amqp_down = _from("kombu.exceptions", "OperationalError")
    if isinstance(exc, redis_down + amqp_down):
        message = (
            f"the broker ({_broker_url()}) is unavailable ({type(exc).__name__}): start it, or point "
            "DEFECTSCAN_BROKER_URL at it"
        )
        return Exit.UNAVAILABLE, message, TAGS[Exit.UNAVAILABLE]
    no_credentials = _from("botocore.exceptions", "NoCredentialsError", "PartialCredentialsError")
    if isinstance(exc, no_credentials):
        message = f"no S3 credentials ({type(exc).__name__}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        return Exit.USAGE, message, TAGS[Exit.USAGE]
    s3_down = _from("botocore.exceptions", "EndpointConnectionError", "ConnectTimeoutError")
    if isinstance(exc, s3_down):
        message = f"the S3 store is unavailable ({type(exc).__name__}): check AWS_ENDPOINT_URL and the store"
        return Exit.UNAVAILABLE, message, TAGS[Exit.UNAVAILABLE]
    invalid_settings = _from("pydantic_core", "ValidationError")
    if isinstance(exc, invalid_settings):
        return Exit.USAGE, f"invalid setting: {exc}", TAGS[Exit.USAGE]
    if isinstance(exc, OSError) and exc.filename is not None and exc.errno in _USER_ERRNOS:
        return Exit.USAGE, f"{exc.filename}: {exc.strerror}", TAGS[Exit.USAGE]
    return Exit.INTERNAL, f"unexpected {type(exc).__name__}: {exc}", TAGS[Exit.INTERNAL]


# OS errors about a path the user gave: a mistake to correct, not a bug
_USER_ERRNOS = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOSPC,
    errno.EROFS,
    errno.ENAMETOOLONG,
}


def ended(exc: BaseException, argv: list[str]) -> int:
    """Print the one line for ``exc`` (logging a bug's traceback first) and return the exit status."""
    status, message, tag = outcome(exc)
    if status is Exit.INTERNAL:
        log = log_traceback(exc, argv)
        where = f"the full traceback is in {log}" if log else "its traceback could not be logged"
        message = f"{message}; {where}; please report it"
    print_error(one_line(message), tag)
    return int(status)


def log_folder() -> Path:
    """Where unexpected errors are logged: ``$DEFECTSCAN_CACHE/logs`` (default ``~/.cache/defectscan``),
    or the temporary folder where the settings themselves are what is wrong."""
    try:
        return settings().cache / "logs"
    except Exception:
        return Path(tempfile.gettempdir())


def log_traceback(exc: BaseException, argv: list[str]) -> Path | None:
    """Write ``exc``'s traceback and the command line to a new file under :func:`log_folder` (the
    temporary folder where that cannot be written); ``None`` if neither can. The environment is never
    written (it may hold credentials)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = f"defectscan {' '.join(argv)}\n{''.join(traceback.format_exception(exc))}"
    for folder in (log_folder(), Path(tempfile.gettempdir())):
        path = folder / f"defectscan-{stamp}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError:
            continue
        return path
    return None


def one_line(message: str) -> str:
    """``message`` on one line: white space (newlines too) folded to single spaces."""
    return " ".join(message.split())


def markdown_table() -> str:
    """The README's table: each status, what it means, and the commands that end with it."""
    rows = ["| status | meaning | commands |", "| --- | --- | --- |"]
    for status in Exit:
        users = [name for name, ends in COMMANDS.items() if status in ends]
        commands = "any" if status in ANY_COMMAND else ", ".join(f"`{name}`" for name in users)
        rows.append(f"| {int(status)} | {MEANING[status]} | {commands} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # the README's table: python -m defectscan.producer.exits
    print(markdown_table(), end="")
