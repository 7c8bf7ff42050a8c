"""The coordinator: registry of definitions, owner of actors, the public entry points."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import uuid
from collections.abc import Iterable
from typing import Any

import anyio
import anyio.abc
import attrs

from saga._core import messages as msg
from saga._core.codec import check_payload, dumps, encode_command
from saga._core.decide import Decision, decide, start
from saga._core.definition import NAME, ChildSaga, SagaDefinition, by_version
from saga._core.events import ParentRef, SignalReceived
from saga._core.snapshot import decode_snapshot, fingerprint
from saga._core.state import SagaState, Status
from saga._core.view import SagaView
from saga._crashpoints import crashpoint
from saga._runtime.actor import Actor, Envelope, Moved
from saga._runtime.clock import Clock, SystemClock
from saga._runtime.handle import SagaHandle, SagaOutcome
from saga._runtime.history import (
    RecordedEvent,
    decode_history,
    replay,
    replay_after,
    signal_key,
    snapshot_for,
    transition,
)
from saga._runtime.hooks import StepHook
from saga._runtime.limits import HistoryLimits
from saga._runtime.ownership import OK, LeaseKeeper, LeasePolicy, default_node, encode_reply
from saga._runtime.supervisor import ACTIVE, SupervisionPolicy, supervise
from saga._store.port import InboxRecord, InstanceRecord, NewInstance, Reply, Store, Transition
from saga.errors import (
    CommandRejected,
    ConflictError,
    CoordinatorError,
    CorruptHistoryError,
    DefinitionError,
    FencedError,
    InvalidSagaIdError,
    NotFoundError,
    SagaError,
    StartConflictError,
    StoreError,
    UnknownSagaError,
)

__all__ = ["Coordinator", "HistoryLimits", "LeasePolicy", "SupervisionPolicy"]

log = logging.getLogger("saga")


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

    Use as an async context manager. On entry it claims every running or compensating
    instance in the store that no other coordinator holds a live lease on (rebuilding each
    from history and re-issuing its outstanding work); while it runs it renews its leases
    and takes over the instances of coordinators that died or froze; on exit it cancels its
    actors, letting compensations that have begun finish, and releases their leases so that
    another coordinator takes them over at once.

    Several coordinators (in one process or many) may share a store: each live instance
    is driven by the one holding its lease, and any of them can start, cancel or resume
    any instance.

    Args:
        store: where instances, histories and work items are kept.
        sagas: the definitions this coordinator can run. Several versions of one saga may
            be registered; new instances take the newest.
        max_concurrent_steps: how many step attempts run at once, across all instances.
        supervision: how crashed actors are restarted.
        clock: the time everything scheduled is measured on: event timestamps, retry
            backoff, step timeouts, restart delays (tests bring
            ``saga.testing.VirtualClock``). Leases are measured in real time regardless.
        recover: claim and resume the store's unfinished instances no one holds, on entry
            and whenever a lease lapses (takeover). With ``False`` this coordinator drives
            only what it starts or resumes, or what ``recover()`` claims.
        node: this coordinator's name in the store, unique among live coordinators.
            Default: host, pid and a random part. Give a stable one per process slot
            (a pod name, say) and a restarted process takes its instances back at once
            instead of after their leases expire; never give two live processes the same.
        leases: how instance leases are held, renewed and claimed.
        passivate_after: seconds (on ``clock``) an instance's actor may sit idle, with
            nothing running and nothing due, waiting for a timer or a signal, before it
            leaves memory: its lease is released and it is rebuilt from history when its
            timer is due or a message comes. ``None`` keeps actors until they finish.
            With ``recover=False`` actors are never passivated (nothing would claim them
            back).
        limits: how long a history and how large a payload may grow.
        snapshot_every: write a snapshot of an instance's state with the commit that takes
            its history past each multiple of this many events, so that rebuilding it
            reads the latest snapshot and the events after it, not its whole history.
            ``None`` takes none on that schedule (snapshots already stored are still
            used, and replaced when they vouch for another definition: see
            ``load_state``).

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
        node: str | None = None,
        leases: LeasePolicy | None = None,
        passivate_after: float | None = 60.0,
        limits: HistoryLimits | None = None,
        snapshot_every: int | None = 1000,
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
        if node is not None and not (isinstance(node, str) and 0 < len(node) <= 200):
            raise ValueError(f"node must be a str of 1 to 200 characters, got {node!r}")
        self.node = node or default_node()
        self.leases = leases or LeasePolicy()
        if passivate_after is not None and (
            isinstance(passivate_after, bool)
            or not isinstance(passivate_after, int | float)
            or not (passivate_after >= 0 and math.isfinite(passivate_after))
        ):
            raise ValueError(
                f"passivate_after must be a number of seconds >= 0 or None, got {passivate_after!r}"
            )
        self.passivate_after = passivate_after if recover else None
        if limits is not None and not isinstance(limits, HistoryLimits):
            raise TypeError(f"limits must be a HistoryLimits, got {limits!r}")
        self.limits = limits or HistoryLimits()
        if snapshot_every is not None and (
            isinstance(snapshot_every, bool)
            or not isinstance(snapshot_every, int)
            or snapshot_every < 1
        ):
            raise ValueError(f"snapshot_every must be an int >= 1 or None, got {snapshot_every!r}")
        self.snapshot_every = snapshot_every
        self._recover_on_enter = recover
        self._definitions = by_version(sagas)
        self._newest: dict[str, SagaDefinition] = {}
        for definition in sorted(self._definitions.values(), key=lambda d: d.version):
            self._newest[definition.name] = definition
        for definition in self._definitions.values():
            for step in definition.steps:
                if isinstance(step.wait, ChildSaga) and step.wait.saga not in self._newest:
                    raise DefinitionError(
                        f"its child saga {step.wait.saga!r} is not registered here: "
                        "register it with the same coordinator",
                        saga=definition.name,
                        step=step.name,
                    )
        self._actors: dict[str, Actor] = {}
        self._waiters: dict[str, _Waiter] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closing = False
        self._keeper = LeaseKeeper(self, self.node, self.leases)
        #: Counters an operator (or a test) can read.
        self.restarts = 0
        self.conflicts = 0
        #: Commits refused because the lease had passed to another owner.
        self.fenced = 0
        #: Wraps every step call (``saga.testing`` injects faults through it).
        self.step_hook: StepHook | None = None

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
        self._closing = False
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            if self._recover_on_enter:
                # Ours from a previous run of this node, too: that run is over.
                await self._keeper.claim(own=True)
            self._task_group.start_soon(self._keeper.run)
        except BaseException:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            self._task_group = None
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._task_group is not None, "Coordinator exited without being entered"
        self._closing = True
        actors = list(self._actors.values())
        self._task_group.cancel_scope.cancel()
        try:
            # The body's own exception is not handed to the task group: it propagates
            # as it was raised, not wrapped in an exception group.
            await self._task_group.__aexit__(None, None, None)
        finally:
            held = {a.saga_id: a.epoch for a in actors if not (a.done or a.lost)}
            self._task_group = None
            self._actors.clear()
            # Every actor has stopped (commits are shielded, so none is in flight): hand
            # the leases back now rather than make a successor wait for them to expire.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.leases.duration):
                try:
                    await self._keeper.release(held)
                except StoreError as exc:
                    log.warning("node %s: leases not released (%s); they expire", self.node, exc)

    async def recover(self) -> int:
        """Claim every running or compensating instance no coordinator holds a live lease
        on, and start its actor here. Returns how many were claimed.

        With ``recover=True`` (the default) the coordinator does this by itself on entry
        and then every ``leases.poll_interval``; call it to take over at once, or to take
        over at all with ``recover=False``. Instances whose definition is not registered
        here are left for a coordinator that has it.
        """
        self._require_running()
        return await self._keeper.claim()

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
        return await self._start(self._resolve(saga), saga_id, input)

    async def _start(
        self,
        definition: SagaDefinition,
        saga_id: str,
        input: Any,
        *,
        parent: ParentRef | None = None,
    ) -> SagaHandle:
        """``start``, of a resolved definition; a child saga names its ``parent``."""
        _check_id(saga_id)
        payload = check_payload(input, "input")
        encoded = dumps(payload)
        self.limits.check_payload(encoded, "input", saga_id=saga_id)
        self._require_running()
        now = self.clock.now()
        decision = start(definition, saga_id, msg.StartSaga(input=payload, parent=parent), now=now)
        new = NewInstance(
            saga=definition.name,
            version=definition.version,
            input=encoded,
            transition=transition(
                definition,
                0,
                decision,
                at=now,
                epoch=1,
                snapshot=snapshot_for(definition, 0, decision.state, every=self.snapshot_every),
            ),
            owner=self.node,
            lease=self.leases.duration,
        )
        # Shielded: a create handed to the store may land even if we are cancelled, and an
        # instance that landed must get its actor, or nothing would drive it.
        with anyio.CancelScope(shield=True):
            existing = await self.store.create(new)
            crashpoint("after_create")
            if existing is None:
                self._spawn(saga_id, definition, decision, epoch=1)
        if existing is None:
            return SagaHandle(saga_id, self)
        if existing.saga != definition.name:
            raise StartConflictError(
                saga_id, reason=f"it is an instance of {existing.saga!r}, not {definition.name!r}"
            )
        # Compared as JSON values: a store may give back equivalent text (Postgres JSONB).
        if dumps(json.loads(existing.input)) != encoded:
            raise StartConflictError(saga_id, reason="it was started with a different input")
        # No actor here: nobody drives it (its owner died), or we are its owner and did not
        # hear that our own create landed (the store failed after writing it). Taking it
        # is safe even if a concurrent start of ours is spawning it: the actor keeps the
        # newer epoch (see _spawn).
        if existing.status in ACTIVE and saga_id not in self._actors:
            running = self._definitions.get((existing.saga, existing.version))
            if running is None:  # as in recover(): left for a process that has it
                log.warning(
                    "saga %s: definition %s v%d is not registered here",
                    saga_id,
                    existing.saga,
                    existing.version,
                )
            else:  # nobody drives it (its owner died): take it, unless someone holds it
                await self._take(saga_id, running)
        return SagaHandle(saga_id, self)

    async def _take(self, saga_id: str, definition: SagaDefinition) -> None:
        """Lease an instance no one holds and spawn its actor here. If it ended meanwhile,
        the lease taken on it is given back at once."""
        with anyio.CancelScope(shield=True):  # a lease we take must not be left behind
            row = await self.store.acquire(saga_id, self.node, lease=self.leases.duration)
            if row is None or row.owner != self.node:
                return
            if row.status in ACTIVE:
                self._spawn(saga_id, definition, None, row.epoch)
            else:
                await self._keeper.release({saga_id: row.epoch})

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

    async def signal(
        self, saga_id: str, name: str, payload: Any = None, *, message_id: str | None = None
    ) -> None:
        """Send signal ``name`` with ``payload`` to an instance; durable when it returns.

        A step waiting for ``name`` (``WaitForSignal``) takes it as its result; a signal
        that comes before the saga waits for it is kept for it. Give a ``message_id`` (the
        callback's id, say) and sending it again is a no-op, before or after delivery;
        without one every call is a new signal.

        Raises:
            InvalidSagaIdError: ``saga_id`` is not a usable id.
            ValueError: ``name`` or ``message_id`` is not a usable name or id.
            PayloadError: ``payload`` is not JSON data.
            NotFoundError: there is no such instance.
            CommandRejected: it has finished (a repeat of a signal it took is no error).
            CoordinatorError: the coordinator is not running.
            StoreError: the store failed; sending it again with the same ``message_id``
                is safe.
        """
        _check_id(saga_id)
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(f"signal name must match {NAME.pattern}, got {name!r}")
        if message_id is None:
            message_id = uuid.uuid4().hex
        elif not (
            isinstance(message_id, str) and 0 < len(message_id) <= 200 and message_id.isprintable()
        ):
            raise ValueError(
                f"message_id must be a printable str of 1 to 200 characters, got {message_id!r}"
            )
        payload = check_payload(payload, "payload")
        self.limits.check_payload(dumps(payload), "payload", saga_id=saga_id)
        self._require_running()
        row = await self.store.instance(saga_id)
        if row is None:
            raise NotFoundError(saga_id)
        if Status(row.status).terminal:
            if any(
                isinstance(e.event, SignalReceived) and e.event.message_id == message_id
                for e in await self.history(saga_id)
            ):
                return  # it took this one before it finished: a repeat
            raise CommandRejected(
                saga_id, command="signal", status=row.status, reason="it has finished"
            )
        command = msg.SignalSaga(name=name, payload=payload, message_id=message_id)
        await self.store.send(
            InboxRecord(
                message_id=signal_key(saga_id, message_id),
                saga_id=saga_id,
                sender=self.node,
                body=encode_command(command),
                created_at=self.clock.now(),
            )
        )
        await self._wake(saga_id, row)  # durable now: deliver it

    async def _wake(self, saga_id: str, row: InstanceRecord | None = None) -> None:
        """An inbox message waits for ``saga_id``: deliver it now. If nobody drives the
        instance (it sleeps in the store), take it; a live owner elsewhere was woken by
        the store, and a coordinator's claims find it anyway within a poll."""
        if saga_id not in self._actors:
            row = row or await self.store.instance(saga_id)
            definition = None if row is None else self._definitions.get((row.saga, row.version))
            if (
                row is not None
                and definition is not None
                and row.status in ACTIVE
                and row.owner in (None, self.node)
            ):
                await self._take(saga_id, definition)
        self._keeper.nudge()

    async def _wake_parent(self, parent: str) -> None:
        """A child of ``parent`` ended here: its message waits in the inbox."""
        try:
            await self._wake(parent)
        except StoreError as exc:  # the parent's claims find it within a poll
            log.info("saga %s: not woken for its child: %s", parent, exc)

    async def _cancel_child(self, child_id: str, reason: str) -> None:
        """Cancel a child saga for its parent; a child that never started, or that cannot
        be cancelled any more (finished, parked, past its pivot), is left as it is."""
        try:
            await self.cancel(child_id, reason)
        except NotFoundError:
            pass  # its start never landed, and never will: the parent stopped waiting
        except CommandRejected as exc:
            log.info("saga %s: child not cancelled: %s", child_id, exc)

    async def query(self, saga_id: str) -> SagaView:
        """What the instance is doing: status, steps in progress, results, pending waits.

        Read from its live actor's last committed state when it runs here (the actor is
        not disturbed: no message is sent), else replayed from the store.

        Raises:
            NotFoundError: there is no such instance.
            CorruptHistoryError: its history cannot be replayed.
        """
        actor = self._actors.get(_check_id(saga_id))
        if actor is not None and actor.state is not None:
            return SagaView.of(actor.state, actor.definition)
        state = await self.load_state(saga_id)
        return SagaView.of(state, self._definitions.get((state.saga, state.version)))

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

    async def load_state(
        self, saga_id: str, *, definition: SagaDefinition | None = None
    ) -> SagaState:
        """The instance's state, rebuilt from its latest snapshot and the events after it
        (or from its whole history) and checked against its row, and against
        ``definition`` (the one an actor is about to drive it with) when given.

        Raises:
            NotFoundError: there is no such instance.
            CorruptHistoryError: its history cannot be replayed.
            NonDeterminismError: its history does not fit ``definition``.
        """
        state, _ = await self._load(saga_id, definition)
        return state

    async def _load(
        self, saga_id: str, definition: SagaDefinition | None = None
    ) -> tuple[SagaState, str | None]:
        """The instance's state (see ``load_state``), and the fingerprint its latest
        snapshot vouches for: ``None`` if it has no snapshot, ``""`` if it vouches for no
        definition or could not be used.

        A snapshot is the state after its sequence, whatever the definition. Its fingerprint
        (``saga._core.snapshot``) claims more: the history up to it, and every event written
        after it, fit any definition with that fingerprint. The fit rules look at nothing
        the fingerprint does not hash, so for a definition with the snapshot's fingerprint
        their verdict on the whole history is known already: only the events after the
        snapshot are read, and not checked again. A definition with another fingerprint (it
        changed in place: a step renamed, reordered, a kind changed...) may get another
        verdict, so the whole history is read and checked against it, as without snapshots.

        Writers keep the claim true. Whatever they commit was decided by their definition,
        so one whose fingerprint is not the latest snapshot's (the latest is stale) writes a
        snapshot of its own with its first commit: vouching for its definition if it checked
        the history against it (an actor always has), else for none (see ``_decide_here``).
        The one event written without a decision, a supervisor's ``SagaSuspended``, is one
        no fit rule looks at.
        """
        loaded = await self.store.load_recent(_check_id(saga_id))
        if loaded is None:
            raise NotFoundError(saga_id)
        row, snapshot, records = loaded
        if snapshot is None:
            return replay(saga_id, records, row, definition=definition), None
        try:
            state, latest = decode_snapshot(snapshot.data)
            if (state.saga_id, state.sequence) != (saga_id, snapshot.sequence):
                raise ValueError(
                    f"it holds the state of {state.saga_id!r} after event {state.sequence}"
                )
            if definition is None or latest == fingerprint(definition):
                return replay_after(state, records, row), latest
        except (ValueError, CorruptHistoryError) as exc:
            # A snapshot is a cache of the history: one that cannot be used is ignored,
            # and the history (which a failed replay then reports on) is the judge.
            log.warning(
                "saga %s: snapshot at event %d not used (%s); replaying the whole history",
                saga_id,
                snapshot.sequence,
                exc,
            )
            latest = ""
        whole = await self.store.load(saga_id)
        if whole is None:
            raise NotFoundError(saga_id)
        row, history = whole
        return replay(saga_id, history, row, definition=definition), latest

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
                    with anyio.move_on_after(self.leases.poll_interval):
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
        """Have the instance handle ``message``; return once its outcome is durable.

        Its actor handles it if it runs here; else we take the instance's lease if no one
        holds it, or send the command to the coordinator that does.
        """
        _check_id(saga_id)
        self._require_running()
        while True:
            actor = self._actors.get(saga_id)
            if actor is not None:
                envelope = Envelope(message, anyio.Event())
                try:
                    await actor.send.send(envelope)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    continue  # it stopped meanwhile: look again
                assert envelope.replied is not None
                await envelope.replied.wait()
                if isinstance(envelope.error, Moved | FencedError):
                    continue  # not recorded, and the instance is elsewhere now
                if envelope.error is not None:
                    raise envelope.error
                return
            row = await self.store.instance(saga_id)
            if row is None:
                raise NotFoundError(saga_id)
            definition = self.definition(row.saga, row.version)
            if Status(row.status).terminal:  # it will never change: no lease needed
                state = await self.load_state(saga_id)
                decide(definition, state, message, self.clock.now())  # raises why not
            with anyio.CancelScope(shield=True):  # a lease we take must not be left behind
                taken = await self.store.acquire(saga_id, self.node, lease=self.leases.duration)
                if taken is None:
                    raise NotFoundError(saga_id)
                if taken.owner == self.node and taken.status in ACTIVE:
                    self._spawn(saga_id, definition, None, taken.epoch)
                    self._keeper.nudge()  # signals may wait for it in the inbox
                    continue
            assert taken is not None  # (mypy: a shielded scope never swallows the raise)
            if taken.owner == self.node:
                await self._decide_here(taken, message)
                return
            await self._keeper.ask(saga_id, message)
            return

    async def _decide_here(
        self, row: InstanceRecord, message: msg.Message, message_id: str | None = None
    ) -> None:
        """Handle a command for an instance no actor drives, under the lease we hold on it
        (answering inbox message ``message_id`` with it); the lease ends with it unless the
        command sets the instance going again."""
        definition = self.definition(row.saga, row.version)
        with anyio.CancelScope(shield=True):  # as in start: commit, then spawn
            try:
                # Not checked against the definition (an actor checks it when it is set
                # going): so a snapshot written here vouches for no definition, unless the
                # latest one vouches for ours already (see _load).
                state, latest = await self._load(row.saga_id)
                now = self.clock.now()
                decision = decide(definition, state, message, now)
            except SagaError as exc:
                if message_id is not None:
                    await self.store.answer([Reply(message_id=message_id, body=encode_reply(exc))])
                await self._keeper.release({row.saga_id: row.epoch})
                raise
            replies = () if message_id is None else (Reply(message_id=message_id, body=OK),)
            if not decision.events:
                if replies:
                    await self.store.answer(replies)
                await self._keeper.release({row.saga_id: row.epoch})
                return
            mine = fingerprint(definition)
            try:
                await self._commit(
                    transition(
                        definition,
                        state.sequence,
                        decision,
                        at=now,
                        epoch=row.epoch,
                        replies=replies,
                        snapshot=snapshot_for(
                            definition,
                            state.sequence,
                            decision.state,
                            every=self.snapshot_every,
                            stale=latest is not None and latest != mine,
                            vouched=latest == mine,
                        ),
                    )
                )
            except StoreError:
                # Give the lease back if the store lets us; else it just expires.
                with anyio.move_on_after(self.leases.duration), contextlib.suppress(StoreError):
                    await self._keeper.release({row.saga_id: row.epoch})
                raise
            if decision.state.status.value in ACTIVE:  # resumed: the lease is kept
                self._spawn(row.saga_id, definition, None, row.epoch)
                self._keeper.nudge()  # signals may wait for it in the inbox

    def _spawn(
        self, saga_id: str, definition: SagaDefinition, boot: Decision | None, epoch: int
    ) -> Actor:
        actor = self._actors.get(saga_id)
        if actor is None:  # else a concurrent start or recovery got there first
            task_group = self._require_running()
            actor = self._actors[saga_id] = Actor(self, saga_id, definition, epoch)
            if boot is not None:  # committed already: waiters need not read it back
                actor.state = boot.state
            task_group.start_soon(supervise, self, actor, boot)
        elif epoch > actor.epoch:  # we took our own instance again: keep the newest lease
            actor.epoch = epoch
        return actor

    async def _commit(self, t: Transition) -> None:
        crashpoint("before_commit")
        try:
            await self.store.commit(t)
        except ConflictError:
            self.conflicts += 1
            raise
        except FencedError:
            self.fenced += 1
            raise

    def _settled(self, saga_id: str, state: SagaState | None = None) -> None:
        """An instance became terminal or suspended: wake whoever waits for it (and the
        parent of a child saga that ended)."""
        waiter = self._waiters.pop(saga_id, None)
        if waiter is not None:
            waiter.state = state
            waiter.event.set()
        if (
            state is not None
            and state.parent is not None
            and state.status.terminal
            and self._task_group is not None
        ):
            self._task_group.start_soon(self._wake_parent, state.parent.saga_id)
