"""What only the SQLite store has: a file, pragmas, a schema version, group commit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from saga.errors import StoreError, StoreUnavailableError
from saga_adapters.sqlite import SQLiteStore
from saga_adapters.sqlite._schema import VERSION
from tests.adapters.test_contract import _commit, _new, history

pytestmark = pytest.mark.anyio


async def test_committed_writes_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.create(_new("s1"))
        await store.commit(_commit("s1", 2, status="completed"))
    async with SQLiteStore(path) as store:
        row = await store.instance("s1")
        assert row is not None and (row.status, row.sequence) == ("completed", 3)
        assert len(await history(store, "s1")) == 3


async def test_file_is_wal_with_the_requested_synchronous(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db", synchronous="NORMAL") as store:
        await store.create(_new("s1"))
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT max(version) FROM saga_schema").fetchone()[0] == VERSION
    finally:
        conn.close()


async def test_reopening_does_not_migrate_twice(tmp_path: Path) -> None:
    for _ in range(3):
        async with SQLiteStore(tmp_path / "s.db"):
            pass
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        assert conn.execute("SELECT count(*) FROM saga_schema").fetchone()[0] == VERSION
    finally:
        conn.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db"):
        pass
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("INSERT INTO saga_schema (version) VALUES (?)", (VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        async with SQLiteStore(tmp_path / "s.db"):
            pass


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError) as info:
        async with SQLiteStore(path):
            pass
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert path.read_bytes() == b"this is not a database" * 100


async def test_an_unopened_store_says_so(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    with pytest.raises(StoreUnavailableError, match="not open"):
        await store.create(_new("s1"))


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "s.db", synchronous="SOMETIMES")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_limit"):
        SQLiteStore(tmp_path / "s.db", batch_limit=0)


async def test_concurrent_commits_share_transactions(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(store.create, _new(f"s{i}"))
        assert store.writes == 300
        # Group commit: many writes ready together go out in far fewer transactions.
        assert store.batches < store.writes / 5


async def test_batch_limit_caps_a_transaction(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db", batch_limit=7) as store:
        async with anyio.create_task_group() as tg:
            for i in range(70):
                tg.start_soon(store.create, _new(f"s{i}"))
        assert store.writes == 70
        assert store.batches >= 10


async def test_a_permanent_driver_error_is_a_store_error_with_its_cause(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        await store.create(_new("s1"))
        conn = sqlite3.connect(tmp_path / "s.db")
        conn.execute("DROP TABLE saga_events")
        conn.commit()
        conn.close()
        with pytest.raises(StoreError) as info:
            await store.commit(_commit("s1", 2))
    assert not isinstance(info.value, StoreUnavailableError)  # retrying will not help
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)


async def test_a_locked_database_is_unavailable(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db", busy_timeout=0.01) as store:
        conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(StoreUnavailableError, match="locked"):
                await store.create(_new("s1"))
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        assert await store.create(_new("s1")) is None  # and it passes once the lock is gone


async def test_one_bad_write_fails_alone_not_its_batch(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        await store.create(_new("bad"))
        await store.create(_new("good"))
        conn = sqlite3.connect(tmp_path / "s.db")
        conn.execute(  # a stray row where bad's next event must go
            "INSERT INTO saga_events VALUES ('bad', 3, 'X', 1, '{}', 0)"
        )
        conn.commit()
        conn.close()
        outcomes: dict[str, str] = {}

        async def commit(saga_id: str) -> None:
            try:
                await store.commit(_commit(saga_id, 2))
                outcomes[saga_id] = "ok"
            except StoreError as exc:
                outcomes[saga_id] = type(exc.__cause__).__name__

        async with anyio.create_task_group() as tg:
            tg.start_soon(commit, "bad")
            tg.start_soon(commit, "good")
        assert outcomes == {"bad": "IntegrityError", "good": "ok"}
        assert len(await history(store, "good")) == 3


async def test_a_store_can_be_reopened_in_another_event_loop(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    async with store:
        await store.create(_new("s1"))

    def again() -> int:
        async def use() -> int:
            async with store:
                return len(await history(store, "s1"))

        return anyio.run(use)

    assert await anyio.to_thread.run_sync(again) == 2
