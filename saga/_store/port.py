"""The store port: the records a store keeps and the protocol the runtime depends on.

Stores deal in encoded records (JSON text), never in events: decoding belongs to the
runtime, so an adapter is a thin translation to its database and nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

import attrs

__all__ = [
    "ACTIVE_STATUSES",
    "EventRecord",
    "InboxRecord",
    "InstanceRecord",
    "NewInstance",
    "Reply",
    "SnapshotRecord",
    "Store",
    "TaskRecord",
    "Transition",
    "Wake",
]

#: Statuses of instances that someone must drive: the ones leases are claimed for.
ACTIVE_STATUSES = ("running", "compensating")


@attrs.frozen(kw_only=True)
class EventRecord:
    """One stored history event. ``(saga_id, sequence)`` is unique; sequences start at 1."""

    saga_id: str
    sequence: int
    type: str
    schema: int
    data: str
    recorded_at: float


@attrs.frozen(kw_only=True)
class SnapshotRecord:
    """An instance's latest snapshot: its encoded state after event ``sequence``.

    ``data`` is JSON text (see ``saga._core.snapshot``); a store keeps one per instance and
    never looks inside.
    """

    saga_id: str
    sequence: int
    data: str


@attrs.frozen(kw_only=True)
class TaskRecord:
    """A work item: run one attempt of a step's action or compensation after ``run_after``."""

    task_id: str
    saga_id: str
    kind: str
    step: str
    attempt: int
    run_after: float | None = None


@attrs.frozen(kw_only=True)
class InstanceRecord:
    """One row of ``saga_instances``: where an instance is, without its history."""

    saga_id: str
    saga: str
    version: int
    status: str
    sequence: int
    input: str
    created_at: float
    updated_at: float
    #: The coordinator holding the instance's lease, or None.
    owner: str | None = None
    #: Incremented every time ownership changes hands; commits must carry the current one.
    epoch: int = 0
    #: When the lease ends, in the store's own clock (seconds since the Unix epoch).
    lease_until: float | None = None
    #: When the instance next needs a driver if no message comes (the coordinator's clock);
    #: ``None``: only a message (a signal, a command) wakes it. See ``Transition.wake_at``.
    wake_at: float | None = None


@attrs.frozen(kw_only=True)
class Reply:
    """The answer to an inbox message: ``body`` is JSON text the sender decodes."""

    message_id: str
    body: str


@attrs.frozen(kw_only=True)
class InboxRecord:
    """A command for an instance, sent by a coordinator that does not own it.

    ``message_id`` is unique: sending it again writes nothing. The owner answers it (in
    the transaction that records its effect, or with ``Store.answer``); the sender then
    takes the answer with ``Store.take_reply``, which deletes the row.
    """

    message_id: str
    saga_id: str
    sender: str
    body: str
    created_at: float


@attrs.frozen(kw_only=True)
class Transition:
    """Events and work of one decision, committed atomically or not at all.

    The store accepts it only if the instance's sequence is still ``expected_sequence``
    and its epoch is still ``epoch`` (fencing: a writer whose lease has passed to another is
    refused); ``events`` carry the sequences that follow it, in order.
    """

    saga_id: str
    expected_sequence: int
    events: tuple[EventRecord, ...]
    status: str
    at: float
    new_tasks: tuple[TaskRecord, ...] = ()
    done_tasks: tuple[str, ...] = ()
    #: The writer's epoch (ignored by ``create``).
    epoch: int = 0
    #: Clear owner and lease with this commit: the instance needs no driver any more.
    ends_lease: bool = False
    #: Inbox messages this transition answers, atomically with it.
    replies: tuple[Reply, ...] = ()
    #: Inbox messages this transition sends (a child saga's end, to its parent), atomically
    #: with it; a message id sent before writes nothing (as ``send``).
    messages: tuple[InboxRecord, ...] = ()
    #: The instance's wake-up time afterwards, on the coordinator's clock: the time its work
    #: is due (usually ``at``), or its earliest timer while it only waits; ``None`` while only
    #: a message can move it. ``claim`` takes an instance nobody holds once it is due.
    wake_at: float | None = None
    #: The instance's state after this transition (at sequence ``expected_sequence +
    #: len(events)``), encoded: written with it, replacing the instance's snapshot.
    snapshot: str | None = None


@attrs.frozen(kw_only=True)
class NewInstance:
    """The first transition of an instance, with what identifies the start."""

    saga: str
    version: int
    input: str
    transition: Transition
    #: Created already leased to this coordinator (at epoch 1), or unowned (epoch 0).
    owner: str | None = None
    #: Lease duration in seconds, measured on the store's clock.
    lease: float = 0.0


#: Called by a store when something may be waiting for a coordinator: ``"inbox"`` (a message
#: for an instance it owns), ``"reply"`` (an answer to a message it sent) or ``"released"``
#: (leases were given up; there may be instances to claim). A hint, never the only path:
#: coordinators also poll, so a store may drop wake-ups.
Wake = Callable[[str], None]


class Store(Protocol):
    """What the runtime needs of a store. Every method may raise ``StoreError``."""

    async def create(self, instance: NewInstance) -> InstanceRecord | None:
        """Insert a new instance with its first transition (leased to ``instance.owner``).

        Returns ``None`` when it was created, or the existing record (writing nothing) when
        an instance with that id exists already. Durable when it returns.
        """
        ...

    async def commit(self, transition: Transition) -> None:
        """Append a transition (with its snapshot, if it carries one). Durable when it returns.

        Raises:
            FencedError: the instance's epoch is not ``transition.epoch``: its lease has
                passed to another owner; nothing was written.
            ConflictError: the instance's sequence is not ``transition.expected_sequence``
                (or it does not exist); nothing was written.
        """
        ...

    async def instance(self, saga_id: str) -> InstanceRecord | None:
        """The instance's row, or ``None``."""
        ...

    async def load(self, saga_id: str) -> tuple[InstanceRecord, Sequence[EventRecord]] | None:
        """The instance's row and its events in sequence order, read as one snapshot."""
        ...

    async def load_recent(
        self, saga_id: str
    ) -> tuple[InstanceRecord, SnapshotRecord | None, Sequence[EventRecord]] | None:
        """The instance's row, its latest snapshot (``None`` if it has none) and only the
        events after the snapshot's sequence (all of them without one), in sequence order,
        as one consistent read: the row, the snapshot and the events agree."""
        ...

    async def instances(
        self, *, statuses: Collection[str] | None = None, limit: int | None = None
    ) -> Sequence[InstanceRecord]:
        """Instances, optionally only those in ``statuses``, ordered by id."""
        ...

    async def tasks(self, saga_id: str | None = None) -> Sequence[TaskRecord]:
        """Outstanding work items, of one instance or of all, ordered by id."""
        ...

    # -- ownership: every lease time is measured on the store's clock ---------------------

    async def acquire(self, saga_id: str, owner: str, *, lease: float) -> InstanceRecord | None:
        """Lease one instance to ``owner`` if no one else holds a live lease on it.

        Whatever its status. Taking it (also from ``owner`` itself) increments its epoch.
        Returns the row afterwards (``row.owner == owner`` when taken), or ``None`` if there
        is no such instance.
        """
        ...

    async def claim(
        self,
        owner: str,
        *,
        lease: float,
        limit: int,
        sagas: Collection[tuple[str, int]],
        own: bool = False,
        after: str | None = None,
        due: float | None = None,
    ) -> Sequence[InstanceRecord]:
        """Lease to ``owner`` up to ``limit`` active instances of the ``(saga, version)``s
        given that nobody holds a live lease on (with ``own``, also those ``owner`` holds:
        a restarted coordinator taking back its own), taking the lowest ids first and only
        ids after ``after`` (a cursor: the last id a previous call returned). Given ``due``
        (the coordinator's clock), only instances that need a driver by then: ``wake_at``
        at or before it, or an unanswered inbox message; with ``own``, also those ``owner``
        holds whatever their wake-up time (nobody else could take them before their old
        lease ends: a restarted node takes them back, to let them sleep unowned). One
        statement; rows another
        claimer has locked are skipped, never waited for. Each taken row's epoch
        increments. Returns the rows taken, ordered by id in the store's own order (the
        one ``after`` is compared in).
        """
        ...

    async def next_wake(self, *, sagas: Collection[tuple[str, int]], after: float) -> float | None:
        """The earliest ``wake_at`` later than ``after`` among the active instances of the
        ``(saga, version)``s given that nobody holds a live lease on: when the next
        sleeping one is due."""
        ...

    async def renew(
        self, owner: str, leases: Mapping[str, int], *, lease: float
    ) -> Collection[str]:
        """Extend the leases ``owner`` still holds at the given ``{saga_id: epoch}``.

        Returns the ids renewed; the others have passed to another owner (or ended).
        """
        ...

    async def release(self, owner: str, leases: Mapping[str, int]) -> None:
        """Give up the leases ``owner`` holds at the given ``{saga_id: epoch}`` at once, so
        another coordinator may claim them without waiting for expiry (and wake them)."""
        ...

    # -- the inbox: commands for instances another coordinator owns ------------------------

    async def send(self, message: InboxRecord) -> None:
        """Queue ``message`` for its instance and wake the owner; durable when it returns.

        Idempotent: a message id sent before (answered or not) writes nothing.
        """
        ...

    async def inbox(
        self, owner: str | None = None, *, saga_id: str | None = None, limit: int = 100
    ) -> Sequence[InboxRecord]:
        """Unanswered messages, oldest first: to instances ``owner`` holds, and/or to
        ``saga_id``."""
        ...

    async def answer(self, replies: Sequence[Reply]) -> None:
        """Answer messages (those answered already keep their first answer); wake senders."""
        ...

    async def take_reply(self, message_id: str) -> str | None:
        """The answer to a message, deleting it; ``None`` while it has none (or is gone)."""
        ...

    def subscribe(self, owner: str, wake: Wake) -> Callable[[], None]:
        """Call ``wake(kind)`` on wake-ups for ``owner`` (see :data:`Wake`) until the
        returned function is called. A store without cross-process wake-ups may only call
        it for what happens in this process."""
        ...
