"""Postgres store: asyncpg, a connection pool, JSONB payloads and group commit.

Writes: every create and commit waiting when the writer task wakes goes into one
transaction whose cost does not grow with its size: each table is written by one statement
over array parameters (``unnest``), so a batch of N transitions takes a constant number of
round trips. Each transition is still checked on its own (epoch, then sequence); if the
batch fails for a reason that is not transient, its writes are tried again one by one so
that one bad write fails alone.

Reads and lease operations are single statements on pooled connections. asyncpg prepares
every statement it runs and caches it per connection, so a repeated query is parsed and
planned once per connection. Lease times are measured on the database's clock.

asyncpg runs on asyncio only: under trio the store refuses to open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.abc
import asyncpg

from saga._crashpoints import crashpoint
from saga._store.group_commit import Write, WriteQueue
from saga._store.port import (
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
from saga.errors import (
    ConflictError,
    FencedError,
    StoreError,
    StoreUnavailableError,
)
from saga_adapters.postgres import _schema
from saga_adapters.postgres._errors import (
    DRIVER_ERRORS,
    breaks_connection,
    translate,
    translated,
)
from saga_adapters.postgres._listener import Listener, channel_for
from saga_adapters.postgres._sql import Statements

__all__ = ["PostgresStore"]

log = logging.getLogger("saga.postgres")

T = TypeVar("T")
Connection = Any  # asyncpg.Connection (or the pool's proxy of one); asyncpg has no stubs
Record = Any  # asyncpg.Record

#: ``create_pool`` arguments that ``connect`` does not take.
_POOL_ONLY = {"max_queries", "max_inactive_connection_lifetime", "setup", "init", "reset"}


#: How often a batch that lost a deadlock or serialization race is written again.
RACE_RETRIES = 3
_RACES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure


def _lost_a_race(error: BaseException | None) -> bool:
    return error is not None and getattr(error.__cause__, "sqlstate", None) in _RACES


def _instance(row: Record) -> InstanceRecord:
    return InstanceRecord(
        saga_id=row[0],
        saga=row[1],
        version=row[2],
        status=row[3],
        sequence=row[4],
        input=row[5],
        created_at=row[6],
        updated_at=row[7],
        owner=row[8],
        epoch=row[9],
        lease_until=row[10],
        wake_at=row[11],
    )


def _inbox(row: Record) -> InboxRecord:
    return InboxRecord(
        message_id=row[0], saga_id=row[1], sender=row[2], body=row[3], created_at=row[4]
    )


class _Connection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection that is handed back without a reset round trip.

    asyncpg resets a connection it takes back (RESET ALL, UNLISTEN *, CLOSE ALL...): one more
    round trip for every read. The store sets no session state, so it skips that; an open
    transaction is still rolled back, and a connection interrupted mid-query is terminated,
    not handed back (see ``PostgresStore._connection``).
    """

    def get_reset_query(self) -> str:
        return ""


class PostgresStore:
    """A store in a Postgres database (asyncpg), shareable by many processes.

    Use as an async context manager, on asyncio: it opens a connection pool (creating or
    migrating the schema unless ``migrate=False``), a listener connection for wake-ups and
    the writer task on entry, and closes them on exit.

    Args:
        dsn: a libpq connection URI, ``postgresql://user@host:5432/dbname?...``.
        schema: the Postgres schema holding the tables; a plain lower-case identifier.
            Created if missing.
        migrate: bring the schema to this library's version on entry (concurrent openers
            take turns). With False, the schema must be current already: see
            :meth:`migrate`.
        batch_limit: the most creates and commits one transaction carries.
        min_size: connections the pool keeps open.
        max_size: the most connections the pool opens (plus one for the listener).
        connect_kwargs: passed to ``asyncpg.create_pool`` (``server_settings``,
            ``command_timeout``, ``ssl``, ``max_inactive_connection_lifetime``...), and
            those ``asyncpg.connect`` takes to the listener's connection too.

    Raises:
        ValueError: ``schema`` is not a plain lower-case identifier, or an option is bad.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "saga",
        migrate: bool = True,
        batch_limit: int = 1000,
        min_size: int = 1,
        max_size: int = 10,
        **connect_kwargs: Any,
    ) -> None:
        self.schema = _schema.check_schema_name(schema)
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(
                f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}"
            )
        self.dsn = dsn
        self._migrate = migrate
        self._pool_size = (min_size, max_size)
        self._connect_kwargs = connect_kwargs
        self._sql = Statements(schema)
        self._channel = channel_for(schema)
        self._pool: Any = None  # asyncpg.Pool
        self._subscribers = Subscribers()
        self._listener: Listener | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._queue = WriteQueue("Postgres", batch_limit)

    @property
    def batches(self) -> int:
        """How many transactions the writer committed."""
        return self._queue.batches

    @property
    def writes(self) -> int:
        """How many creates and commits those transactions carried."""
        return self._queue.writes

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> PostgresStore:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise StoreError(
                "the Postgres store needs asyncio (asyncpg runs on nothing else), and this is "
                "not an asyncio event loop (trio?); under trio, use the SQLite store"
            ) from None
        if self._task_group is not None:
            raise StoreError("the Postgres store is open already")
        kwargs = {"connection_class": _Connection, **self._connect_kwargs}
        with translated():
            pool = await asyncpg.create_pool(
                self.dsn, min_size=self._pool_size[0], max_size=self._pool_size[1], **kwargs
            )
        try:
            with translated():
                async with pool.acquire() as conn:
                    await self._prepare_schema(conn)
            self._pool = pool
            self._listener = Listener(self._connect, self._channel, self._subscribers)
            task_group = anyio.create_task_group()
            await task_group.__aenter__()
            try:
                with translated():
                    await task_group.start(self._listener.run)
            except BaseException:
                task_group.cancel_scope.cancel()
                await task_group.__aexit__(None, None, None)
                raise
            self._queue.open()
            task_group.start_soon(self._queue.run, self._write_batch)
            self._task_group = task_group
        except BaseException:
            self._pool = self._listener = None
            with anyio.CancelScope(shield=True):
                await self._close_pool(pool)
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
        self._queue.close()
        pool, self._pool, self._listener = self._pool, None, None
        if pool is not None:
            with anyio.CancelScope(shield=True):
                await self._close_pool(pool)

    @staticmethod
    async def _close_pool(pool: Any) -> None:
        with anyio.move_on_after(5):
            try:
                await pool.close()
            except DRIVER_ERRORS as exc:
                log.warning("postgres: closing the pool: %s", exc)
            else:
                return
        pool.terminate()

    async def _connect(self) -> Connection:
        """A connection of its own, outside the pool (for LISTEN and migrations)."""
        kwargs = {k: v for k, v in self._connect_kwargs.items() if k not in _POOL_ONLY}
        return await asyncpg.connect(self.dsn, **kwargs)

    async def _prepare_schema(self, conn: Connection) -> None:
        try:
            found = (
                await _schema.apply(conn, self.schema)
                if self._migrate
                else await _schema.installed(conn, self.schema)
            )
        except RuntimeError as exc:  # newer than this code
            raise StoreError(f"postgres: {exc}") from exc
        if not self._migrate and found != _schema.VERSION:
            raise StoreError(
                f"postgres: schema {self.schema!r} is at version {found}, this library needs "
                f"{_schema.VERSION}: migrate it first (PostgresStore.migrate, or open with "
                "migrate=True)"
                if found < _schema.VERSION
                else f"postgres: schema {self.schema!r} is at version {found}, newer than "
                f"this library's {_schema.VERSION}"
            )

    async def migrate(self) -> int:
        """Create or upgrade the schema now, on a connection of its own; returns the
        version found before. Safe to call while other processes use or migrate it.

        Raises:
            StoreError: the schema is newer than this library, or the database failed.
        """
        with translated():
            conn = await self._connect()
            try:
                return await _schema.apply(conn, self.schema)
            except RuntimeError as exc:
                raise StoreError(f"postgres: {exc}") from exc
            finally:
                with anyio.CancelScope(shield=True):
                    await conn.close()

    # -- connections ---------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection, translated errors, and never a broken one handed back.

        A query interrupted by cancellation (or by a failure of the connection itself)
        leaves the protocol mid-exchange, maybe mid-transaction: that connection is
        terminated, not returned to the pool, which opens a fresh one when it needs it.
        """
        pool = self._pool
        if pool is None:
            raise StoreUnavailableError("the Postgres store is not open (use 'async with')")
        with translated():
            conn = await pool.acquire()
        try:
            with translated():
                yield conn
        except BaseException as exc:
            if breaks_connection(exc):
                # (closed and handed back by asyncpg already, if it saw the connection die)
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await pool.release(conn)
                except DRIVER_ERRORS as exc:  # asyncpg terminated it: nothing to hand back
                    log.debug("postgres: a connection could not be reset: %s", exc)

    async def _read(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        async with self._connection() as conn:
            return await fn(conn)

    async def _write(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """``fn`` in a transaction of its own."""
        async with self._connection() as conn, conn.transaction():
            return await fn(conn)

    async def _fetch(self, sql: str, *args: Any) -> list[Record]:
        async with self._connection() as conn:
            return list(await conn.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> Record | None:
        async with self._connection() as conn:
            return await conn.fetchrow(sql, *args)

    # -- writes: group commit ----------------------------------------------------

    async def create(self, instance: NewInstance) -> InstanceRecord | None:
        return await self._queue.submit(instance)

    async def commit(self, transition: Transition) -> None:
        await self._queue.submit(transition)

    async def _write_batch(self, batch: list[Write]) -> None:
        """Write a batch; the writes Postgres rolled back to break a deadlock or a
        serialization conflict are tried again at once (nothing of them was written), up to
        ``RACE_RETRIES`` times, before their writers hear ``StoreUnavailableError``.

        Two transactions of one store can deadlock: a batch's commit and a lease renewal
        lock instance rows in no common order.
        """
        pending = batch
        for retry in range(RACE_RETRIES + 1):
            if retry:
                log.info("postgres: %d write(s) lost a lock race; writing again", len(pending))
            await self._write_batch_once(pending)
            pending = [w for w in pending if _lost_a_race(w.error)]
            if not pending:
                return

    async def _write_batch_once(self, batch: list[Write]) -> None:
        """One transaction for the whole batch; sets each write's result or error.

        If the transaction fails for a reason that is not transient, each write is tried
        again in a transaction of its own: one bad write fails alone, not its batch-mates.
        """
        for write in batch:
            write.result = write.error = None
        try:
            async with self._connection() as conn, conn.transaction():
                await self._apply(conn, batch)
                crashpoint("group_commit_written")
        except StoreError as exc:
            if len(batch) > 1 and not isinstance(exc, StoreUnavailableError):
                for write in batch:
                    await self._write_batch_once([write])
                return
            cause = exc.__cause__
            for write in batch:
                write.result = None
                write.error = (
                    self._conflict(write, cause)
                    if isinstance(cause, asyncpg.UniqueViolationError)
                    else exc
                )
        except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
            for write in batch:
                write.result = None
                write.error = translate(exc)

    @staticmethod
    def _conflict(write: Write, cause: BaseException) -> StoreError:
        """A unique violation of a lone commit: its events' sequences are taken already."""
        if isinstance(write.op, NewInstance):
            return translate(cause)
        t = write.op
        error = ConflictError(t.saga_id, expected=t.expected_sequence, actual=None)
        error.__cause__ = cause
        return error

    async def _apply(self, conn: Connection, batch: list[Write]) -> None:
        """Stage a batch (one write per instance) in the open transaction."""
        sql = self._sql
        accepted: list[Transition] = []

        creates = [w for w in batch if isinstance(w.op, NewInstance)]
        if creates:
            news = [w.op for w in creates if isinstance(w.op, NewInstance)]
            owners = [None if n.transition.ends_lease else n.owner for n in news]
            inserted = {
                row[0]
                for row in await conn.fetch(
                    sql.create,
                    [n.transition.saga_id for n in news],
                    [n.saga for n in news],
                    [n.version for n in news],
                    [n.transition.status for n in news],
                    [len(n.transition.events) for n in news],
                    [n.input for n in news],
                    [n.transition.at for n in news],
                    owners,
                    [float(n.lease) for n in news],
                    [n.transition.wake_at for n in news],
                )
            }
            existing = [w for w in creates if w.saga_id not in inserted]
            if existing:
                rows = await conn.fetch(sql.instances_by_id, [w.saga_id for w in existing])
                found = {row[0]: _instance(row) for row in rows}
                for write in existing:
                    write.result = found.get(write.saga_id)
                    if write.result is None:
                        raise StoreError(f"postgres: instance {write.saga_id!r} vanished")
            accepted.extend(w.transition for w in creates if w.saga_id in inserted)

        commits = [w for w in batch if isinstance(w.op, Transition)]
        if commits:
            ts = [w.transition for w in commits]
            moved = {
                row[0]
                for row in await conn.fetch(
                    sql.commit,
                    [t.saga_id for t in ts],
                    [t.expected_sequence for t in ts],
                    [t.epoch for t in ts],
                    [len(t.events) for t in ts],
                    [t.status for t in ts],
                    [t.at for t in ts],
                    [t.ends_lease for t in ts],
                    [t.wake_at for t in ts],
                )
            }
            refused = [w for w in commits if w.saga_id not in moved]
            if refused:
                rows = await conn.fetch(sql.positions, [w.saga_id for w in refused])
                positions = {row[0]: (row[1], row[2]) for row in rows}
                for write in refused:
                    write.error = self._refusal(write.transition, positions.get(write.saga_id))
            accepted.extend(w.transition for w in commits if w.saga_id in moved)

        await self._append(conn, accepted)

    @staticmethod
    def _refusal(t: Transition, position: tuple[int, int] | None) -> StoreError:
        """Why a commit was refused: the epoch is checked before the sequence."""
        if position is not None and position[1] != t.epoch:
            return FencedError(t.saga_id, epoch=t.epoch, actual=position[1])
        return ConflictError(
            t.saga_id,
            expected=t.expected_sequence,
            actual=None if position is None else position[0],
        )

    async def _append(self, conn: Connection, accepted: list[Transition]) -> None:
        """Events, tasks and replies of the accepted transitions: one statement each."""
        sql = self._sql
        events = [e for t in accepted for e in t.events]
        if events:
            await conn.execute(
                sql.append,
                [e.saga_id for e in events],
                [e.sequence for e in events],
                [e.type for e in events],
                [e.schema for e in events],
                [e.data for e in events],
                [e.recorded_at for e in events],
            )
        # One row per instance: its newest (one statement may not touch a row twice).
        snapshots: dict[str, tuple[int, str]] = {}
        for t in accepted:
            if t.snapshot is not None:
                sequence = t.expected_sequence + len(t.events)
                if sequence > snapshots.get(t.saga_id, (-1, ""))[0]:
                    snapshots[t.saga_id] = (sequence, t.snapshot)
        if snapshots:
            await conn.execute(
                sql.snapshot,
                list(snapshots),
                [sequence for sequence, _ in snapshots.values()],
                [data for _, data in snapshots.values()],
            )
        done = [(t.saga_id, task_id) for t in accepted for task_id in t.done_tasks]
        if done:
            await conn.execute(sql.finish_tasks, [d[0] for d in done], [d[1] for d in done])
        # A task id given twice keeps its last version (one statement may not touch a row
        # twice).
        new = {(k.saga_id, k.task_id): k for t in accepted for k in t.new_tasks}
        if new:
            tasks = list(new.values())
            await conn.execute(
                sql.add_tasks,
                [k.saga_id for k in tasks],
                [k.task_id for k in tasks],
                [k.kind for k in tasks],
                [k.step for k in tasks],
                [k.attempt for k in tasks],
                [k.run_after for k in tasks],
            )
        messages = [m for t in accepted for m in t.messages]
        if messages:
            await conn.execute(
                self._sql.send_many,
                [m.message_id for m in messages],
                [m.saga_id for m in messages],
                [m.sender for m in messages],
                [m.body for m in messages],
                [m.created_at for m in messages],
                self._channel,
            )
        replies = [reply for t in accepted for reply in t.replies]
        if replies:
            await self._answer(conn, replies)

    async def _answer(self, conn: Connection, replies: Sequence[Reply]) -> None:
        first: dict[str, str] = {}
        for reply in replies:  # the first answer to a message wins
            first.setdefault(reply.message_id, reply.body)
        await conn.execute(self._sql.answer, list(first), list(first.values()), self._channel)

    # -- reads -------------------------------------------------------------------

    async def instance(self, saga_id: str) -> InstanceRecord | None:
        row = await self._fetchrow(self._sql.instance, saga_id)
        return None if row is None else _instance(row)

    async def load(self, saga_id: str) -> tuple[InstanceRecord, Sequence[EventRecord]] | None:
        row = await self._fetchrow(self._sql.load, saga_id)
        if row is None:
            return None
        events = [
            EventRecord(saga_id=saga_id, sequence=s, type=t, schema=v, data=d, recorded_at=at)
            for s, t, v, d, at in row[12]
        ]
        return _instance(row), events

    async def load_recent(
        self, saga_id: str
    ) -> tuple[InstanceRecord, SnapshotRecord | None, Sequence[EventRecord]] | None:
        row = await self._fetchrow(self._sql.load_recent, saga_id)
        if row is None:
            return None
        snapshot = (
            None
            if row[12] is None
            else SnapshotRecord(saga_id=saga_id, sequence=row[12], data=row[13])
        )
        events = [
            EventRecord(saga_id=saga_id, sequence=s, type=t, schema=v, data=d, recorded_at=at)
            for s, t, v, d, at in row[14]
        ]
        return _instance(row), snapshot, events

    async def instances(
        self, *, statuses: Collection[str] | None = None, limit: int | None = None
    ) -> Sequence[InstanceRecord]:
        limit = None if limit is None else max(limit, 0)
        if statuses is None:
            rows = await self._fetch(self._sql.instances_all, limit)
        else:
            rows = await self._fetch(self._sql.instances_in, sorted(statuses), limit)
        return [_instance(row) for row in rows]

    async def tasks(self, saga_id: str | None = None) -> Sequence[TaskRecord]:
        if saga_id is None:
            rows = await self._fetch(self._sql.tasks_all)
        else:
            rows = await self._fetch(self._sql.tasks_of, saga_id)
        return [
            TaskRecord(task_id=i, saga_id=s, kind=k, step=n, attempt=a, run_after=r)
            for i, s, k, n, a, r in rows
        ]

    # -- ownership: single statements on the database clock ------------------------------

    async def acquire(self, saga_id: str, owner: str, *, lease: float) -> InstanceRecord | None:
        async def write(conn: Connection) -> InstanceRecord | None:
            row = await conn.fetchrow(self._sql.acquire, saga_id, owner, float(lease))
            if row is None:  # held by another (or missing): the row as it is now
                row = await conn.fetchrow(self._sql.instance, saga_id)
            return None if row is None else _instance(row)

        return await self._read(write)

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
        kinds = sorted(set(sagas))
        if not kinds or limit <= 0:
            return []
        rows = await self._fetch(
            self._sql.claim,
            owner,
            float(lease),
            [name for name, _ in kinds],
            [version for _, version in kinds],
            owner if own else None,
            limit,
            after,
            None if due is None else float(due),
        )
        return [_instance(row) for row in rows]  # in the database's order (see the SQL)

    async def next_wake(self, *, sagas: Collection[tuple[str, int]], after: float) -> float | None:
        kinds = sorted(set(sagas))
        if not kinds:
            return None
        rows = await self._fetch(
            self._sql.next_wake,
            float(after),
            [name for name, _ in kinds],
            [version for _, version in kinds],
        )
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    async def renew(
        self, owner: str, leases: Mapping[str, int], *, lease: float
    ) -> Collection[str]:
        if not leases:
            return set()
        rows = await self._fetch(
            self._sql.renew, owner, float(lease), list(leases), list(leases.values())
        )
        return {row[0] for row in rows}

    async def release(self, owner: str, leases: Mapping[str, int]) -> None:
        # The wake-up ("released", for everyone) is sent by the statement, on commit.
        if leases:
            await self._fetch(
                self._sql.release, owner, list(leases), list(leases.values()), self._channel
            )

    # -- the inbox -----------------------------------------------------------------------

    async def send(self, message: InboxRecord) -> None:
        m = message
        # Inserted and its owner woken (on commit) in one statement.
        await self._fetch(
            self._sql.send, m.message_id, m.saga_id, m.sender, m.body, m.created_at, self._channel
        )

    async def inbox(
        self, owner: str | None = None, *, saga_id: str | None = None, limit: int = 100
    ) -> Sequence[InboxRecord]:
        sql, limit = self._sql, max(limit, 0)
        if owner is None and saga_id is None:
            rows = await self._fetch(sql.inbox_all, limit)
        elif owner is None:
            rows = await self._fetch(sql.inbox_of_saga, limit, saga_id)
        elif saga_id is None:
            rows = await self._fetch(sql.inbox_of_owner, limit, owner)
        else:
            rows = await self._fetch(sql.inbox_of_both, limit, owner, saga_id)
        return [_inbox(row) for row in rows]

    async def answer(self, replies: Sequence[Reply]) -> None:
        if replies:
            await self._read(lambda conn: self._answer(conn, replies))

    async def take_reply(self, message_id: str) -> str | None:
        row = await self._fetchrow(self._sql.take_reply, message_id)
        return None if row is None else str(row[0])

    def subscribe(self, owner: str, wake: Wake) -> Callable[[], None]:
        return self._subscribers.subscribe(owner, wake)
