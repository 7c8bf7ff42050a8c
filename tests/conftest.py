"""Shared fixtures: every async test runs on asyncio and trio; stores are real.

Postgres runs on asyncio only: every test marked ``postgres`` is deselected (not skipped)
for trio. Postgres tests use the server at ``SAGA_TEST_POSTGRES_DSN`` (default: the local
one), each on a fresh schema that is dropped afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from saga import MemoryStore
from saga_adapters.postgres import PostgresStore
from saga_adapters.sqlite import SQLiteStore
from tests.chaos.procs import connect_postgres


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect Postgres tests on trio: asyncpg needs asyncio. Deselected, not skipped: a
    skipped Postgres test fails CI (it means the server was not reached)."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("anyio_backend") if callspec is not None else None
        if backend == "trio" and item.get_closest_marker("postgres") is not None:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

# -- Postgres ---------------------------------------------------------------------------

_postgres: dict[str, str] = {}  # "dsn" once one answered, else "error"


async def postgres_dsn() -> str:
    """A DSN that reaches the test server, or skip the test saying why not (asked once)."""
    if "dsn" not in _postgres and "error" not in _postgres:
        try:
            dsn, conn = await connect_postgres()
        except ConnectionError as exc:
            _postgres["error"] = str(exc)
        else:
            await conn.close()
            _postgres["dsn"] = dsn
    if "dsn" in _postgres:
        return _postgres["dsn"]
    pytest.skip(_postgres["error"])


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[tuple[str, str]]:
    """``(dsn, schema)`` for a fresh, randomly named schema, dropped afterwards."""
    dsn = await postgres_dsn()
    schema = f"test_{secrets.token_hex(6)}"
    try:
        yield dsn, schema
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def postgres_store(dsn: str, schema: str, **kwargs: Any) -> PostgresStore:
    """A store on ``schema`` whose connections are named after it in pg_stat_activity."""
    kwargs.setdefault("server_settings", {"application_name": schema})
    return PostgresStore(dsn, schema=schema, **kwargs)


# -- every store -------------------------------------------------------------------------


@asynccontextmanager
async def opened(kind: str, tmp_path: Path) -> AsyncIterator[Any]:
    """A store of ``kind``, open, on a fresh database."""
    if kind == "memory":
        async with MemoryStore() as store:
            yield store
    elif kind == "sqlite":
        async with SQLiteStore(tmp_path / "saga.db") as store:
            yield store
    else:
        async with postgres_schema() as (dsn, schema), postgres_store(dsn, schema) as store:
            yield store


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """Each store kind, opened on a fresh database."""
    async with opened(request.param, tmp_path) as store:
        yield store


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "saga.db") as opened:
        yield opened
