"""Fixtures of the fencing tests: a shared store (SQLite file or Postgres schema) and the
processes on it.

The test process itself runs on asyncio only: it only watches the store and signals
processes (the workers run on asyncio too), and the Postgres store needs asyncio.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from saga.errors import InvalidStoreURL
from saga_adapters import open_store
from tests.fencing.cluster import SQLITE, Cluster, postgres_admin, with_query


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Worker processes on one fresh store (``request.param``: ``sqlite`` or ``postgres``);
    every process is killed at teardown, and a Postgres schema is dropped."""
    kind = request.param
    tag = secrets.token_hex(4)
    admin = None
    if kind == SQLITE:
        url = f"sqlite:///{tmp_path / 'saga.db'}"
    else:
        dsn, admin = await postgres_admin()
        url = with_query(dsn, schema=f"fence_{tag}")
    try:
        own_url = url if admin is None else with_query(url, application_name=f"fence.{tag}.test")
        try:
            store = open_store(own_url)
        except InvalidStoreURL as exc:  # a failure, not a skip: CI must see it
            pytest.fail(f"open_store does not take {kind} URLs: {exc}")
        async with store:
            c = Cluster(kind=kind, url=url, tag=tag, workdir=tmp_path, store=store, admin=admin)
            try:
                yield c
            finally:
                c.kill_all()
    finally:
        if admin is not None:
            try:
                await admin.execute(f'DROP SCHEMA IF EXISTS "fence_{tag}" CASCADE')
            finally:
                await admin.close()
