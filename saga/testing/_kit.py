"""The test kit: a store, a virtual clock and declared faults, around real coordinators."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from saga._core.definition import SagaDefinition
from saga._runtime.coordinator import Coordinator
from saga._runtime.handle import SagaOutcome
from saga._store.port import Store
from saga.testing._clock import VirtualClock
from saga.testing._faults import Faults
from saga.testing._store import KitStore

__all__ = ["SagaTestKit"]


class SagaTestKit:
    """Everything a test of sagas needs, on a real store.

    Args:
        store: an open store (the pytest plugin opens a SQLite file in the test's temporary
            directory, or an in-memory store). The kit does not close it.
        clock: the virtual clock (default: a new one at 2026-01-01 UTC).
        autojump: let time jump to the next deadline whenever everything waits, so that
            backoffs, timeouts and restarts take no real time. With ``False`` time moves
            only by ``clock.advance``.

    Attributes:
        clock: the :class:`VirtualClock` every coordinator of the kit runs on.
        faults: the :class:`Faults` to inject into steps and into the store.
        store: the store the kit's coordinators use (``store`` wrapped for faults).
    """

    def __init__(
        self, store: Store, *, clock: VirtualClock | None = None, autojump: bool = True
    ) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        self.faults = Faults()
        self.store = KitStore(store, self.clock, self.faults)
        self.autojump = autojump

    @asynccontextmanager
    async def coordinator(
        self, sagas: Iterable[SagaDefinition], **options: Any
    ) -> AsyncIterator[Coordinator]:
        """A running coordinator for ``sagas`` on the kit's store and clock, with its faults.

        ``options`` go to :class:`saga.Coordinator` (``node``, ``supervision``...).

        Raises:
            FaultError: a declared fault does not fit these definitions.
        """
        definitions = list(sagas) if not isinstance(sagas, SagaDefinition) else [sagas]
        self.faults.check(definitions)
        options.setdefault("node", "test")
        coordinator = Coordinator(self.store, definitions, clock=self.clock, **options)
        coordinator.step_hook = self.faults
        # The body's exceptions are not handed to the task group, so they reach the test
        # as raised, not wrapped in an exception group.
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            if self.autojump:
                tg.start_soon(self.clock.autojump)
            # Left before the autojump stops: compensations that run on at exit may wait
            # on the virtual clock.
            async with coordinator:
                yield coordinator
        finally:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    async def run(
        self, sagas: Iterable[SagaDefinition] | SagaDefinition, saga_id: str, input: Any = None
    ) -> SagaOutcome:
        """Start ``saga_id`` of the first definition of ``sagas`` on a fresh coordinator and
        wait for its outcome."""
        definitions = [sagas] if isinstance(sagas, SagaDefinition) else list(sagas)
        async with self.coordinator(definitions) as coordinator:
            handle = await coordinator.start(definitions[0], saga_id, input)
            return await handle.outcome()
