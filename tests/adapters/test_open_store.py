"""Store URLs: what is accepted, and a precise error for what is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga import MemoryStore
from saga.errors import InvalidStoreURL
from saga_adapters import open_store
from saga_adapters.postgres import PostgresStore
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
        ("postgresql://h/db?schema=Saga", "plain lower-case identifier"),
        ("postgresql://h/db?schema=", "plain lower-case identifier"),
        ("postgresql://h/db?schema", "plain lower-case identifier"),
        ("postgresql://h/db?schema=x%3B%20drop%20table%20t", "plain lower-case identifier"),
        ('postgres://h/db?schema=a"b', "plain lower-case identifier"),
        ("postgresql://h/db?schema=9lives", "plain lower-case identifier"),
        ("postgresql://h/db?schema=" + "a" * 64, "plain lower-case identifier"),
        ("postgresql://h/db?schema=a&schema=b", "more than once"),
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


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres_urls(scheme: str) -> None:
    # Nothing connects until the store is entered.
    store = open_store(f"{scheme}://u:p@db.example:5433/shop")
    assert isinstance(store, PostgresStore)
    assert (store.dsn, store.schema) == (f"{scheme}://u:p@db.example:5433/shop", "saga")


def test_the_postgres_schema_option_is_taken_out_and_the_rest_passed_on() -> None:
    store = open_store(
        "postgresql://u@h/shop?sslmode=disable&schema=orders_2&application_name=a%20b"
    )
    assert store.schema == "orders_2"
    assert store.dsn == "postgresql://u@h/shop?sslmode=disable&application_name=a%20b"
    assert open_store("postgresql://h/shop?schema=_x").dsn == "postgresql://h/shop"
