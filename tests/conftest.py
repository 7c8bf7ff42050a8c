"""Shared fixtures: every async test runs on asyncio and trio; stores are real."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from saga import MemoryStore
from saga_adapters.sqlite import SQLiteStore


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


STORES = ["memory", "sqlite"]


async def _open(kind: str, tmp_path: Path) -> Any:
    if kind == "memory":
        return MemoryStore()
    return SQLiteStore(tmp_path / "saga.db")


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """Each store kind, opened on a fresh database."""
    async with await _open(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "saga.db") as opened:
        yield opened
