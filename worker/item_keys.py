"""Where an input's results go: its *item key*, under the batch's (or run's) items root.

An input with key ``K`` normally has its results at ``K.json``, ``K.heatmap.png``, ``K.mask.png``,
``K.map.npy`` and ``K.<k>.heatmap.png``: the *natural* item key is ``K`` itself. Some names that a file
system or S3 holds as inputs cannot carry those suffixes everywhere, or would not survive a round trip
through other tools, so their results go under a *hashed* item key instead::

    _renamed/<first 32 hex digits of SHA-256 of the name's bytes>

A name is hashed when it is not valid UTF-8, holds a control character (newline, tab, ...) or a
backslash, has a segment that would pass 255 bytes with the longest derived suffix, is over
:data:`MAX_KEY_BYTES` in all, or starts with the ``_renamed/`` folder itself (so the two kinds never
collide). Everything else, ``?#%`` and non-Latin scripts included, keeps its name. The verdict records
the hashed key (``image.stored_as``), and so do the manifest and the summary, so a renamed result is
always found from its input.
"""

from __future__ import annotations

import hashlib

from defectscan.pipeline.names import raw_bytes

RENAMED = "_renamed"
SUFFIX_RESERVE = 24  # bytes kept free in the last segment: ".9999.heatmap.png" and temp-file affixes
MAX_SEGMENT_BYTES = 255  # file systems' limit for one name
MAX_KEY_BYTES = 768  # S3 allows 1,024 bytes per key; the rest is left for the results prefix


def hashed_key(key: str) -> str:
    """The hashed item key of ``key``."""
    return f"{RENAMED}/{hashlib.sha256(raw_bytes(key)).hexdigest()[:32]}"


def is_natural(key: str) -> bool:
    """Whether ``key`` can carry its results under its own name."""
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if any(ord(c) < 32 or ord(c) == 127 or c == "\\" for c in key):
        return False
    if len(encoded) + SUFFIX_RESERVE > MAX_KEY_BYTES or key.split("/", 1)[0] == RENAMED:
        return False
    segments = encoded.split(b"/")
    if any(len(s) > MAX_SEGMENT_BYTES for s in segments[:-1]):
        return False
    return len(segments[-1]) + SUFFIX_RESERVE <= MAX_SEGMENT_BYTES


def item_key(key: str) -> str:
    """``key`` itself where it is natural, else its hashed item key.

    Example:
        >>> item_key("line3/0001.png")
        'line3/0001.png'
        >>> item_key("a" * 250 + ".png").startswith("_renamed/")
        True
    """
    return key if is_natural(key) else hashed_key(key)
