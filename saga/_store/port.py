"""The store port: the records a store keeps and the protocol the runtime depends on.

Stores deal in encoded records (JSON text), never in events: decoding belongs to the
runtime, so an adapter is a thin translation to its database and nothing more.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

import attrs

__all__ = ["EventRecord", "InstanceRecord", "NewInstance", "Store", "TaskRecord", "Transition"]


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


@attrs.frozen(kw_only=True)
class Transition:
    """Events and work of one decision, committed atomically or not at all.

    The store accepts it only if the instance's sequence is still ``expected_sequence``;
    ``events`` carry the sequences that follow it, in order.
    """

    saga_id: str
    expected_sequence: int
    events: tuple[EventRecord, ...]
    status: str
    at: float
    new_tasks: tuple[TaskRecord, ...] = ()
    done_tasks: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class NewInstance:
    """The first transition of an instance, with what identifies the start."""

    saga: str
    version: int
    input: str
    transition: Transition


class Store(Protocol):
    """What the runtime needs of a store. Every method may raise ``StoreError``."""

    async def create(self, instance: NewInstance) -> InstanceRecord | None:
        """Insert a new instance with its first transition.

        Returns ``None`` when it was created, or the existing record (writing nothing) when
        an instance with that id exists already. Durable when it returns.
        """
        ...

    async def commit(self, transition: Transition) -> None:
        """Append a transition. Durable when it returns.

        Raises:
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

    async def instances(
        self, *, statuses: Collection[str] | None = None, limit: int | None = None
    ) -> Sequence[InstanceRecord]:
        """Instances, optionally only those in ``statuses``, ordered by id."""
        ...

    async def tasks(self, saga_id: str | None = None) -> Sequence[TaskRecord]:
        """Outstanding work items, of one instance or of all, ordered by id."""
        ...
