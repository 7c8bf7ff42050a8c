"""The SQLite schema, as numbered migrations applied in order on open."""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: instances, append-only events, leaseable work items.
    """
    CREATE TABLE saga_instances (
        saga_id     TEXT PRIMARY KEY,
        saga        TEXT NOT NULL,
        version     INTEGER NOT NULL,
        status      TEXT NOT NULL,
        sequence    INTEGER NOT NULL,
        input       TEXT NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        owner       TEXT,
        lease_until REAL,
        epoch       INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX saga_instances_status ON saga_instances (status, saga_id);
    CREATE TABLE saga_events (
        saga_id     TEXT NOT NULL,
        sequence    INTEGER NOT NULL,
        type        TEXT NOT NULL,
        schema      INTEGER NOT NULL,
        data        TEXT NOT NULL,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (saga_id, sequence)
    ) WITHOUT ROWID;
    CREATE TABLE saga_tasks (
        task_id     TEXT PRIMARY KEY,
        saga_id     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        step        TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        run_after   REAL,
        lease_owner TEXT,
        lease_until REAL
    );
    CREATE INDEX saga_tasks_saga ON saga_tasks (saga_id);
    CREATE INDEX saga_tasks_due ON saga_tasks (run_after);
    """,
    # 2: leases are claimed by status and expiry; commands for instances owned elsewhere.
    """
    CREATE INDEX saga_instances_owner ON saga_instances (owner, saga_id);
    CREATE TABLE saga_inbox (
        position    INTEGER PRIMARY KEY,
        message_id  TEXT NOT NULL UNIQUE,
        saga_id     TEXT NOT NULL,
        sender      TEXT NOT NULL,
        body        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        reply       TEXT,
        replied_at  REAL
    );
    CREATE INDEX saga_inbox_saga ON saga_inbox (saga_id, position);
    """,
    # 3: instances sleep in the store: claimed when due (or messaged), not before.
    # Rows from before it are due at once (0) and get their real wake-up on the next commit.
    """
    ALTER TABLE saga_instances ADD COLUMN wake_at REAL DEFAULT 0;
    CREATE INDEX saga_instances_wake ON saga_instances (status, wake_at);
    CREATE INDEX saga_inbox_pending ON saga_inbox (saga_id) WHERE reply IS NULL;
    """,
    # 4: each instance's latest snapshot, so that a rebuild reads only the events after it.
    # A rowid table: a snapshot may be large, and WITHOUT ROWID suits small rows.
    """
    CREATE TABLE saga_snapshots (
        saga_id     TEXT PRIMARY KEY,
        sequence    INTEGER NOT NULL,
        data        TEXT NOT NULL
    );
    """,
)

VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to ``VERSION``; returns the version found. Idempotent and atomic.

    Raises:
        RuntimeError: the file's schema is newer than this code knows.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS saga_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM saga_schema").fetchone()
        found = row[0] or 0
        if found > VERSION:
            raise RuntimeError(
                f"database schema version {found} is newer than this library's {VERSION}"
            )
        for version in range(found + 1, VERSION + 1):
            for statement in MIGRATIONS[version - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO saga_schema (version) VALUES (?)", (version,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return int(found)
