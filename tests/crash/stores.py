"""Run a crash campaign on a SQLite file or on a fresh Postgres schema, dropped after."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from tests.chaos.procs import connect_postgres, with_query

__all__ = ["STORES", "on_store"]

T = TypeVar("T")

#: The ``params`` of a module fixture that runs one campaign per store.
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def on_store(
    kind: str,
    workdir: Path,
    campaign: Callable[[str, str, Path], Awaitable[T]],
    *,
    prefix: str,
) -> T:
    """``campaign(kind, url, workdir)`` on a SQLite file in ``workdir``, or on a Postgres
    schema ``<prefix>_<random>`` (skipped when no server answers)."""
    if kind == "sqlite":
        return anyio.run(campaign, kind, f"sqlite:///{workdir / 'saga.db'}", workdir)

    async def on_postgres() -> T:
        try:
            dsn, admin = await connect_postgres()
        except ConnectionError as exc:
            pytest.skip(str(exc))
        schema = f"{prefix}_{secrets.token_hex(6)}"
        try:
            return await campaign(kind, with_query(dsn, schema=schema), workdir)
        finally:
            try:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await admin.close()

    return anyio.run(on_postgres)
