"""Group commit for store adapters: the writes waiting for a writer, and the writer loop.

Every create and commit an adapter receives becomes a :class:`Write` in a
:class:`WriteQueue`; one writer task takes whatever is pending, hands it to the adapter's
``write_batch`` (one transaction), and wakes each caller with its own result or error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import attrs

from saga._store.port import InstanceRecord, NewInstance, Transition
from saga.errors import StoreUnavailableError

__all__ = ["Write", "WriteQueue"]


@attrs.define(eq=False)
class Write:
    """One create or commit waiting for the writer; the adapter sets result or error."""

    op: NewInstance | Transition
    done: anyio.Event = attrs.field(factory=anyio.Event)
    result: InstanceRecord | None = None
    error: Exception | None = None

    @property
    def saga_id(self) -> str:
        op = self.op
        return op.transition.saga_id if isinstance(op, NewInstance) else op.saga_id

    @property
    def transition(self) -> Transition:
        op = self.op
        return op.transition if isinstance(op, NewInstance) else op


class WriteQueue:
    """Pending writes, batched for one writer task. Open it in the loop that uses it."""

    def __init__(self, store: str, batch_limit: int) -> None:
        if batch_limit < 1:
            raise ValueError(f"batch_limit must be >= 1, got {batch_limit!r}")
        self._store = store
        self._batch_limit = batch_limit
        self._pending: list[Write] = []
        self._wake: anyio.Event | None = None  # made on open, in the loop that uses it
        #: How many transactions the writer committed, and how many writes they carried.
        self.batches = 0
        self.writes = 0

    def open(self) -> None:
        self._wake = anyio.Event()

    def close(self) -> None:
        """Stop taking writes; those still pending hear that the store closed."""
        self._wake = None
        for write in self._pending:  # their callers are gone or will hear why
            write.error = StoreUnavailableError("the store was closed before this write")
            write.done.set()
        self._pending.clear()

    async def submit(self, op: NewInstance | Transition) -> InstanceRecord | None:
        """Queue ``op``; its result once the writer has committed it, or its error."""
        if self._wake is None:
            raise StoreUnavailableError(f"the {self._store} store is not open (use 'async with')")
        write = Write(op)
        self._pending.append(write)
        self._wake.set()
        await write.done.wait()
        if write.error is not None:
            raise write.error
        return write.result

    def _next_batch(self) -> list[Write]:
        """The pending writes for the next transaction: at most one per instance.

        A later write to an instance already in the batch waits for the next one, so that
        it is checked against what the earlier one left (as if each ran alone, in order).
        """
        batch: list[Write] = []
        rest: list[Write] = []
        seen: set[str] = set()
        for i, write in enumerate(self._pending):
            if len(batch) >= self._batch_limit:
                rest.extend(self._pending[i:])
                break
            if write.saga_id in seen:
                rest.append(write)
            else:
                seen.add(write.saga_id)
                batch.append(write)
        self._pending = rest
        return batch

    async def run(self, write_batch: Callable[[list[Write]], Awaitable[None]]) -> None:
        """The writer: forever, commit what is pending with ``write_batch``."""
        while True:
            assert self._wake is not None, "WriteQueue.run before open()"
            await self._wake.wait()
            # A fresh event before draining, so a write queued during the flush is not missed.
            self._wake = anyio.Event()
            while self._pending:
                batch = self._next_batch()
                # Shielded: once a batch is handed on, its waiters must hear the outcome
                # even if the store is being closed.
                with anyio.CancelScope(shield=True):
                    await write_batch(batch)
                self.batches += 1
                self.writes += len(batch)
                for write in batch:
                    write.done.set()
                del batch  # not kept (with its payloads) until the next write comes
