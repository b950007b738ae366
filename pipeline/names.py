"""Names of inputs as people and JSON see them.

A file name is any sequence of bytes a file system or S3 can hold. Python gives a local name that is not
valid UTF-8 to us with its undecodable bytes as lone surrogates (``os.fsdecode``'s ``surrogateescape``);
such a string cannot be written as JSON. :func:`printable` turns it into the *escaped form*: every byte
that is not UTF-8 becomes ``\\xNN``, everything else is kept (newlines and backslashes included; JSON
escapes those itself). Verdicts, summaries and messages carry names in this form.
"""

from __future__ import annotations


def raw_bytes(name: str) -> bytes:
    """The bytes a name stands for (its undecodable bytes restored)."""
    return name.encode("utf-8", "surrogateescape")


def printable(name: str) -> str:
    """``name`` with any byte that is not UTF-8 written as ``\\xNN``; valid text is returned as it is.

    Example:
        >>> printable("line3/caf\\udce9.png")
        'line3/caf\\\\xe9.png'
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return raw_bytes(name).decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that no byte stands for
            return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name
