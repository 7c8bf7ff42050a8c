"""The in-memory store: the reference every adapter is held to by the contract tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence

import anyio
import attrs

from saga._store.port import (
    ACTIVE_STATUSES,
    EventRecord,
    InboxRecord,
    InstanceRecord,
    NewInstance,
    Reply,
    SnapshotRecord,
    TaskRecord,
    Transition,
    Wake,
)
from saga._store.wakeups import Subscribers
from saga.errors import ConflictError, FencedError

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps everything in dicts: fast, and gone with the process. For tests and trials."""

    def __init__(self) -> None:
        self._instances: dict[str, InstanceRecord] = {}
        self._events: dict[str, list[EventRecord]] = {}
        self._snapshots: dict[str, SnapshotRecord] = {}
        self._tasks: dict[str, TaskRecord] = {}
        self._inbox: dict[str, tuple[InboxRecord, str | None]] = {}  # insertion order
        self._subscribers = Subscribers()

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def create(self, instance: NewInstance) -> InstanceRecord | None:
        await anyio.lowlevel.checkpoint()
        t = instance.transition
        existing = self._instances.get(t.saga_id)
        if existing is not None:
            return existing
        owner = None if t.ends_lease else instance.owner
        self._instances[t.saga_id] = InstanceRecord(
            saga_id=t.saga_id,
            saga=instance.saga,
            version=instance.version,
            status=t.status,
            sequence=len(t.events),
            input=instance.input,
            created_at=t.at,
            updated_at=t.at,
            owner=owner,
            epoch=0 if owner is None else 1,
            lease_until=None if owner is None else time.time() + instance.lease,
            wake_at=t.wake_at,
        )
        self._events[t.saga_id] = []
        self._apply(t)
        return None

    async def commit(self, transition: Transition) -> None:
        await anyio.lowlevel.checkpoint()
        t = transition
        current = self._instances.get(t.saga_id)
        if current is not None and current.epoch != t.epoch:
            raise FencedError(t.saga_id, epoch=t.epoch, actual=current.epoch)
        actual = None if current is None else current.sequence
        if current is None or actual != t.expected_sequence:
            raise ConflictError(t.saga_id, expected=t.expected_sequence, actual=actual)
        row = attrs.evolve(
            current,
            status=t.status,
            sequence=current.sequence + len(t.events),
            updated_at=t.at,
            wake_at=t.wake_at,
        )
        if t.ends_lease:
            row = attrs.evolve(row, owner=None, lease_until=None)
        self._instances[t.saga_id] = row
        self._apply(t)

    def _apply(self, t: Transition) -> None:
        self._events[t.saga_id].extend(t.events)
        if t.snapshot is not None:
            self._snapshots[t.saga_id] = SnapshotRecord(
                saga_id=t.saga_id,
                sequence=t.expected_sequence + len(t.events),
                data=t.snapshot,
            )
        for task_id in t.done_tasks:
            self._tasks.pop(task_id, None)
        for task in t.new_tasks:
            self._tasks[task.task_id] = task
        self._answer(t.replies)
        for message in t.messages:
            self._inbox.setdefault(message.message_id, (message, None))

    async def instance(self, saga_id: str) -> InstanceRecord | None:
        await anyio.lowlevel.checkpoint()
        return self._instances.get(saga_id)

    async def load(self, saga_id: str) -> tuple[InstanceRecord, Sequence[EventRecord]] | None:
        await anyio.lowlevel.checkpoint()
        row = self._instances.get(saga_id)
        return None if row is None else (row, list(self._events[saga_id]))

    async def load_recent(
        self, saga_id: str
    ) -> tuple[InstanceRecord, SnapshotRecord | None, Sequence[EventRecord]] | None:
        await anyio.lowlevel.checkpoint()
        row = self._instances.get(saga_id)
        if row is None:
            return None
        snapshot = self._snapshots.get(saga_id)
        after = 0 if snapshot is None else snapshot.sequence
        return row, snapshot, self._events[saga_id][after:]  # event n is at index n - 1

    async def instances(
        self, *, statuses: Collection[str] | None = None, limit: int | None = None
    ) -> Sequence[InstanceRecord]:
        await anyio.lowlevel.checkpoint()
        rows = [
            self._instances[k]
            for k in sorted(self._instances)
            if statuses is None or self._instances[k].status in statuses
        ]
        return rows if limit is None else rows[:limit]

    async def tasks(self, saga_id: str | None = None) -> Sequence[TaskRecord]:
        await anyio.lowlevel.checkpoint()
        return [
            self._tasks[k]
            for k in sorted(self._tasks)
            if saga_id is None or self._tasks[k].saga_id == saga_id
        ]

    # -- ownership ---------------------------------------------------------------------

    def _free(self, row: InstanceRecord, owner: str | None, now: float) -> bool:
        return (
            row.owner is None
            or row.owner == owner
            or (row.lease_until is not None and row.lease_until <= now)
        )

    def _lease(self, row: InstanceRecord, owner: str, lease: float, now: float) -> InstanceRecord:
        taken = attrs.evolve(row, owner=owner, epoch=row.epoch + 1, lease_until=now + lease)
        self._instances[row.saga_id] = taken
        return taken

    async def acquire(self, saga_id: str, owner: str, *, lease: float) -> InstanceRecord | None:
        await anyio.lowlevel.checkpoint()
        row = self._instances.get(saga_id)
        now = time.time()
        if row is None or not self._free(row, owner, now):
            return row
        return self._lease(row, owner, lease, now)

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
        await anyio.lowlevel.checkpoint()
        now = time.time()
        wanted = set(sagas)
        messaged = {m.saga_id for m, reply in self._inbox.values() if reply is None}
        taken: list[InstanceRecord] = []
        for saga_id in sorted(self._instances):
            if len(taken) >= limit:
                break
            if after is not None and saga_id <= after:
                continue
            row = self._instances[saga_id]
            if (
                row.status in ACTIVE_STATUSES
                and (row.saga, row.version) in wanted
                and self._free(row, owner if own else None, now)
                and (
                    due is None
                    or (row.wake_at is not None and row.wake_at <= due)
                    or saga_id in messaged
                    or (own and row.owner == owner)
                )
            ):
                taken.append(self._lease(row, owner, lease, now))
        return taken

    async def next_wake(self, *, sagas: Collection[tuple[str, int]], after: float) -> float | None:
        await anyio.lowlevel.checkpoint()
        wanted = set(sagas)
        now = time.time()
        return min(
            (
                row.wake_at
                for row in self._instances.values()
                if self._free(row, None, now)
                and row.status in ACTIVE_STATUSES
                and (row.saga, row.version) in wanted
                and row.wake_at is not None
                and row.wake_at > after
            ),
            default=None,
        )

    async def renew(
        self, owner: str, leases: Mapping[str, int], *, lease: float
    ) -> Collection[str]:
        await anyio.lowlevel.checkpoint()
        now = time.time()
        held = set()
        for saga_id, epoch in leases.items():
            row = self._instances.get(saga_id)
            if row is not None and row.owner == owner and row.epoch == epoch:
                self._instances[saga_id] = attrs.evolve(row, lease_until=now + lease)
                held.add(saga_id)
        return held

    async def release(self, owner: str, leases: Mapping[str, int]) -> None:
        await anyio.lowlevel.checkpoint()
        released = False
        for saga_id, epoch in leases.items():
            row = self._instances.get(saga_id)
            if row is not None and row.owner == owner and row.epoch == epoch:
                self._instances[saga_id] = attrs.evolve(row, owner=None, lease_until=None)
                released = True
        if released:
            self._subscribers.wake(None, "released")

    # -- the inbox ---------------------------------------------------------------------

    async def send(self, message: InboxRecord) -> None:
        await anyio.lowlevel.checkpoint()
        if message.message_id in self._inbox:
            return
        self._inbox[message.message_id] = (message, None)
        row = self._instances.get(message.saga_id)
        if row is not None and row.owner is not None:
            self._subscribers.wake(row.owner, "inbox")

    async def inbox(
        self, owner: str | None = None, *, saga_id: str | None = None, limit: int = 100
    ) -> Sequence[InboxRecord]:
        await anyio.lowlevel.checkpoint()
        found: list[InboxRecord] = []
        for message, reply in self._inbox.values():
            if len(found) >= limit:
                break
            if reply is not None or (saga_id is not None and message.saga_id != saga_id):
                continue
            row = self._instances.get(message.saga_id)
            if owner is None or (row is not None and row.owner == owner):
                found.append(message)
        return found

    async def answer(self, replies: Sequence[Reply]) -> None:
        await anyio.lowlevel.checkpoint()
        self._answer(replies)

    def _answer(self, replies: Sequence[Reply]) -> None:
        for reply in replies:
            entry = self._inbox.get(reply.message_id)
            if entry is not None and entry[1] is None:
                self._inbox[reply.message_id] = (entry[0], reply.body)
                self._subscribers.wake(entry[0].sender, "reply")

    async def take_reply(self, message_id: str) -> str | None:
        await anyio.lowlevel.checkpoint()
        entry = self._inbox.get(message_id)
        if entry is None or entry[1] is None:
            return None
        del self._inbox[message_id]
        return entry[1]

    def subscribe(self, owner: str, wake: Wake) -> Callable[[], None]:
        return self._subscribers.subscribe(owner, wake)
