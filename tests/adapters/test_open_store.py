"""Store URLs: what is accepted, and a precise error for what is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga import MemoryStore
from saga.errors import InvalidStoreURL
from saga_adapters import open_store
from saga_adapters.sqlite import SQLiteStore


def test_memory_url() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)


def test_sqlite_urls(tmp_path: Path) -> None:
    absolute = open_store(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(absolute, SQLiteStore)
    assert absolute.path == f"{tmp_path}/a.db"
    relative = open_store("sqlite:///rel/a.db?synchronous=normal")
    assert relative.path == "rel/a.db"
    assert relative._synchronous == "NORMAL"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "looks like"),
        ("saga.db", "looks like"),
        ("redis://localhost", "unknown store scheme 'redis'"),
        ("memory://x", "takes nothing"),
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite://host/a.db", "has no host"),
        ("sqlite:///a.db?journal=delete", "unknown SQLite option 'journal'"),
        ("sqlite:///a.db?synchronous=maybe", "synchronous must be one of"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(InvalidStoreURL, match=message) as info:
        open_store(url)
    assert info.value.url == url


def test_a_non_string_url_is_refused() -> None:
    with pytest.raises(InvalidStoreURL, match="must be a str"):
        open_store(42)  # type: ignore[arg-type]


def test_an_in_memory_sqlite_url_points_to_the_memory_store() -> None:
    with pytest.raises(InvalidStoreURL, match="MemoryStore"):
        open_store("sqlite:///:memory:")
