"""SQLite store: stdlib ``sqlite3`` on worker threads, with group commit.

Why not one ``await`` per statement (as aiosqlite does): the thread hop, not the disk, is
what limits SQLite from async code (about 75 µs a hop here). So every write a batch of
actors has ready goes to the writer connection in one hop and one transaction; reads go to a
second, read-only connection, one hop each, so they never queue behind commits. Threads are
reached through ``anyio.to_thread``, so the store runs the same under asyncio and trio.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal, TypeVar

import anyio
import anyio.abc
import anyio.to_thread

from saga._crashpoints import crashpoint
from saga._store.group_commit import Write, WriteQueue
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
from saga.errors import ConflictError, FencedError, StoreError, StoreUnavailableError
from saga_adapters.sqlite._schema import migrate

__all__ = ["SQLiteStore"]

T = TypeVar("T")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_INSTANCE_COLUMNS = (
    "saga_id, saga, version, status, sequence, input, created_at, updated_at, owner, epoch, "
    "lease_until, wake_at"
)
_INBOX_COLUMNS = "message_id, saga_id, sender, body, created_at"

#: The database clock, in seconds since the Unix epoch: every lease is measured on it.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
#: A lease nobody holds: no owner, or expired (or, for ``?`` bound to a name, held by it).
_FREE = f"(owner IS NULL OR lease_until <= {_NOW} OR owner = ?)"
#: Needs a driver by ``?`` (twice; NULL: whenever): due by its wake-up time, or messaged.
_DUE = (
    "(? IS NULL OR wake_at <= ? OR owner = ? OR EXISTS (SELECT 1 FROM saga_inbox b"
    " WHERE b.saga_id = saga_instances.saga_id AND b.reply IS NULL))"
)


# Primary result codes that say "not now" rather than "never": busy or locked by another
# connection, I/O error, disk full, cannot open, lock protocol. Everything else is final.
_TRANSIENT = {5, 6, 10, 13, 14, 15}


def _translate(exc: sqlite3.Error) -> StoreError:
    """The one place a driver error becomes ours (with the driver's as its cause)."""
    code = getattr(exc, "sqlite_errorcode", None)
    error: StoreError
    if code is not None and code & 0xFF in _TRANSIENT:
        error = StoreUnavailableError(f"sqlite: {exc}")
    else:
        error = StoreError(f"sqlite: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def _instance(row: Sequence[Any]) -> InstanceRecord:
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


def _inbox(row: Sequence[Any]) -> InboxRecord:
    return InboxRecord(
        message_id=row[0], saga_id=row[1], sender=row[2], body=row[3], created_at=row[4]
    )


class SQLiteStore:
    """A store in one SQLite file, WAL mode, ``synchronous=FULL`` by default.

    Use as an async context manager; it opens (creating or migrating) the file on entry.

    Args:
        path: the database file; created if missing.
        synchronous: SQLite's ``synchronous`` pragma. ``FULL`` (the default) makes every
            commit durable against power loss; ``NORMAL`` only against process crashes.
        batch_limit: the most creates and commits one transaction carries.
        busy_timeout: seconds to wait for another process's write lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        batch_limit: int = 1000,
        busy_timeout: float = 5.0,
    ) -> None:
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path = os.fspath(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            # The reader connection would see another, empty database.
            raise ValueError(
                f"SQLiteStore needs a file path, got {self.path!r}; use MemoryStore for a "
                "store in memory"
            )
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        # Two connections, each used by one thread at a time: the writer's, and a reader's
        # so that reads (recovery, handles) do not queue behind commits. WAL lets the
        # reader see a consistent snapshot while the writer writes.
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        # Made on entry, in the event loop that uses them (a store may be reopened in
        # another one).
        self._limiter: anyio.CapacityLimiter
        self._read_limiter: anyio.CapacityLimiter
        self._queue = WriteQueue("SQLite", batch_limit)
        self._task_group: anyio.abc.TaskGroup | None = None
        # Other processes sharing the file are not woken: their coordinators poll.
        self._subscribers = Subscribers()

    @property
    def batches(self) -> int:
        """How many transactions the writer committed."""
        return self._queue.batches

    @property
    def writes(self) -> int:
        """How many creates and commits those transactions carried."""
        return self._queue.writes

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> SQLiteStore:
        self._limiter = anyio.CapacityLimiter(1)
        self._read_limiter = anyio.CapacityLimiter(1)
        self._conn = await self._run(self._open, True, limiter=self._limiter)
        try:
            self._reader = await self._run(self._open, False, limiter=self._read_limiter)
        except BaseException:
            await anyio.to_thread.run_sync(self._conn.close, limiter=self._limiter)
            self._conn = None
            raise
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._queue.open()
        self._task_group.start_soon(self._queue.run, self._write_batch)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(None, None, None)
        self._task_group = None
        self._queue.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)
        reader, self._reader = self._reader, None
        if reader is not None:
            await anyio.to_thread.run_sync(reader.close, limiter=self._read_limiter)

    def _open(self, writer: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # serialized by its limiter
            timeout=self._busy_timeout,
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"sqlite: could not switch {self.path!r} to WAL (got {mode})")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            if writer:
                migrate(conn)
            else:
                conn.execute("PRAGMA query_only=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _run(self, fn: Callable[..., T], *args: Any, limiter: anyio.CapacityLimiter) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        except RuntimeError as exc:  # schema newer than this code
            raise StoreError(f"sqlite: {exc}") from exc

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailableError("the SQLite store is not open (use 'async with')")
        return self._conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        reader = self._reader
        if reader is None:
            raise StoreUnavailableError("the SQLite store is not open (use 'async with')")
        return await self._run(fn, reader, limiter=self._read_limiter)

    # -- writes: group commit ----------------------------------------------------

    async def create(self, instance: NewInstance) -> InstanceRecord | None:
        return await self._queue.submit(instance)

    async def commit(self, transition: Transition) -> None:
        await self._queue.submit(transition)

    async def _write_batch(self, batch: list[Write]) -> None:
        # One thread hop for the whole batch; then wake the senders of what it answered.
        senders = await anyio.to_thread.run_sync(self._commit_batch, batch, limiter=self._limiter)
        for sender in senders:
            self._subscribers.wake(sender, "reply")

    def _commit_batch(self, batch: list[Write]) -> list[str]:
        """One transaction for the whole batch; each write is checked on its own.

        If the batch fails for a reason that is not transient, each write is tried again in a
        transaction of its own, so that one bad write fails alone, not its batch-mates.
        Returns the senders of the inbox messages the batch answered.
        """
        senders: list[str] = []
        try:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                accepted = [t for t in (self._stage(db, w) for w in batch) if t is not None]
                senders = self._append(db, accepted)
                crashpoint("group_commit_written")
                db.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (disk full, I/O); a second
                # rollback would raise and hide the error that matters.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            error = _translate(exc)
            if len(batch) > 1 and not isinstance(error, StoreUnavailableError):
                for write in batch:
                    write.result = write.error = None
                    senders.extend(self._commit_batch([write]))
                return senders
            for write in batch:
                write.error = error
                write.result = None
            return []
        except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
            for write in batch:
                write.error = StoreError(f"sqlite: {type(exc).__name__}: {exc}")
                write.error.__cause__ = exc
                write.result = None
            return []
        return senders

    @staticmethod
    def _stage(db: sqlite3.Connection, write: Write) -> Transition | None:
        """Claim the instance row for ``write``; the transition to append, or None."""
        op = write.op
        if isinstance(op, NewInstance):
            t = op.transition
            owner = None if t.ends_lease else op.owner
            cur = db.execute(
                "INSERT INTO saga_instances (saga_id, saga, version, status, sequence, input, "
                "created_at, updated_at, owner, epoch, lease_until, wake_at) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN ? THEN {_NOW} + ? END, ?) "
                "ON CONFLICT (saga_id) DO NOTHING",
                (
                    t.saga_id,
                    op.saga,
                    op.version,
                    t.status,
                    len(t.events),
                    op.input,
                    t.at,
                    t.at,
                    owner,
                    0 if owner is None else 1,
                    owner is not None,
                    op.lease,
                    t.wake_at,
                ),
            )
            if cur.rowcount == 1:
                return t
            row = db.execute(
                f"SELECT {_INSTANCE_COLUMNS} FROM saga_instances WHERE saga_id = ?", (t.saga_id,)
            ).fetchone()
            write.result = _instance(row)
            return None
        t = op
        cur = db.execute(
            "UPDATE saga_instances SET status = ?, sequence = ?, updated_at = ?, wake_at = ?, "
            "owner = CASE WHEN ? THEN NULL ELSE owner END, "
            "lease_until = CASE WHEN ? THEN NULL ELSE lease_until END "
            "WHERE saga_id = ? AND sequence = ? AND epoch = ?",
            (
                t.status,
                t.expected_sequence + len(t.events),
                t.at,
                t.wake_at,
                t.ends_lease,
                t.ends_lease,
                t.saga_id,
                t.expected_sequence,
                t.epoch,
            ),
        )
        if cur.rowcount == 1:
            return t
        row = db.execute(
            "SELECT sequence, epoch FROM saga_instances WHERE saga_id = ?", (t.saga_id,)
        ).fetchone()
        if row is not None and row[1] != t.epoch:
            write.error = FencedError(t.saga_id, epoch=t.epoch, actual=row[1])
        else:
            write.error = ConflictError(
                t.saga_id, expected=t.expected_sequence, actual=None if row is None else row[0]
            )
        return None

    @staticmethod
    def _append(db: sqlite3.Connection, accepted: list[Transition]) -> list[str]:
        db.executemany(
            "INSERT INTO saga_events (saga_id, sequence, type, schema, data, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (e.saga_id, e.sequence, e.type, e.schema, e.data, e.recorded_at)
                for t in accepted
                for e in t.events
            ],
        )
        snapshots = [
            (t.saga_id, t.expected_sequence + len(t.events), t.snapshot)
            for t in accepted
            if t.snapshot is not None
        ]
        if snapshots:
            # The latest wins: an accepted commit is always the instance's newest.
            db.executemany(
                "INSERT INTO saga_snapshots (saga_id, sequence, data) VALUES (?, ?, ?) "
                "ON CONFLICT (saga_id) DO UPDATE SET sequence = excluded.sequence, "
                "data = excluded.data",
                snapshots,
            )
        done = [(task_id,) for t in accepted for task_id in t.done_tasks]
        if done:
            db.executemany("DELETE FROM saga_tasks WHERE task_id = ?", done)
        new = [
            (k.task_id, k.saga_id, k.kind, k.step, k.attempt, k.run_after)
            for t in accepted
            for k in t.new_tasks
        ]
        if new:
            db.executemany(
                "INSERT OR REPLACE INTO saga_tasks (task_id, saga_id, kind, step, attempt, "
                "run_after) VALUES (?, ?, ?, ?, ?, ?)",
                new,
            )
        messages = [m for t in accepted for m in t.messages]
        if messages:
            db.executemany(
                "INSERT INTO saga_inbox (message_id, saga_id, sender, body, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
                [(m.message_id, m.saga_id, m.sender, m.body, m.created_at) for m in messages],
            )
        replies = [reply for t in accepted for reply in t.replies]
        return _answer(db, replies) if replies else []

    # -- reads -------------------------------------------------------------------

    async def instance(self, saga_id: str) -> InstanceRecord | None:
        def read(db: sqlite3.Connection) -> InstanceRecord | None:
            row = db.execute(
                f"SELECT {_INSTANCE_COLUMNS} FROM saga_instances WHERE saga_id = ?", (saga_id,)
            ).fetchone()
            return None if row is None else _instance(row)

        return await self._read(read)

    async def load(self, saga_id: str) -> tuple[InstanceRecord, Sequence[EventRecord]] | None:
        def read(db: sqlite3.Connection) -> tuple[InstanceRecord, list[EventRecord]] | None:
            # One read transaction: the row and the events are one snapshot, even with
            # another process writing to the file.
            db.execute("BEGIN")
            try:
                row = db.execute(
                    f"SELECT {_INSTANCE_COLUMNS} FROM saga_instances WHERE saga_id = ?",
                    (saga_id,),
                ).fetchone()
                if row is None:
                    return None
                rows = db.execute(
                    "SELECT sequence, type, schema, data, recorded_at FROM saga_events "
                    "WHERE saga_id = ? ORDER BY sequence",
                    (saga_id,),
                ).fetchall()
            finally:
                db.execute("COMMIT")
            events = [
                EventRecord(saga_id=saga_id, sequence=s, type=t, schema=v, data=d, recorded_at=at)
                for s, t, v, d, at in rows
            ]
            return _instance(row), events

        return await self._read(read)

    async def load_recent(
        self, saga_id: str
    ) -> tuple[InstanceRecord, SnapshotRecord | None, Sequence[EventRecord]] | None:
        def read(
            db: sqlite3.Connection,
        ) -> tuple[InstanceRecord, SnapshotRecord | None, list[EventRecord]] | None:
            db.execute("BEGIN")  # one read transaction, as in load
            try:
                row = db.execute(
                    f"SELECT {_INSTANCE_COLUMNS} FROM saga_instances WHERE saga_id = ?",
                    (saga_id,),
                ).fetchone()
                if row is None:
                    return None
                found = db.execute(
                    "SELECT sequence, data FROM saga_snapshots WHERE saga_id = ?", (saga_id,)
                ).fetchone()
                rows = db.execute(
                    "SELECT sequence, type, schema, data, recorded_at FROM saga_events "
                    "WHERE saga_id = ? AND sequence > ? ORDER BY sequence",
                    (saga_id, 0 if found is None else found[0]),
                ).fetchall()
            finally:
                db.execute("COMMIT")
            snapshot = (
                None
                if found is None
                else SnapshotRecord(saga_id=saga_id, sequence=found[0], data=found[1])
            )
            events = [
                EventRecord(saga_id=saga_id, sequence=s, type=t, schema=v, data=d, recorded_at=at)
                for s, t, v, d, at in rows
            ]
            return _instance(row), snapshot, events

        return await self._read(read)

    async def instances(
        self, *, statuses: Collection[str] | None = None, limit: int | None = None
    ) -> Sequence[InstanceRecord]:
        def read(db: sqlite3.Connection) -> list[InstanceRecord]:
            sql = f"SELECT {_INSTANCE_COLUMNS} FROM saga_instances"
            args: list[Any] = []
            if statuses is not None:
                wanted = sorted(statuses)
                sql += f" WHERE status IN ({', '.join('?' * len(wanted))})"
                args.extend(wanted)
            sql += " ORDER BY saga_id"
            if limit is not None:
                sql += " LIMIT ?"
                args.append(limit)
            return [_instance(row) for row in db.execute(sql, args).fetchall()]

        return await self._read(read)

    async def tasks(self, saga_id: str | None = None) -> Sequence[TaskRecord]:
        def read(db: sqlite3.Connection) -> list[TaskRecord]:
            sql = "SELECT task_id, saga_id, kind, step, attempt, run_after FROM saga_tasks"
            args: tuple[str, ...] = ()
            if saga_id is not None:
                sql += " WHERE saga_id = ?"
                args = (saga_id,)
            rows = db.execute(sql + " ORDER BY task_id", args).fetchall()
            return [
                TaskRecord(task_id=i, saga_id=s, kind=k, step=n, attempt=a, run_after=r)
                for i, s, k, n, a, r in rows
            ]

        return await self._read(read)

    # -- ownership: each a transaction of its own on the writer connection -----------------

    async def _exclusive(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result

        if self._task_group is None:
            raise StoreUnavailableError("the SQLite store is not open (use 'async with')")
        return await self._run(run, limiter=self._limiter)

    async def acquire(self, saga_id: str, owner: str, *, lease: float) -> InstanceRecord | None:
        def write(db: sqlite3.Connection) -> InstanceRecord | None:
            row = db.execute(
                "UPDATE saga_instances SET owner = ?, epoch = epoch + 1, "
                f"lease_until = {_NOW} + ? WHERE saga_id = ? AND {_FREE} "
                f"RETURNING {_INSTANCE_COLUMNS}",
                (owner, lease, saga_id, owner),
            ).fetchone()
            if row is None:
                row = db.execute(
                    f"SELECT {_INSTANCE_COLUMNS} FROM saga_instances WHERE saga_id = ?", (saga_id,)
                ).fetchone()
            return None if row is None else _instance(row)

        return await self._exclusive(write)

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
        kinds = json.dumps(sorted([name, version] for name, version in sagas))
        statuses = json.dumps(ACTIVE_STATUSES)

        def write(db: sqlite3.Connection) -> list[InstanceRecord]:
            # One statement. SQLite has no SKIP LOCKED: BEGIN IMMEDIATE makes claimers
            # (of every process on the file) take turns instead.
            rows = db.execute(
                "UPDATE saga_instances SET owner = ?, epoch = epoch + 1, "
                f"lease_until = {_NOW} + ? WHERE saga_id IN ("
                "  SELECT saga_id FROM saga_instances"
                "  WHERE status IN (SELECT value FROM json_each(?))"
                "  AND EXISTS (SELECT 1 FROM json_each(?) k"
                "    WHERE json_extract(k.value, '$[0]') = saga"
                "    AND json_extract(k.value, '$[1]') = version)"
                f"  AND {_FREE} AND (? IS NULL OR saga_id > ?)"
                f"  AND {_DUE} ORDER BY saga_id LIMIT ?"
                f") RETURNING {_INSTANCE_COLUMNS}",
                (
                    owner,
                    lease,
                    statuses,
                    kinds,
                    owner if own else None,
                    after,
                    after,
                    due,
                    due,
                    owner if own else None,
                    limit,
                ),
            ).fetchall()
            # BINARY collation: SQLite's order of ids is Python's (code points).
            return sorted((_instance(row) for row in rows), key=lambda r: r.saga_id)

        return await self._exclusive(write)

    async def next_wake(self, *, sagas: Collection[tuple[str, int]], after: float) -> float | None:
        kinds = json.dumps(sorted([name, version] for name, version in sagas))
        statuses = json.dumps(ACTIVE_STATUSES)

        def read(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                "SELECT min(wake_at) FROM saga_instances"
                " WHERE status IN (SELECT value FROM json_each(?)) AND wake_at > ?"
                " AND EXISTS (SELECT 1 FROM json_each(?) k"
                "   WHERE json_extract(k.value, '$[0]') = saga"
                "   AND json_extract(k.value, '$[1]') = version)"
                f" AND {_FREE}",
                (statuses, after, kinds, None),
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._read(read)

    async def renew(
        self, owner: str, leases: Mapping[str, int], *, lease: float
    ) -> Collection[str]:
        held = json.dumps(dict(leases))

        def write(db: sqlite3.Connection) -> set[str]:
            rows = db.execute(
                f"UPDATE saga_instances SET lease_until = {_NOW} + ? "
                "WHERE owner = ? AND (saga_id, epoch) IN (SELECT key, value FROM json_each(?)) "
                "RETURNING saga_id",
                (lease, owner, held),
            ).fetchall()
            return {row[0] for row in rows}

        return await self._exclusive(write) if leases else set()

    async def release(self, owner: str, leases: Mapping[str, int]) -> None:
        held = json.dumps(dict(leases))

        def write(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE saga_instances SET owner = NULL, lease_until = NULL "
                "WHERE owner = ? AND (saga_id, epoch) IN (SELECT key, value FROM json_each(?))",
                (owner, held),
            ).rowcount

        if not leases:
            return
        released = await self._exclusive(write)
        if released:
            self._subscribers.wake(None, "released")

    # -- the inbox -----------------------------------------------------------------------

    async def send(self, message: InboxRecord) -> None:
        m = message

        def write(db: sqlite3.Connection) -> tuple[int, str | None]:
            cur = db.execute(
                "INSERT INTO saga_inbox (message_id, saga_id, sender, body, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
                (m.message_id, m.saga_id, m.sender, m.body, m.created_at),
            )
            row = db.execute(
                "SELECT owner FROM saga_instances WHERE saga_id = ?", (m.saga_id,)
            ).fetchone()
            return cur.rowcount, None if row is None else row[0]

        inserted, owner = await self._exclusive(write)
        if inserted and owner is not None:
            self._subscribers.wake(owner, "inbox")

    async def inbox(
        self, owner: str | None = None, *, saga_id: str | None = None, limit: int = 100
    ) -> Sequence[InboxRecord]:
        def read(db: sqlite3.Connection) -> list[InboxRecord]:
            rows = db.execute(
                f"SELECT {', '.join('i.' + c for c in _INBOX_COLUMNS.split(', '))} "
                "FROM saga_inbox i LEFT JOIN saga_instances s ON s.saga_id = i.saga_id "
                "WHERE i.reply IS NULL AND (? IS NULL OR s.owner = ?) "
                "AND (? IS NULL OR i.saga_id = ?) ORDER BY i.position LIMIT ?",
                (owner, owner, saga_id, saga_id, limit),
            ).fetchall()
            return [_inbox(row) for row in rows]

        return await self._read(read)

    async def answer(self, replies: Sequence[Reply]) -> None:
        if not replies:
            return
        for sender in await self._exclusive(lambda db: _answer(db, replies)):
            self._subscribers.wake(sender, "reply")

    async def take_reply(self, message_id: str) -> str | None:
        def write(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "DELETE FROM saga_inbox WHERE message_id = ? AND reply IS NOT NULL RETURNING reply",
                (message_id,),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._exclusive(write)

    def subscribe(self, owner: str, wake: Wake) -> Callable[[], None]:
        return self._subscribers.subscribe(owner, wake)


def _answer(db: sqlite3.Connection, replies: Sequence[Reply]) -> list[str]:
    """Answer the messages not answered yet; returns their senders."""
    senders = []
    for reply in replies:
        row = db.execute(
            f"UPDATE saga_inbox SET reply = ?, replied_at = {_NOW} "
            "WHERE message_id = ? AND reply IS NULL RETURNING sender",
            (reply.body, reply.message_id),
        ).fetchone()
        if row is not None:
            senders.append(row[0])
    return senders
