"""What only the Postgres store has: a schema to migrate, a pool, SQLSTATEs, LISTEN/NOTIFY.

asyncpg runs on asyncio only, so this module pins the backend; the contract suites run the
Postgres store through ``tests.conftest.STORES``. Tests that need the server are marked
``postgres``; each works on a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest
import trio

from saga._store.port import InboxRecord, Reply
from saga.errors import ConflictError, StoreError, StoreUnavailableError
from saga_adapters import open_store
from saga_adapters.postgres import PostgresStore, _schema
from saga_adapters.postgres._schema import VERSION
from tests.adapters.test_contract import _commit, _new, _task, history
from tests.conftest import postgres_dsn, postgres_schema, postgres_store
from tests.runtime.test_ownership import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def schema() -> AsyncIterator[tuple[str, str]]:
    """``(dsn, schema)``: a fresh schema, dropped afterwards."""
    async with postgres_schema() as found:
        yield found


async def _sql(dsn: str, query: str, *args: Any) -> list[Any]:
    """Run ``query`` on a connection of its own (another process, as far as the store knows)."""
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def _backends(dsn: str, schema: str, *, query: str = "%") -> list[int]:
    """The server pids of the store's connections (named after its schema) running ``query``."""
    rows = await _sql(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE $2",
        schema,
        query,
    )
    return [row[0] for row in rows]


async def _eventually(check: Any, *, within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - polling another process's state
            await anyio.sleep(0.02)


# -- no server needed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "Saga", "x; drop table saga_instances", 'a"b', "a-b", "a.b", "9x", "a" * 64, " a", None],
)
def test_a_schema_name_that_is_not_a_plain_identifier_is_refused(name: Any) -> None:
    # Refused by the constructor: no connection, no SQL built. The DSN is unreachable.
    with pytest.raises(ValueError, match="plain lower-case identifier"):
        PostgresStore("postgresql://nowhere.invalid/db", schema=name)


@pytest.mark.parametrize("name", ["saga", "_", "select", "orders_v2", "a" * 63])
def test_plain_identifiers_are_accepted(name: str) -> None:
    assert PostgresStore("postgresql://nowhere.invalid/db", schema=name).schema == name


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_limit"):
        PostgresStore("postgresql://nowhere.invalid/db", batch_limit=0)
    with pytest.raises(ValueError, match="min_size"):
        PostgresStore("postgresql://nowhere.invalid/db", min_size=3, max_size=2)


def test_under_trio_the_store_says_it_needs_asyncio() -> None:
    async def enter() -> None:
        async with PostgresStore("postgresql://nowhere.invalid/db"):
            pass

    with pytest.raises(StoreError, match="needs asyncio"):
        trio.run(enter)


async def test_an_unopened_store_says_so() -> None:
    store = PostgresStore("postgresql://nowhere.invalid/db")
    with pytest.raises(StoreUnavailableError, match="not open"):
        await store.create(_new("s1"))
    with pytest.raises(StoreUnavailableError, match="not open"):
        await store.instance("s1")


async def test_an_unreachable_server_is_unavailable() -> None:
    store = PostgresStore("postgresql://127.0.0.1:1/db", timeout=2)
    with pytest.raises(StoreUnavailableError) as info:
        async with store:
            pass
    assert isinstance(info.value.__cause__, OSError)


# -- schema and migrations -----------------------------------------------------------------


@pytest.mark.postgres
async def test_committed_writes_are_durable_and_seen_by_another_store(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name) as store, postgres_store(dsn, name) as other:
        await store.create(_new("s1"))
        # Seen at once by another pool (another process, as far as Postgres knows).
        row = await other.instance("s1")
        assert row is not None and row.sequence == 2
        await store.commit(_commit("s1", 2, status="completed"))
    async with postgres_store(dsn, name) as store:
        row = await store.instance("s1")
        assert row is not None and (row.status, row.sequence) == ("completed", 3)
        assert len(await history(store, "s1")) == 3
        setting = await store._read(lambda c: c.fetchval("SHOW synchronous_commit"))
        assert setting == "on"


@pytest.mark.postgres
async def test_migrating_again_does_nothing(schema: tuple[str, str]) -> None:
    dsn, name = schema
    for _ in range(3):
        async with postgres_store(dsn, name):
            pass
    assert await postgres_store(dsn, name).migrate() == VERSION
    rows = await _sql(dsn, f'SELECT version FROM "{name}".saga_schema ORDER BY version')
    assert [row[0] for row in rows] == list(range(1, VERSION + 1))


@pytest.mark.postgres
async def test_opening_a_current_schema_takes_no_lock_and_runs_no_ddl(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name):
        pass
    # Another process holds the migration lock (as if migrating): opening does not wait.
    other = await asyncpg.connect(dsn)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", _schema._lock_key(name))
        with anyio.fail_after(5):
            async with postgres_store(dsn, name) as store:
                assert await store.create(_new("s1")) is None
    finally:
        await other.close()


@pytest.mark.postgres
async def test_concurrent_openers_migrate_once(schema: tuple[str, str]) -> None:
    dsn, name = schema
    opened: list[int] = []

    async def open_one(i: int) -> None:
        async with postgres_store(dsn, name) as store:
            await store.create(_new(f"s{i}"))
            opened.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(open_one, i)
    assert sorted(opened) == list(range(6))
    rows = await _sql(dsn, f'SELECT count(*) FROM "{name}".saga_schema')
    assert rows[0][0] == VERSION


@pytest.mark.postgres
async def test_a_newer_schema_is_refused(schema: tuple[str, str]) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name):
        pass
    await _sql(dsn, f'INSERT INTO "{name}".saga_schema (version) VALUES ($1)', VERSION + 1)
    with pytest.raises(StoreError, match="newer"):
        async with postgres_store(dsn, name):
            pass
    with pytest.raises(StoreError, match="newer"):
        await postgres_store(dsn, name).migrate()
    with pytest.raises(StoreError, match="newer"):
        async with postgres_store(dsn, name, migrate=False):
            pass


@pytest.mark.postgres
async def test_without_migrate_the_schema_must_be_current(schema: tuple[str, str]) -> None:
    dsn, name = schema
    store = postgres_store(dsn, name, migrate=False)
    with pytest.raises(StoreError, match="migrate it first"):
        async with store:
            pass
    assert await _sql(dsn, "SELECT 1 FROM pg_namespace WHERE nspname = $1", name) == []
    assert await store.migrate() == 0  # creates the schema too
    async with store:
        await store.create(_new("s1"))
        assert (await store.instance("s1")) is not None


@pytest.mark.postgres
async def test_open_store_takes_the_schema_from_the_url(schema: tuple[str, str]) -> None:
    dsn, name = schema
    url = f"{dsn}{'&' if '?' in dsn else '?'}schema={name}"
    async with open_store(url) as store:
        assert isinstance(store, PostgresStore)
        await store.create(_new("s1"))
    rows = await _sql(dsn, f'SELECT saga_id FROM "{name}".saga_instances')
    assert [row[0] for row in rows] == ["s1"]


@pytest.mark.postgres
async def test_payloads_are_jsonb_and_keys_lead_with_the_saga_id(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name):
        pass
    rows = await _sql(
        dsn,
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = $1 AND data_type = 'jsonb' ORDER BY 1, 2",
        name,
    )
    assert [tuple(row) for row in rows] == [
        ("saga_events", "data"),
        ("saga_inbox", "body"),
        ("saga_inbox", "reply"),
        ("saga_instances", "input"),
        ("saga_snapshots", "data"),
    ]
    keys = await _sql(
        dsn,
        "SELECT c.relname, a.attname FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] "
        "WHERE n.nspname = $1 AND i.indisprimary ORDER BY 1",
        name,
    )
    assert dict(keys) == {  # type: ignore[arg-type]
        "saga_events": "saga_id",
        "saga_inbox": "message_id",  # message ids are unique across instances
        "saga_instances": "saga_id",
        "saga_schema": "version",
        "saga_snapshots": "saga_id",
        "saga_tasks": "saga_id",
    }


@pytest.mark.postgres
async def test_a_nul_in_json_is_a_store_error_for_that_write_alone(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name) as store:
        outcomes: dict[str, str] = {}

        async def create(saga_id: str, input: str) -> None:
            try:
                await store.create(_new(saga_id, input=input))
                outcomes[saga_id] = "ok"
            except StoreUnavailableError:
                outcomes[saga_id] = "unavailable"
            except StoreError as exc:
                outcomes[saga_id] = type(exc.__cause__).__name__

        async with anyio.create_task_group() as tg:
            tg.start_soon(create, "bad", '{"x": "\\u0000"}')
            tg.start_soon(create, "good", '{"x": 1}')
        assert outcomes == {"bad": "UntranslatableCharacterError", "good": "ok"}
        assert await store.instance("bad") is None


# -- the database clock ----------------------------------------------------------------------


@pytest.mark.postgres
async def test_leases_are_measured_on_the_database_clock(schema: tuple[str, str]) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name) as store:
        await store.create(_new("s1"))
        before = await store._read(
            lambda c: c.fetchval("SELECT extract(epoch from clock_timestamp())::float8")
        )
        taken = await store.acquire("s1", "A", lease=100.0)
        after = await store._read(
            lambda c: c.fetchval("SELECT extract(epoch from clock_timestamp())::float8")
        )
        assert taken is not None and taken.lease_until is not None
        assert before + 100.0 <= taken.lease_until <= after + 100.0
        assert abs(taken.lease_until - (time.time() + 100.0)) < 30  # and in Unix seconds


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("errcode", "cause", "unavailable"),
    [
        ("serialization_failure", asyncpg.SerializationError, True),
        ("deadlock_detected", asyncpg.DeadlockDetectedError, True),
        ("admin_shutdown", asyncpg.AdminShutdownError, True),
        ("connection_failure", asyncpg.ConnectionFailureError, True),
        ("unique_violation", asyncpg.UniqueViolationError, False),
        ("undefined_table", asyncpg.UndefinedTableError, False),
        ("disk_full", asyncpg.DiskFullError, True),
    ],
)
async def test_sqlstates_are_translated_at_the_boundary(
    schema: tuple[str, str], errcode: str, cause: type[Exception], unavailable: bool
) -> None:
    dsn, name = schema
    raise_it = f"DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '{errcode}'; END $$"
    async with postgres_store(dsn, name) as store:
        with pytest.raises(StoreError) as info:
            await store._write(lambda c: c.execute(raise_it))
        assert isinstance(info.value, StoreUnavailableError) is unavailable
        assert type(info.value.__cause__) is cause
        assert await store.create(_new("s1")) is None  # the pool is fine


@pytest.mark.postgres
async def test_a_real_serialization_failure_is_unavailable(schema: tuple[str, str]) -> None:
    dsn, name = schema
    table = f'"{name}".saga_instances'
    async with postgres_store(dsn, name) as store:
        await store.create(_new("s1"))
        other = await asyncpg.connect(dsn)

        async def lose_a_race(conn: Any) -> None:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await conn.fetchval(f"SELECT sequence FROM {table} WHERE saga_id = 's1'")
            await other.execute(f"UPDATE {table} SET status = 'x' WHERE saga_id = 's1'")
            await conn.execute(f"UPDATE {table} SET status = 'y' WHERE saga_id = 's1'")

        try:
            with pytest.raises(StoreUnavailableError) as info:
                await store._write(lose_a_race)
        finally:
            await other.close()
        assert isinstance(info.value.__cause__, asyncpg.SerializationError)
        row = await store.instance("s1")
        assert row is not None and row.status == "x"


@pytest.mark.postgres
async def test_a_batch_that_loses_a_deadlock_is_written_again(schema: tuple[str, str]) -> None:
    # A commit that answers an inbox message locks its instance row, then the message row;
    # another transaction holds the message row and then wants the instance row. Postgres
    # breaks the deadlock by rolling one back: the store's (its check runs first). The
    # store writes the batch again and its caller never hears of it.
    dsn, name = schema
    instances, inbox = f'"{name}".saga_instances', f'"{name}".saga_inbox'
    async with postgres_store(dsn, name) as store:
        await store.create(_new("s1"))
        await store.send(
            InboxRecord(message_id="m1", saga_id="s1", sender="n", body="{}", created_at=1.0)
        )
        other = await asyncpg.connect(dsn)
        try:
            other_txn = other.transaction()
            await other_txn.start()
            await other.execute("SET LOCAL deadlock_timeout = '30s'")  # the store checks first
            await other.execute(f"UPDATE {inbox} SET created_at = 2 WHERE message_id = 'm1'")
            async with anyio.create_task_group() as tg:
                reply = Reply(message_id="m1", body='{"ok": true}')
                tg.start_soon(store.commit, _commit("s1", 2, replies=(reply,)))
                # Until the store's transaction waits for the message row...
                await eventually(
                    lambda: _sql(
                        dsn,
                        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%saga_inbox%' AND pid <> $1",
                        other.get_server_pid(),
                    )
                )
                # ...then want its instance row: a deadlock, which the store loses.
                await other.execute(f"UPDATE {instances} SET updated_at = 3 WHERE saga_id = 's1'")
                await other_txn.commit()
        finally:
            await other.close()
        assert [r.sequence for r in await history(store, "s1")] == [1, 2, 3]
        assert await store.take_reply("m1") == '{"ok": true}'


@pytest.mark.postgres
async def test_a_connection_killed_mid_query_is_unavailable_then_the_store_recovers(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name) as store:
        await store.create(_new("s1"))
        errors: list[BaseException] = []

        async def slow() -> None:
            try:
                await store._write(lambda c: c.execute("SELECT pg_sleep(30)"))
            except StoreError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            pids: list[int] = []

            async def sleeping() -> bool:
                pids[:] = await _backends(dsn, name, query="SELECT pg_sleep%")
                return bool(pids)

            await _eventually(sleeping)
            await _sql(dsn, "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", pids)
        [error] = errors
        assert isinstance(error, StoreUnavailableError)
        causes = []
        cause: BaseException | None = error
        while cause is not None:
            causes.append(cause)
            cause = cause.__cause__ or cause.__context__
        assert any(isinstance(c, asyncpg.AdminShutdownError) for c in causes), causes

        # Kill every connection the store has, idle ones included: it opens new ones.
        await _sql(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            name,
        )
        outcomes = []
        for _ in range(3):  # one attempt may meet a connection that died while idle
            try:
                await store.commit(_commit("s1", 2))
                outcomes.append("ok")
                break
            except StoreUnavailableError:
                outcomes.append("unavailable")
        assert outcomes[-1] == "ok"
        assert [e.sequence for e in await history(store, "s1")] == [1, 2, 3]


@pytest.mark.postgres
async def test_connections_killed_under_load_only_ever_make_it_unavailable(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name, max_size=4) as store:
        for i in range(20):
            await store.create(_new(f"s{i:02}", events=1))
        seen: list[str] = []
        stop = anyio.Event()

        async def busy(i: int) -> None:
            saga_id, sequence = f"s{i:02}", 1
            while not stop.is_set():
                try:
                    await store.instance(saga_id)
                    await store.renew("A", {saga_id: 0}, lease=60)
                    await store.inbox(saga_id=saga_id)
                    await store.commit(_commit(saga_id, sequence))
                    sequence += 1
                    seen.append("ok")
                except StoreUnavailableError:
                    seen.append("unavailable")
                    row = await _retrying(store.instance, saga_id)
                    sequence = row.sequence  # a commit cut off may have landed

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(busy, i)
            for _ in range(15):  # every connection the store has, idle or busy
                await anyio.sleep(0.03)
                await _sql(
                    dsn,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    name,
                )
            await anyio.sleep(0.1)
            stop.set()
        # Anything but StoreUnavailableError would have failed the task group.
        assert "unavailable" in seen
        assert seen[-20:].count("ok") > 0
        for row in await store.instances():
            assert [e.sequence for e in await history(store, row.saga_id)] == list(
                range(1, row.sequence + 1)
            )


async def _retrying(read: Any, *args: Any) -> Any:
    while True:
        try:
            return await read(*args)
        except StoreUnavailableError:
            await anyio.sleep(0.01)


@pytest.mark.postgres
async def test_cancelling_a_query_never_returns_a_broken_connection(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    # One pooled connection: a broken one would be the next one handed out.
    async with postgres_store(dsn, name, min_size=1, max_size=1) as store:
        await store.create(_new("s1"))
        for attempt in range(3):  # mid-query, inside a transaction
            with anyio.move_on_after(0.2) as scope:
                await store._write(lambda c: c.execute("SELECT pg_sleep(5)"))
            assert scope.cancelled_caught, attempt
            async with store._connection() as conn:
                assert not conn.is_in_transaction()
                assert await conn.fetchval("SELECT 1") == 1
        # The pool works, and nothing of ours is stuck in a transaction on the server.
        await store.commit(_commit("s1", 2))
        assert len(await history(store, "s1")) == 3
        stuck = await _sql(
            dsn,
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
            "AND state LIKE 'idle in transaction%'",
            name,
        )
        assert stuck == []
        # The interrupted backends were cut off, not reused: end their sleep.
        await _sql(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1 AND query LIKE 'SELECT pg_sleep%'",
            name,
        )


@pytest.mark.postgres
async def test_callers_cancelled_during_a_group_commit_leave_a_consistent_store(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name, max_size=2) as store:
        for i in range(50):
            await store.create(_new(f"s{i:02}"))
        with anyio.move_on_after(0.01):
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(store.commit, _commit(f"s{i:02}", 2))
        # The writer finishes the batches it took (shielded); a write queued after them
        # returns once they are written.
        await store.create(_new("after"))
        # Each commit landed whole or not at all, and the store goes on.
        for i in range(50):
            row = await store.instance(f"s{i:02}")
            assert row is not None
            assert [e.sequence for e in await history(store, row.saga_id)] == list(
                range(1, row.sequence + 1)
            )
            if row.sequence == 2:
                await store.commit(_commit(row.saga_id, 2))
        assert {r.sequence for r in await store.instances() if r.saga_id != "after"} == {3}


# -- group commit ------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_concurrent_writes_share_transactions(schema: tuple[str, str]) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name) as store:
        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(store.create, _new(f"s{i}"))
        assert store.writes == 300
        assert store.batches < store.writes / 5
        assert len(await store.instances()) == 300


@pytest.mark.postgres
async def test_a_batch_costs_a_constant_number_of_statements(schema: tuple[str, str]) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name, min_size=1, max_size=1) as store:
        for i in range(101):
            await store.create(_new(f"s{i:03}", events=1))
            await store.send(
                InboxRecord(
                    message_id=f"m{i}", saga_id=f"s{i:03}", sender="S", body="{}", created_at=1.0
                )
            )

        async def transition(i: int) -> None:
            await store.commit(
                _commit(
                    f"s{i:03}",
                    1,
                    2,
                    new_tasks=(_task(f"s{i:03}", "b"),),
                    done_tasks=(_task(f"s{i:03}", "a").task_id,),
                    replies=(Reply(message_id=f"m{i}", body='{"ok": true}'),),
                )
            )

        await transition(100)  # asyncpg looks up the array types once per connection
        statements: list[str] = []
        async with store._connection() as conn:  # the only one: the writer's too
            conn.add_query_logger(lambda record: statements.append(record.query))
        batches = store.batches
        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(transition, i)
        assert store.batches - batches == 1  # all 100 were ready together
        # BEGIN, commit, events, done tasks, new tasks, replies, COMMIT: not 100 of anything.
        assert len(statements) <= 8, "\n".join(q[:60] for q in statements)
        assert {r.sequence for r in await store.instances()} == {3}
        assert [t.step for t in await store.tasks("s042")] == ["b"]
        assert json.loads(await store.take_reply("m42") or "null") == {"ok": True}


@pytest.mark.postgres
async def test_batch_limit_caps_a_transaction(schema: tuple[str, str]) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name, batch_limit=7) as store:
        async with anyio.create_task_group() as tg:
            for i in range(70):
                tg.start_soon(store.create, _new(f"s{i}"))
        assert store.writes == 70
        assert store.batches >= 10


@pytest.mark.postgres
async def test_writes_to_one_instance_in_one_batch_apply_in_order(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name) as store:
        outcomes: list[str] = []

        async def write(op: Any) -> None:
            try:
                await (store.create(op) if hasattr(op, "transition") else store.commit(op))
                outcomes.append("ok")
            except ConflictError:
                outcomes.append("conflict")

        # Ready together: a create, then two commits that each expect the one before.
        async with anyio.create_task_group() as tg:
            tg.start_soon(write, _new("s1"))
            tg.start_soon(write, _commit("s1", 2))
            tg.start_soon(write, _commit("s1", 3))
            tg.start_soon(write, _commit("s1", 3))  # a duplicate: stale by then
        assert outcomes == ["ok", "ok", "ok", "conflict"]
        assert [e.sequence for e in await history(store, "s1")] == [1, 2, 3, 4]


@pytest.mark.postgres
async def test_one_bad_write_fails_alone_not_its_batch(schema: tuple[str, str]) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name) as store:
        await store.create(_new("bad"))
        await store.create(_new("good"))
        # A stray row where bad's next event must go.
        await _sql(
            dsn,
            f'INSERT INTO "{name}".saga_events VALUES ($1, 3, $2, 1, $3, 0)',
            "bad",
            "X",
            "{}",
        )
        outcomes: dict[str, Any] = {}

        async def commit(saga_id: str) -> None:
            try:
                await store.commit(_commit(saga_id, 2))
                outcomes[saga_id] = "ok"
            except StoreError as exc:
                outcomes[saga_id] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(commit, "bad")
            tg.start_soon(commit, "good")
        assert outcomes["good"] == "ok"
        bad = outcomes["bad"]
        assert isinstance(bad, ConflictError) and (bad.saga_id, bad.expected) == ("bad", 2)
        assert isinstance(bad.__cause__, asyncpg.UniqueViolationError)
        assert len(await history(store, "good")) == 3
        row = await store.instance("bad")
        assert row is not None and row.sequence == 2  # nothing of it was written


# -- wake-ups --------------------------------------------------------------------------------


class Wakes:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    def __call__(self, kind: str) -> None:
        self.kinds.append(kind)

    async def until(self, kind: str, count: int = 1) -> None:
        async def heard() -> bool:
            return self.kinds.count(kind) >= count

        await _eventually(heard)


def _message(message_id: str, saga_id: str, sender: str = "S") -> InboxRecord:
    return InboxRecord(
        message_id=message_id, saga_id=saga_id, sender=sender, body="{}", created_at=1.0
    )


@pytest.mark.postgres
async def test_wake_ups_reach_another_process(schema: tuple[str, str]) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name) as node_a, postgres_store(dsn, name) as node_b:
        await node_a.create(_new("s1"))
        await node_a.acquire("s1", "A", lease=60)
        owner, sender, bystander = Wakes(), Wakes(), Wakes()
        node_a.subscribe("A", owner)
        node_b.subscribe("S", sender)
        node_b.subscribe("C", bystander)
        await node_b.send(_message("m1", "s1", sender="S"))  # from B to A's instance
        await owner.until("inbox")
        await node_a.commit(
            _commit("s1", 2, epoch=1, replies=(Reply(message_id="m1", body='"done"'),))
        )
        await sender.until("reply")
        await node_a.release("A", {"s1": 1})
        await bystander.until("released")
        assert bystander.kinds == ["released"]
        assert json.loads(await node_b.take_reply("m1") or "null") == "done"


@pytest.mark.postgres
async def test_the_listener_reconnects_and_wake_ups_flow_again(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name) as store:
        await store.create(_new("s1"))
        await store.acquire("s1", "A", lease=60)
        wakes = Wakes()
        store.subscribe("A", wakes)
        listener = store._listener
        assert listener is not None and listener.connection is not None
        pid = listener.connection.get_server_pid()
        await _sql(dsn, "SELECT pg_terminate_backend($1)", pid)

        async def back() -> bool:
            return listener.reconnects == 1 and listener.connection is not None

        await _eventually(back)
        assert listener.connection.get_server_pid() != pid
        # Wake-ups sent while it was away may be lost: every subscriber hears "maybe".
        await wakes.until("inbox")
        before = wakes.kinds.count("inbox")
        await store.send(_message("m1", "s1"))
        await wakes.until("inbox", before + 1)


@pytest.mark.postgres
async def test_concurrent_claims_from_two_processes_never_take_one_twice(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    async with postgres_store(dsn, name) as a, postgres_store(dsn, name) as b:
        ids = [f"s{i:03}" for i in range(200)]
        async with anyio.create_task_group() as tg:
            for saga_id in ids:
                tg.start_soon(a.create, _new(saga_id))
        taken: dict[str, list[str]] = {"A": [], "B": []}

        async def claimer(store: Any, owner: str) -> None:
            while rows := await store.claim(owner, lease=60, limit=7, sagas=[("order", 3)]):
                taken[owner].extend(r.saga_id for r in rows)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(claimer, a, "A")
                tg.start_soon(claimer, b, "B")
        claimed = taken["A"] + taken["B"]
        assert sorted(claimed) == ids  # each once, none left


@pytest.mark.postgres
async def test_the_dsn_from_the_environment_is_used() -> None:
    # The fixture's DSN reaches a server (else every test here would have been skipped).
    dsn = await postgres_dsn()
    assert (await _sql(dsn, "SELECT 1"))[0][0] == 1
