"""The coordinator: registry of definitions, owner of actors, the public entry points."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import anyio
import anyio.abc
import attrs

from saga._core import messages as msg
from saga._core.codec import check_payload, dumps
from saga._core.decide import Decision, decide, start
from saga._core.definition import SagaDefinition
from saga._core.state import SagaState, Status
from saga._runtime.actor import Actor, Envelope
from saga._runtime.clock import Clock, SystemClock
from saga._runtime.handle import SagaHandle, SagaOutcome
from saga._runtime.history import RecordedEvent, decode_history, replay, transition
from saga._runtime.supervisor import ACTIVE, SupervisionPolicy, supervise
from saga._store.port import NewInstance, Store, Transition
from saga.errors import (
    ConflictError,
    CoordinatorError,
    DefinitionError,
    InvalidSagaIdError,
    NotFoundError,
    StartConflictError,
    UnknownSagaError,
)

__all__ = ["Coordinator", "SupervisionPolicy"]

log = logging.getLogger("saga")

#: Seconds between store reads while waiting for an instance no actor of ours runs.
SETTLE_POLL_INTERVAL = 1.0


@attrs.define(eq=False)
class _Waiter:
    """Whoever waits for an instance to settle; the actor may hand over its final state."""

    event: anyio.Event = attrs.field(factory=anyio.Event)
    state: SagaState | None = None
    count: int = 0  # callers waiting on it; the last one out removes it


def _check_id(saga_id: object) -> str:
    if not isinstance(saga_id, str):
        raise InvalidSagaIdError(saga_id, reason=f"must be a str, not {type(saga_id).__name__}")
    if not saga_id or len(saga_id) > 200:
        raise InvalidSagaIdError(saga_id, reason="must have 1 to 200 characters")
    if not saga_id.isprintable():
        raise InvalidSagaIdError(saga_id, reason="must not contain control characters")
    return saga_id


class Coordinator:
    """Runs saga instances on a store, inside the caller's event loop (asyncio or trio).

    Use as an async context manager. On entry it recovers every running or compensating
    instance in the store (rebuilding it from history and re-issuing its outstanding work);
    on exit it cancels its actors, letting compensations that have begun finish.

    Args:
        store: where instances, histories and work items are kept.
        sagas: the definitions this coordinator can run. Several versions of one saga may
            be registered; new instances take the newest.
        max_concurrent_steps: how many step attempts run at once, across all instances.
        supervision: how crashed actors are restarted.
        clock: the source of wall-clock time (tests bring a virtual one).
        recover: rebuild and resume the store's unfinished instances on entry.

    Raises:
        DefinitionError: two different definitions share a name and version.
    """

    def __init__(
        self,
        store: Store,
        sagas: Iterable[SagaDefinition],
        *,
        max_concurrent_steps: int = 100,
        supervision: SupervisionPolicy | None = None,
        clock: Clock | None = None,
        recover: bool = True,
    ) -> None:
        if isinstance(max_concurrent_steps, bool) or not (
            isinstance(max_concurrent_steps, int) and max_concurrent_steps >= 1
        ):
            raise ValueError(
                f"max_concurrent_steps must be an int >= 1, got {max_concurrent_steps!r}"
            )
        if isinstance(sagas, SagaDefinition):
            raise TypeError("sagas takes a list of definitions: Coordinator(store, [saga])")
        self.store = store
        self.clock: Clock = clock or SystemClock()
        # fast_acquire: a free slot is taken without a checkpoint (the step awaits anyway);
        # a CapacityLimiter yields while holding its token, so in a burst most attempts queue.
        self.limiter = anyio.Semaphore(max_concurrent_steps, fast_acquire=True)
        self.supervision = supervision or SupervisionPolicy()
        self._recover_on_enter = recover
        self._definitions: dict[tuple[str, int], SagaDefinition] = {}
        self._newest: dict[str, SagaDefinition] = {}
        for definition in sagas:
            self._register(definition)
        self._actors: dict[str, Actor] = {}
        self._waiters: dict[str, _Waiter] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        #: Counters an operator (or a test) can read.
        self.restarts = 0
        self.conflicts = 0

    def _register(self, definition: SagaDefinition) -> None:
        if not isinstance(definition, SagaDefinition):
            raise DefinitionError(f"sagas must be SagaDefinition objects, got {definition!r}")
        key = (definition.name, definition.version)
        known = self._definitions.get(key)
        if known is not None and known is not definition:
            raise DefinitionError(
                f"two different definitions of {definition.name!r} v{definition.version}",
                saga=definition.name,
            )
        self._definitions[key] = definition
        newest = self._newest.get(definition.name)
        if newest is None or newest.version < definition.version:
            self._newest[definition.name] = definition

    def definition(self, name: str, version: int | None = None) -> SagaDefinition:
        """The registered definition ``name`` (the newest, or ``version``).

        Raises:
            UnknownSagaError: none is registered.
        """
        found = (
            self._newest.get(name) if version is None else self._definitions.get((name, version))
        )
        if found is None:
            raise UnknownSagaError(name, version=version)
        return found

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Coordinator:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            if self._recover_on_enter:
                await self.recover()
        except BaseException:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            self._task_group = None
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._task_group is not None, "Coordinator exited without being entered"
        self._task_group.cancel_scope.cancel()
        try:
            # The body's own exception is not handed to the task group: it propagates
            # as it was raised, not wrapped in an exception group.
            await self._task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
            self._actors.clear()

    async def recover(self) -> int:
        """Start an actor for every running or compensating instance that has none here.

        Returns how many were started. Instances whose definition is not registered here
        are left as they are (and logged), for a process that has it.
        """
        started = 0
        for row in await self.store.instances(statuses=ACTIVE):
            if row.saga_id in self._actors:
                continue
            definition = self._definitions.get((row.saga, row.version))
            if definition is None:
                log.warning(
                    "saga %s: definition %s v%d is not registered here; left as it is",
                    row.saga_id,
                    row.saga,
                    row.version,
                )
                continue
            self._spawn(row.saga_id, definition, None)
            started += 1
        return started

    # -- public entry points ---------------------------------------------------------

    async def start(
        self, saga: SagaDefinition | str, saga_id: str, input: Any = None
    ) -> SagaHandle:
        """Start instance ``saga_id`` of ``saga`` with ``input``; durable when it returns.

        Idempotent: starting an existing id with the same saga and input returns a handle
        on the existing instance (and resumes it here if nobody runs it).

        Raises:
            UnknownSagaError: ``saga`` is not registered with this coordinator.
            InvalidSagaIdError: ``saga_id`` is not a usable id.
            PayloadError: ``input`` is not JSON data.
            StartConflictError: ``saga_id`` exists with another saga or another input.
            CoordinatorError: the coordinator is not running (not entered, or exited).
            StoreError: the store failed; the start may or may not have been recorded,
                and calling ``start`` again with the same arguments is safe.
        """
        definition = self._resolve(saga)
        _check_id(saga_id)
        payload = check_payload(input, "input")
        encoded = dumps(payload)
        self._require_running()
        now = self.clock.now()
        decision = start(definition, saga_id, msg.StartSaga(input=payload))
        new = NewInstance(
            saga=definition.name,
            version=definition.version,
            input=encoded,
            transition=transition(0, decision, at=now),
        )
        # Shielded: a create handed to the store may land even if we are cancelled, and an
        # instance that landed must get its actor, or nothing would drive it.
        with anyio.CancelScope(shield=True):
            existing = await self.store.create(new)
            if existing is None:
                self._spawn(saga_id, definition, decision)
        if existing is None:
            return SagaHandle(saga_id, self)
        if existing.saga != definition.name:
            raise StartConflictError(
                saga_id, reason=f"it is an instance of {existing.saga!r}, not {definition.name!r}"
            )
        if existing.input != encoded:
            raise StartConflictError(saga_id, reason="it was started with a different input")
        if existing.status in ACTIVE and saga_id not in self._actors:
            running = self._definitions.get((existing.saga, existing.version))
            if running is None:  # as in recover(): left for a process that has it
                log.warning(
                    "saga %s: definition %s v%d is not registered here",
                    saga_id,
                    existing.saga,
                    existing.version,
                )
            else:
                self._spawn(saga_id, running, None)
        return SagaHandle(saga_id, self)

    def handle(self, saga_id: str) -> SagaHandle:
        """A handle on an instance that was started earlier (no I/O; it may not exist)."""
        return SagaHandle(_check_id(saga_id), self)

    async def cancel(self, saga_id: str, reason: str = "cancelled") -> None:
        """Ask an instance to stop: it compensates what it completed and ends ``cancelled``.

        Durable when it returns. The step attempt in flight, if it has begun, finishes first
        (its effect must be known before it can be undone). Cancelling an instance that is
        already compensating changes nothing.

        Raises:
            NotFoundError: there is no such instance.
            CommandRejected: it has finished, is suspended, or is at or past its pivot step.
            UnknownSagaError: its definition is not registered here.
            CoordinatorError: the coordinator is not running.
            CorruptHistoryError: its history cannot be replayed.
            StoreError: the store failed (``ConflictError`` if another writer got there
                first); the command may be given again.
        """
        await self._command(saga_id, msg.CancelSaga(reason=str(reason)))

    async def resume(self, saga_id: str) -> None:
        """Resume a suspended instance: it is rebuilt from history and goes on.

        Raises:
            NotFoundError: there is no such instance.
            CommandRejected: it is not suspended.
            UnknownSagaError: its definition is not registered here.
            CoordinatorError: the coordinator is not running.
            CorruptHistoryError: its history still cannot be replayed.
            StoreError: the store failed; the command may be given again.
        """
        await self._command(saga_id, msg.ResumeSaga())

    async def status(self, saga_id: str) -> Status:
        """The instance's status, from its row in the store.

        Raises:
            NotFoundError: there is no such instance.
        """
        row = await self.store.instance(_check_id(saga_id))
        if row is None:
            raise NotFoundError(saga_id)
        return Status(row.status)

    async def history(self, saga_id: str) -> list[RecordedEvent]:
        """Every event of the instance, in order.

        Raises:
            NotFoundError: there is no such instance.
            CorruptHistoryError: a stored event cannot be decoded.
        """
        loaded = await self.store.load(_check_id(saga_id))
        if loaded is None:
            raise NotFoundError(saga_id)
        return decode_history(saga_id, loaded[1])

    async def load_state(self, saga_id: str) -> SagaState:
        """The instance's state, replayed from its history and checked against its row.

        Raises:
            NotFoundError: there is no such instance.
            CorruptHistoryError: its history cannot be replayed.
        """
        loaded = await self.store.load(_check_id(saga_id))
        if loaded is None:
            raise NotFoundError(saga_id)
        row, records = loaded
        return replay(saga_id, records, row)

    async def wait(self, saga_id: str) -> SagaOutcome:
        """Wait until the instance is terminal; see ``SagaHandle.outcome``."""
        state = await self._settle(saga_id, terminal=True)
        return SagaOutcome.of(state if state is not None else await self.load_state(saga_id))

    async def settle(self, saga_id: str) -> Status:
        """Wait until the instance is terminal or suspended; see ``SagaHandle.settle``."""
        state = await self._settle(saga_id, terminal=False)
        return state.status if state is not None else await self.status(saga_id)

    async def _settle(self, saga_id: str, *, terminal: bool) -> SagaState | None:
        """Wait for a terminal (or suspended) status; the state, if an actor handed it over."""

        def done(status: Status) -> bool:
            return status.terminal or (not terminal and status is Status.SUSPENDED)

        while True:
            # Register before looking, so a change between the two is not missed.
            waiter = self._waiters.get(saga_id)
            if waiter is None:
                waiter = self._waiters[saga_id] = _Waiter()
            waiter.count += 1
            try:
                actor = self._actors.get(saga_id)
                if actor is not None and actor.state is not None:
                    # Live here: its state is what it committed last, and it wakes us when
                    # it settles or stops (see supervise): no read, no polling.
                    if done(actor.state.status):
                        return actor.state
                    await waiter.event.wait()
                else:
                    if done(await self.status(saga_id)):
                        return None
                    # Another process may run it: ask the store again now and then.
                    with anyio.move_on_after(SETTLE_POLL_INTERVAL):
                        await waiter.event.wait()
                if waiter.state is not None and done(waiter.state.status):
                    return waiter.state
            finally:
                waiter.count -= 1
                if waiter.count == 0 and self._waiters.get(saga_id) is waiter:
                    del self._waiters[saga_id]

    # -- internals ---------------------------------------------------------------------

    def _resolve(self, saga: SagaDefinition | str) -> SagaDefinition:
        if isinstance(saga, str):
            return self.definition(saga)
        if isinstance(saga, SagaDefinition):
            if self._definitions.get((saga.name, saga.version)) is not saga:
                raise UnknownSagaError(saga.name, version=saga.version)
            return saga
        raise TypeError(f"saga must be a SagaDefinition or a registered name, got {saga!r}")

    def _require_running(self) -> anyio.abc.TaskGroup:
        if self._task_group is None:
            raise CoordinatorError(
                "the Coordinator is not running: use 'async with Coordinator(...)'"
            )
        return self._task_group

    async def _command(self, saga_id: str, message: msg.Message) -> None:
        """Have the instance handle ``message``; return once its outcome is durable."""
        _check_id(saga_id)
        self._require_running()
        while True:
            actor = self._actors.get(saga_id)
            if actor is None:
                row = await self.store.instance(saga_id)
                if row is None:
                    raise NotFoundError(saga_id)
                definition = self.definition(row.saga, row.version)
                if row.status not in ACTIVE:
                    # Nobody runs it (finished or suspended): decide and commit here.
                    state = await self.load_state(saga_id)
                    now = self.clock.now()
                    decision = decide(definition, state, message, now)
                    with anyio.CancelScope(shield=True):  # as in start: commit, then spawn
                        if decision.events:
                            await self._commit(transition(state.sequence, decision, at=now))
                        if decision.state.status.value in ACTIVE:  # resumed
                            self._spawn(saga_id, definition, None)
                    return
                actor = self._spawn(saga_id, definition, None)
            envelope = Envelope(message, anyio.Event())
            try:
                await actor.send.send(envelope)
            except anyio.ClosedResourceError:
                continue  # it stopped meanwhile: ask the store again
            assert envelope.replied is not None
            await envelope.replied.wait()
            if envelope.error is not None:
                raise envelope.error
            return

    def _spawn(self, saga_id: str, definition: SagaDefinition, boot: Decision | None) -> Actor:
        actor = self._actors.get(saga_id)
        if actor is None:  # else a concurrent start or recovery got there first
            task_group = self._require_running()
            actor = self._actors[saga_id] = Actor(self, saga_id, definition)
            if boot is not None:  # committed already: waiters need not read it back
                actor.state = boot.state
            task_group.start_soon(supervise, self, actor, boot)
        return actor

    async def _commit(self, t: Transition) -> None:
        try:
            await self.store.commit(t)
        except ConflictError:
            self.conflicts += 1
            raise

    def _settled(self, saga_id: str, state: SagaState | None = None) -> None:
        """An instance became terminal or suspended: wake whoever waits for it."""
        waiter = self._waiters.pop(saga_id, None)
        if waiter is not None:
            waiter.state = state
            waiter.event.set()
