"""Local storage: keys stay inside the root; writes are whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import UnreadableError
from worker.storage import BadKeyError, LocalStorage, read_local, safe_key


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../up.json", "a/../../b", "a//b", "a/./b", "a\\b", "a/..", "x\x00y"]
)
def test_keys_cannot_escape_their_root(key: str, tmp_path: Path) -> None:
    with pytest.raises(BadKeyError) as info:
        LocalStorage(tmp_path).put(key, b"x")
    assert info.value.code == "bad_key"
    assert list(tmp_path.iterdir()) == []


def test_plain_keys_are_accepted() -> None:
    assert safe_key("line3/2026-11-29/0001.png") == "line3/2026-11-29/0001.png"


def test_put_writes_whole_objects_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put("items/a/b.json", b"first")
    store.put("items/a/b.json", b"second")
    assert store.get("items/a/b.json") == b"second"
    assert sorted(p.name for p in (tmp_path / "items/a").iterdir()) == ["b.json"]


def test_missing_file_is_unreadable_and_named(tmp_path: Path) -> None:
    with pytest.raises(UnreadableError) as info:
        read_local(tmp_path / "nope.png")
    assert info.value.code == "unreadable" and "nope.png" in str(info.value)
