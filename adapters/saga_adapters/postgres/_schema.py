"""The Postgres schema: numbered migrations, applied in order under an advisory lock.

Every table lives in one Postgres schema whose name the user picks (default ``saga``), so
that several independent stores can share a database. The name is spliced into SQL, so it
is checked against :data:`SCHEMA_NAME` before any SQL is built.

Keys lead with ``saga_id`` wherever a key can (instances, events, tasks): the tables are
meant to shard by saga id on a distributed Postgres later. The inbox is keyed by its
message id alone, because message ids are unique across instances.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

__all__ = ["SCHEMA_NAME", "VERSION", "apply", "check_schema_name", "installed", "quoted"]

#: A plain, lower-case SQL identifier: what a schema name may be.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

MIGRATIONS: tuple[str, ...] = (
    # 1: instances with their leases, append-only events, work items, the inbox.
    """
    CREATE TABLE {schema}.saga_instances (
        saga_id     text PRIMARY KEY,
        saga        text NOT NULL,
        version     integer NOT NULL,
        status      text NOT NULL,
        sequence    bigint NOT NULL,
        input       jsonb NOT NULL,
        created_at  double precision NOT NULL,
        updated_at  double precision NOT NULL,
        owner       text,
        lease_until double precision,
        epoch       bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX saga_instances_status ON {schema}.saga_instances (status, saga_id);
    -- claim: active instances whose lease is free (NULL) or expired, by lease end.
    CREATE INDEX saga_instances_lease ON {schema}.saga_instances (status, lease_until);
    -- inbox(owner=...): the instances one coordinator holds.
    CREATE INDEX saga_instances_owner ON {schema}.saga_instances (owner, saga_id);
    CREATE TABLE {schema}.saga_events (
        saga_id     text NOT NULL,
        sequence    bigint NOT NULL,
        type        text NOT NULL,
        schema      integer NOT NULL,
        data        jsonb NOT NULL,
        recorded_at double precision NOT NULL,
        PRIMARY KEY (saga_id, sequence)
    );
    CREATE TABLE {schema}.saga_tasks (
        saga_id     text NOT NULL,
        task_id     text NOT NULL,
        kind        text NOT NULL,
        step        text NOT NULL,
        attempt     integer NOT NULL,
        run_after   double precision,
        lease_owner text,
        lease_until double precision,
        PRIMARY KEY (saga_id, task_id)
    );
    CREATE INDEX saga_tasks_id ON {schema}.saga_tasks (task_id);
    CREATE INDEX saga_tasks_due ON {schema}.saga_tasks (run_after);
    CREATE TABLE {schema}.saga_inbox (
        message_id  text PRIMARY KEY,
        position    bigint GENERATED ALWAYS AS IDENTITY,
        saga_id     text NOT NULL,
        sender      text NOT NULL,
        body        jsonb NOT NULL,
        created_at  double precision NOT NULL,
        reply       jsonb,
        replied_at  double precision
    );
    CREATE INDEX saga_inbox_saga ON {schema}.saga_inbox (saga_id, position);
    CREATE INDEX saga_inbox_pending ON {schema}.saga_inbox (position) WHERE reply IS NULL;
    """,
    # 2: instances sleep in the store: claimed when due (or messaged), not before. Rows from
    # before it are due at once (0) and get their real wake-up on their next commit.
    """
    ALTER TABLE {schema}.saga_instances ADD COLUMN wake_at double precision DEFAULT 0;
    CREATE INDEX saga_instances_wake ON {schema}.saga_instances (status, wake_at);
    CREATE INDEX saga_inbox_pending_saga ON {schema}.saga_inbox (saga_id) WHERE reply IS NULL;
    """,
    # 3: each instance's latest snapshot, so that a rebuild reads only the events after it.
    """
    CREATE TABLE {schema}.saga_snapshots (
        saga_id     text PRIMARY KEY,
        sequence    bigint NOT NULL,
        data        jsonb NOT NULL
    );
    """,
)

VERSION = len(MIGRATIONS)


def check_schema_name(name: object) -> str:
    """``name`` if it is a plain lower-case SQL identifier.

    Raises:
        ValueError: it is not (checked before it goes anywhere near SQL).
    """
    if not isinstance(name, str) or SCHEMA_NAME.fullmatch(name) is None:
        raise ValueError(
            f"a Postgres schema name must be a plain lower-case identifier "
            f"({SCHEMA_NAME.pattern}), got {name!r}"
        )
    return name


def quoted(schema: str) -> str:
    """The schema name as SQL: quoted, so that a reserved word stays a name."""
    return f'"{check_schema_name(schema)}"'


def _lock_key(schema: str) -> int:
    """The advisory lock key that serializes migrations of one schema (a signed int64)."""
    digest = hashlib.blake2b(f"saga-migrate:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def installed(conn: Any, schema: str) -> int:
    """The schema version in the database: 0 when there is none."""
    exists = await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{quoted(schema)}.saga_schema"
    )
    if not exists:
        return 0
    found = await conn.fetchval(f"SELECT max(version) FROM {quoted(schema)}.saga_schema")
    return int(found or 0)


def _not_newer(schema: str, found: int) -> int:
    if found > VERSION:
        raise RuntimeError(
            f"database schema {schema!r} is at version {found}, newer than this library's {VERSION}"
        )
    return found


async def apply(conn: Any, schema: str) -> int:
    """Bring ``schema`` to :data:`VERSION` on an asyncpg connection; returns the version
    found. Idempotent, atomic, and safe for concurrent openers: they take turns on a
    transaction-scoped advisory lock, and the later ones find nothing left to do.

    Raises:
        RuntimeError: the database's schema is newer than this code knows.
    """
    q = quoted(schema)
    # Current already (the common case): no lock, no DDL, so a role that may only read and
    # write data can open the store with migrations on.
    found = _not_newer(schema, await installed(conn, schema))
    if found == VERSION:
        return found
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(schema))
        # Looked up first: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
        # database even when the schema is there already.
        if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
            await conn.execute(f"CREATE SCHEMA {q}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {q}.saga_schema ("
            "version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        # Again, under the lock: another opener may have migrated while we waited.
        found = _not_newer(schema, await installed(conn, schema))
        for version in range(found + 1, VERSION + 1):
            await conn.execute(MIGRATIONS[version - 1].format(schema=q))
            await conn.execute(f"INSERT INTO {q}.saga_schema (version) VALUES ($1)", version)
    return found
