"""The in-memory store: the reference every adapter is held to by the contract tests."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import anyio
import attrs

from saga._store.port import EventRecord, InstanceRecord, NewInstance, TaskRecord, Transition
from saga.errors import ConflictError

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps everything in dicts: fast, and gone with the process. For tests and trials."""

    def __init__(self) -> None:
        self._instances: dict[str, InstanceRecord] = {}
        self._events: dict[str, list[EventRecord]] = {}
        self._tasks: dict[str, TaskRecord] = {}

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
        self._instances[t.saga_id] = InstanceRecord(
            saga_id=t.saga_id,
            saga=instance.saga,
            version=instance.version,
            status=t.status,
            sequence=len(t.events),
            input=instance.input,
            created_at=t.at,
            updated_at=t.at,
        )
        self._events[t.saga_id] = []
        self._apply(t)
        return None

    async def commit(self, transition: Transition) -> None:
        await anyio.lowlevel.checkpoint()
        t = transition
        current = self._instances.get(t.saga_id)
        actual = None if current is None else current.sequence
        if current is None or actual != t.expected_sequence:
            raise ConflictError(t.saga_id, expected=t.expected_sequence, actual=actual)
        self._instances[t.saga_id] = attrs.evolve(
            current, status=t.status, sequence=actual + len(t.events), updated_at=t.at
        )
        self._apply(t)

    def _apply(self, t: Transition) -> None:
        self._events[t.saga_id].extend(t.events)
        for task_id in t.done_tasks:
            self._tasks.pop(task_id, None)
        for task in t.new_tasks:
            self._tasks[task.task_id] = task

    async def instance(self, saga_id: str) -> InstanceRecord | None:
        await anyio.lowlevel.checkpoint()
        return self._instances.get(saga_id)

    async def load(self, saga_id: str) -> tuple[InstanceRecord, Sequence[EventRecord]] | None:
        await anyio.lowlevel.checkpoint()
        row = self._instances.get(saga_id)
        return None if row is None else (row, list(self._events[saga_id]))

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
