"""The test kit's store: any store, with declared faults and its I/O visible to the clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from saga._store.port import (
    EventRecord,
    InboxRecord,
    InstanceRecord,
    NewInstance,
    Reply,
    SnapshotRecord,
    Store,
    TaskRecord,
    Transition,
    Wake,
)
from saga.errors import ConflictError, StoreUnavailableError
from saga.testing._clock import VirtualClock
from saga.testing._faults import Faults

__all__ = ["KitStore"]

T = TypeVar("T")


class KitStore:
    """Wraps a store: injects the store faults declared on ``faults`` and marks every call
    as I/O on ``clock`` (so virtual time does not jump while a call is in flight)."""

    def __init__(self, inner: Store, clock: VirtualClock, faults: Faults) -> None:
        self.inner = inner
        self._clock = clock
        self._faults = faults

    async def _call(
        self, operation: str, call: Callable[[], Awaitable[T]], t: Transition | None = None
    ) -> T:
        unknown_outcome = False
        for rule in self._faults.store_faults(operation):
            match rule.kind:
                case "latency":
                    await self._clock.sleep(rule.seconds)
                case "unavailable":
                    raise StoreUnavailableError(f"injected: the store is unavailable ({operation})")
                case "conflict" if t is not None:  # as if another writer got there first
                    raise ConflictError(
                        t.saga_id, expected=t.expected_sequence, actual=t.expected_sequence + 1
                    )
                case "outcome_unknown":
                    unknown_outcome = True
        with self._clock.busy():
            result = await call()
        if unknown_outcome:
            raise StoreUnavailableError(
                f"injected: the connection was lost after the {operation} was sent (it was written)"
            )
        return result

    async def create(self, instance: NewInstance) -> InstanceRecord | None:
        return await self._call("create", lambda: self.inner.create(instance))

    async def commit(self, transition: Transition) -> None:
        await self._call("commit", lambda: self.inner.commit(transition), transition)

    async def instance(self, saga_id: str) -> InstanceRecord | None:
        return await self._call("instance", lambda: self.inner.instance(saga_id))

    async def load(self, saga_id: str) -> tuple[InstanceRecord, Sequence[EventRecord]] | None:
        return await self._call("load", lambda: self.inner.load(saga_id))

    async def load_recent(
        self, saga_id: str
    ) -> tuple[InstanceRecord, SnapshotRecord | None, Sequence[EventRecord]] | None:
        return await self._call("load_recent", lambda: self.inner.load_recent(saga_id))

    async def instances(
        self, *, statuses: Collection[str] | None = None, limit: int | None = None
    ) -> Sequence[InstanceRecord]:
        return await self._call(
            "instances", lambda: self.inner.instances(statuses=statuses, limit=limit)
        )

    async def tasks(self, saga_id: str | None = None) -> Sequence[TaskRecord]:
        return await self._call("tasks", lambda: self.inner.tasks(saga_id))

    async def acquire(self, saga_id: str, owner: str, *, lease: float) -> InstanceRecord | None:
        return await self._call("acquire", lambda: self.inner.acquire(saga_id, owner, lease=lease))

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
        return await self._call(
            "claim",
            lambda: self.inner.claim(
                owner, lease=lease, limit=limit, sagas=sagas, own=own, after=after, due=due
            ),
        )

    async def next_wake(self, *, sagas: Collection[tuple[str, int]], after: float) -> float | None:
        return await self._call("next_wake", lambda: self.inner.next_wake(sagas=sagas, after=after))

    async def renew(
        self, owner: str, leases: Mapping[str, int], *, lease: float
    ) -> Collection[str]:
        return await self._call("renew", lambda: self.inner.renew(owner, leases, lease=lease))

    async def release(self, owner: str, leases: Mapping[str, int]) -> None:
        await self._call("release", lambda: self.inner.release(owner, leases))

    async def send(self, message: InboxRecord) -> None:
        await self._call("send", lambda: self.inner.send(message))

    async def inbox(
        self, owner: str | None = None, *, saga_id: str | None = None, limit: int = 100
    ) -> Sequence[InboxRecord]:
        return await self._call(
            "inbox", lambda: self.inner.inbox(owner, saga_id=saga_id, limit=limit)
        )

    async def answer(self, replies: Sequence[Reply]) -> None:
        await self._call("answer", lambda: self.inner.answer(replies))

    async def take_reply(self, message_id: str) -> str | None:
        return await self._call("take_reply", lambda: self.inner.take_reply(message_id))

    def subscribe(self, owner: str, wake: Wake) -> Callable[[], None]:
        return self.inner.subscribe(owner, wake)

    def __getattr__(self, name: str) -> Any:  # the inner store's extras (close, path...)
        return getattr(self.inner, name)
