"""Every statement the Postgres store runs, built once per schema.

Batched writes take arrays (``unnest``), so one statement writes a whole batch. Wake-ups
are ``pg_notify`` calls inside the statements that make them true: Postgres delivers them
on commit, never for a rollback.
"""

from __future__ import annotations

from saga._store.port import ACTIVE_STATUSES
from saga_adapters.postgres import _schema

__all__ = ["INSTANCE_COLUMNS", "NOW", "Statements"]

INSTANCE_COLUMNS = (
    "saga_id, saga, version, status, sequence, input, created_at, updated_at, owner, epoch, "
    "lease_until, wake_at"
)
_INBOX_COLUMNS = "m.message_id, m.saga_id, m.sender, m.body, m.created_at"

#: The database clock, in seconds since the Unix epoch: every lease is measured on it.
NOW = "extract(epoch from clock_timestamp())::double precision"
_ACTIVE = ", ".join(f"'{status}'" for status in ACTIVE_STATUSES)  # constants, not input


class Statements:
    """Every statement the store runs, with its schema spliced in (a checked name)."""

    def __init__(self, schema: str) -> None:
        s = _schema.quoted(schema)
        instances, events = f"{s}.saga_instances", f"{s}.saga_events"
        tasks, inbox = f"{s}.saga_tasks", f"{s}.saga_inbox"
        snapshots = f"{s}.saga_snapshots"
        free = f"(owner IS NULL OR lease_until <= {NOW} OR owner = $%d)"

        # -- reads --
        self.instance = f"SELECT {INSTANCE_COLUMNS} FROM {instances} WHERE saga_id = $1"
        self.instances_by_id = (
            f"SELECT {INSTANCE_COLUMNS} FROM {instances} WHERE saga_id = ANY($1::text[])"
        )
        # One statement, so one snapshot: the row and the events agree.
        self.load = (
            f"SELECT {INSTANCE_COLUMNS}, ARRAY("
            f"  SELECT ROW(e.sequence, e.type, e.schema, e.data, e.recorded_at) FROM {events} e"
            "   WHERE e.saga_id = i.saga_id ORDER BY e.sequence"
            f") FROM {instances} i WHERE i.saga_id = $1"
        )
        # Also one statement: the row, its snapshot and the events after it.
        self.load_recent = (
            f"SELECT {', '.join('i.' + c for c in INSTANCE_COLUMNS.split(', '))}, "
            "s.sequence, s.data, ARRAY("
            f"  SELECT ROW(e.sequence, e.type, e.schema, e.data, e.recorded_at) FROM {events} e"
            "   WHERE e.saga_id = i.saga_id AND e.sequence > coalesce(s.sequence, 0)"
            "   ORDER BY e.sequence"
            f") FROM {instances} i LEFT JOIN {snapshots} s ON s.saga_id = i.saga_id "
            "WHERE i.saga_id = $1"
        )
        self.instances_all = f"SELECT {INSTANCE_COLUMNS} FROM {instances} ORDER BY saga_id LIMIT $1"
        self.instances_in = (
            f"SELECT {INSTANCE_COLUMNS} FROM {instances} WHERE status = ANY($1::text[]) "
            "ORDER BY saga_id LIMIT $2"
        )
        task_columns = "task_id, saga_id, kind, step, attempt, run_after"
        self.tasks_all = f"SELECT {task_columns} FROM {tasks} ORDER BY task_id, saga_id"
        self.tasks_of = f"SELECT {task_columns} FROM {tasks} WHERE saga_id = $1 ORDER BY task_id"

        # -- group commit: one statement per table for the whole batch --
        self.create = (
            f"INSERT INTO {instances} ({INSTANCE_COLUMNS}) "
            "SELECT u.saga_id, u.saga, u.version, u.status, u.sequence, u.input, u.at, u.at, "
            f"  u.owner, CASE WHEN u.owner IS NULL THEN 0 ELSE 1 END, "
            f"  CASE WHEN u.owner IS NULL THEN NULL ELSE {NOW} + u.lease END, u.wake_at "
            "FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], $5::bigint[], "
            "  $6::jsonb[], $7::double precision[], $8::text[], $9::double precision[], "
            "  $10::double precision[]) "
            "  AS u(saga_id, saga, version, status, sequence, input, at, owner, lease, wake_at) "
            "ON CONFLICT (saga_id) DO NOTHING RETURNING saga_id"
        )
        self.commit = (
            f"UPDATE {instances} i SET status = u.status, sequence = u.expected + u.added, "
            "  updated_at = u.at, wake_at = u.wake_at, "
            "  owner = CASE WHEN u.ends THEN NULL ELSE i.owner END, "
            "  lease_until = CASE WHEN u.ends THEN NULL ELSE i.lease_until END "
            "FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], "
            "  $6::double precision[], $7::boolean[], $8::double precision[]) "
            "  AS u(saga_id, expected, epoch, added, status, at, ends, wake_at) "
            "WHERE i.saga_id = u.saga_id AND i.sequence = u.expected AND i.epoch = u.epoch "
            "RETURNING i.saga_id"
        )
        self.positions = (
            f"SELECT saga_id, sequence, epoch FROM {instances} WHERE saga_id = ANY($1::text[])"
        )
        self.append = (
            f"INSERT INTO {events} (saga_id, sequence, type, schema, data, recorded_at) "
            "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::integer[], "
            "  $5::jsonb[], $6::double precision[])"
        )
        # The latest wins: an accepted commit is always the instance's newest (the caller
        # gives each instance once).
        self.snapshot = (
            f"INSERT INTO {snapshots} (saga_id, sequence, data) "
            "SELECT * FROM unnest($1::text[], $2::bigint[], $3::jsonb[]) "
            "ON CONFLICT (saga_id) DO UPDATE SET sequence = excluded.sequence, "
            "  data = excluded.data"
        )
        self.finish_tasks = (
            f"DELETE FROM {tasks} WHERE (saga_id, task_id) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[]))"
        )
        self.add_tasks = (
            f"INSERT INTO {tasks} (saga_id, task_id, kind, step, attempt, run_after) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
            "  $5::integer[], $6::double precision[]) "
            "ON CONFLICT (saga_id, task_id) DO UPDATE SET kind = excluded.kind, "
            "  step = excluded.step, attempt = excluded.attempt, run_after = excluded.run_after, "
            "  lease_owner = NULL, lease_until = NULL"
        )
        # The first answer wins; each sender hears once per transaction.
        self.answer = (
            "WITH answered AS ("
            f"  UPDATE {inbox} m SET reply = r.body, replied_at = {NOW}"
            "   FROM unnest($1::text[], $2::jsonb[]) AS r(message_id, body)"
            "   WHERE m.message_id = r.message_id AND m.reply IS NULL RETURNING m.sender"
            ") SELECT pg_notify($3, 'reply:' || sender) "
            "FROM (SELECT DISTINCT sender FROM answered) s"
        )

        # -- ownership --
        self.acquire = (
            f"UPDATE {instances} SET owner = $2, epoch = epoch + 1, lease_until = {NOW} + $3 "
            f"WHERE saga_id = $1 AND {free % 2} RETURNING {INSTANCE_COLUMNS}"
        )
        # One statement: rows another claimer has locked are skipped, not waited for.
        # Returned in the database's order of ids (its collation), the order ``after`` is
        # compared in: the caller's cursor is the last row.
        self.claim = (
            "WITH claimed AS ("
            f" UPDATE {instances} SET owner = $1, epoch = epoch + 1, lease_until = {NOW} + $2"
            " WHERE saga_id IN ("
            f"  SELECT saga_id FROM {instances}"
            f"  WHERE status IN ({_ACTIVE})"
            "   AND (saga, version) IN (SELECT * FROM unnest($3::text[], $4::integer[]))"
            f"  AND {free % 5}"
            "   AND ($7::text IS NULL OR saga_id > $7::text)"
            "   AND ($8::double precision IS NULL OR wake_at <= $8 OR owner = $5 OR EXISTS ("
            f"    SELECT 1 FROM {inbox} b WHERE b.saga_id = {instances}.saga_id"
            "     AND b.reply IS NULL))"
            "   ORDER BY saga_id LIMIT $6 FOR UPDATE SKIP LOCKED"
            f" ) RETURNING {INSTANCE_COLUMNS}"
            f") SELECT {INSTANCE_COLUMNS} FROM claimed ORDER BY saga_id"
        )
        self.next_wake = (
            f"SELECT min(wake_at) FROM {instances}"
            f" WHERE status IN ({_ACTIVE}) AND wake_at > $1"
            "  AND (saga, version) IN (SELECT * FROM unnest($2::text[], $3::integer[]))"
            f"  AND (owner IS NULL OR lease_until <= {NOW})"
        )
        self.renew = (
            f"UPDATE {instances} i SET lease_until = {NOW} + $2 "
            "FROM unnest($3::text[], $4::bigint[]) AS l(saga_id, epoch) "
            "WHERE i.saga_id = l.saga_id AND i.epoch = l.epoch AND i.owner = $1 "
            "RETURNING i.saga_id"
        )
        self.release = (
            "WITH released AS ("
            f"  UPDATE {instances} i SET owner = NULL, lease_until = NULL"
            "   FROM unnest($2::text[], $3::bigint[]) AS l(saga_id, epoch)"
            "   WHERE i.saga_id = l.saga_id AND i.epoch = l.epoch AND i.owner = $1"
            "   RETURNING i.saga_id"
            ") SELECT pg_notify($4, 'released:') FROM (SELECT 1 FROM released LIMIT 1) r"
        )

        # -- the inbox --
        self.send = (
            "WITH sent AS ("
            f"  INSERT INTO {inbox} (message_id, saga_id, sender, body, created_at)"
            "   VALUES ($1, $2, $3, $4::jsonb, $5) ON CONFLICT (message_id) DO NOTHING"
            "   RETURNING saga_id"
            ") SELECT pg_notify($6, 'inbox:' || i.owner) "
            f"FROM sent JOIN {instances} i ON i.saga_id = sent.saga_id WHERE i.owner IS NOT NULL"
        )
        # Messages a transition sends (a child's end, to its parent), with their wake-ups.
        self.send_many = (
            "WITH sent AS ("
            f"  INSERT INTO {inbox} (message_id, saga_id, sender, body, created_at)"
            "   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[],"
            "    $5::double precision[])"
            "   ON CONFLICT (message_id) DO NOTHING RETURNING saga_id"
            ") SELECT pg_notify($6, 'inbox:' || i.owner) "
            f"FROM sent JOIN {instances} i ON i.saga_id = sent.saga_id WHERE i.owner IS NOT NULL"
        )
        pending = f"SELECT {_INBOX_COLUMNS} FROM {inbox} m"
        owned = f" JOIN {instances} i ON i.saga_id = m.saga_id AND i.owner = $2"
        self.inbox_all = f"{pending} WHERE m.reply IS NULL ORDER BY m.position LIMIT $1"
        self.inbox_of_saga = (
            f"{pending} WHERE m.reply IS NULL AND m.saga_id = $2 ORDER BY m.position LIMIT $1"
        )
        self.inbox_of_owner = f"{pending}{owned} WHERE m.reply IS NULL ORDER BY m.position LIMIT $1"
        self.inbox_of_both = (
            f"{pending}{owned} WHERE m.reply IS NULL AND m.saga_id = $3 "
            "ORDER BY m.position LIMIT $1"
        )
        self.take_reply = (
            f"DELETE FROM {inbox} WHERE message_id = $1 AND reply IS NOT NULL RETURNING reply"
        )
