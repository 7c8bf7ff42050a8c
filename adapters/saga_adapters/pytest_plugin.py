"""The pytest plugin of saga (entry point ``saga``): fixtures around ``saga.testing``.

Fixtures (async ones run on the test's anyio backend: mark tests ``@pytest.mark.anyio``):

* ``saga_kit``: a :class:`saga.testing.SagaTestKit` on a SQLite file in the test's temporary
  directory (or an in-memory store: ``@pytest.mark.saga_store("memory")``, or
  ``saga_store = memory`` in the pytest configuration).
* ``saga_clock``, ``saga_faults``: the kit's virtual clock and faults.
* ``saga_definitions``: the definitions ``saga_coordinator`` runs; override it.
* ``saga_coordinator``: a running coordinator for ``saga_definitions`` on the kit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from saga import Coordinator, MemoryStore, SagaDefinition, Store
from saga.testing import Faults, SagaTestKit, VirtualClock

STORES = ("sqlite", "memory")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "saga_store",
        "the store of the saga_kit fixture: sqlite (a file in the test's tmp_path) or memory",
        default="sqlite",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "saga_store(kind): the store of the saga_kit fixture, 'sqlite' or 'memory'"
    )


def _store_kind(request: pytest.FixtureRequest) -> str:
    marker = request.node.get_closest_marker("saga_store")
    kind = (
        marker.args[0]
        if marker is not None and marker.args
        else request.config.getini("saga_store")
    )
    if kind not in STORES:
        raise pytest.UsageError(f"saga_store must be one of {', '.join(STORES)}, got {kind!r}")
    return str(kind)


@pytest.fixture
async def saga_kit(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: object
) -> AsyncIterator[SagaTestKit]:
    """A test kit on a fresh store: a SQLite file in ``tmp_path`` unless told otherwise."""
    if _store_kind(request) == "memory":
        yield SagaTestKit(MemoryStore())
        return
    from saga_adapters.sqlite import SQLiteStore

    store: Store
    async with SQLiteStore(tmp_path / "sagas.db") as store:
        yield SagaTestKit(store)


@pytest.fixture
def saga_clock(saga_kit: SagaTestKit) -> VirtualClock:
    """The kit's virtual clock."""
    return saga_kit.clock


@pytest.fixture
def saga_faults(saga_kit: SagaTestKit) -> Faults:
    """The kit's faults: declare them before starting sagas."""
    return saga_kit.faults


@pytest.fixture
def saga_definitions() -> list[SagaDefinition]:
    """The definitions ``saga_coordinator`` runs: override this fixture."""
    raise pytest.UsageError(
        "saga_coordinator needs the definitions to run: define a 'saga_definitions' fixture "
        "returning a list of SagaDefinition (in the test module or a conftest.py)"
    )


@pytest.fixture
async def saga_coordinator(
    saga_kit: SagaTestKit, saga_definitions: list[SagaDefinition]
) -> AsyncIterator[Coordinator]:
    """A running coordinator for ``saga_definitions`` on the kit's store and clock."""
    async with saga_kit.coordinator(saga_definitions) as coordinator:
        yield coordinator
