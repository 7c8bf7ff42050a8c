"""Recovery, supervision and shutdown: what happens around crashes and restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from saga import (
    Coordinator,
    MemoryStore,
    Phase,
    RetryPolicy,
    SagaDefinition,
    Status,
    Step,
    StepContext,
    SupervisionPolicy,
    idempotency_key,
)
from saga import events as ev
from saga.errors import CommandRejected, CorruptHistoryError, NotFoundError, StoreUnavailableError
from saga_adapters.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

QUICK = SupervisionPolicy(max_restarts=2, within=60, initial_backoff=0.001, max_backoff=0.001)


def two_steps(first: Any, second: Any, undo: Any = None) -> SagaDefinition:
    return SagaDefinition(
        "pair",
        [
            Step(name="first", action=first, compensation=undo),
            Step(name="second", action=second, retry=RetryPolicy(max_attempts=1)),
        ],
    )


async def test_an_interrupted_instance_is_recovered_with_the_same_key(tmp_path: Path) -> None:
    calls: list[tuple[str, int, str]] = []
    began = anyio.Event()

    async def first(ctx: StepContext) -> int:
        calls.append((ctx.step, ctx.attempt, ctx.idempotency_key))
        return 1

    async def hangs(ctx: StepContext) -> None:
        calls.append((ctx.step, ctx.attempt, ctx.idempotency_key))
        began.set()
        await anyio.sleep_forever()

    async def second(ctx: StepContext) -> str:
        calls.append((ctx.step, ctx.attempt, ctx.idempotency_key))
        return "done"

    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store, Coordinator(store, [two_steps(first, hangs)]) as c:
        await c.start("pair", "p1")
        await began.wait()
    # The process "stopped" with step two in flight: the instance is still running.
    async with SQLiteStore(path) as store:
        assert (await store.instance("p1")).status == "running"  # type: ignore[union-attr]
        async with Coordinator(store, [two_steps(first, second)]) as c:
            outcome = await c.handle("p1").outcome()
    assert outcome.status is Status.COMPLETED
    assert outcome.results == {"first": 1, "second": "done"}
    key = idempotency_key("p1", "second", Phase.ACTION)
    assert calls[1:] == [("second", 1, key), ("second", 1, key)]
    assert [c[0] for c in calls].count("first") == 1


async def test_recover_can_be_turned_off(tmp_path: Path) -> None:
    began = anyio.Event()

    async def hangs(ctx: StepContext) -> None:
        began.set()
        await anyio.sleep_forever()

    saga = two_steps(hangs, hangs)
    async with SQLiteStore(tmp_path / "s.db") as store:
        async with Coordinator(store, [saga]) as c:
            await c.start(saga, "p1")
            await began.wait()
        async with Coordinator(store, [saga], recover=False) as c:
            assert await c.recover() == 1
            assert await c.recover() == 0  # already live here


async def test_an_unregistered_definition_is_left_alone(tmp_path: Path) -> None:
    began = anyio.Event()

    async def hangs(ctx: StepContext) -> None:
        began.set()
        await anyio.sleep_forever()

    async with SQLiteStore(tmp_path / "s.db") as store:
        async with Coordinator(store, [two_steps(hangs, hangs)]) as c:
            await c.start("pair", "p1")
            await began.wait()
        async with Coordinator(store, []) as c:
            assert await c.recover() == 0
        row = await store.instance("p1")
        assert row is not None and (row.status, row.sequence) == ("running", 2)


def _corrupt(path: Path, saga_id: str, sequence: int) -> str:
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "UPDATE saga_events SET data = '{\"step\": 12' WHERE saga_id = ? AND sequence = ?",
            (saga_id, sequence),
        )
        conn.commit()
        return str(
            conn.execute(
                "SELECT data FROM saga_events WHERE saga_id = ? AND sequence = ?",
                (saga_id, sequence),
            ).fetchone()[0]
        )
    finally:
        conn.close()


async def test_a_corrupt_history_parks_the_instance_and_keeps_the_rows(tmp_path: Path) -> None:
    began = anyio.Event()

    async def hangs(ctx: StepContext) -> None:
        began.set()
        await anyio.sleep_forever()

    async def ok(ctx: StepContext) -> None:
        return None

    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store, Coordinator(store, [two_steps(ok, hangs)]) as c:
        await c.start("pair", "p1")
        await began.wait()
    corrupt = _corrupt(path, "p1", 2)

    saga = two_steps(ok, ok)
    async with SQLiteStore(path) as store, Coordinator(store, [saga], supervision=QUICK) as c:
        handle = c.handle("p1")
        with pytest.raises(CorruptHistoryError) as info:
            await handle.history()
        assert (info.value.saga_id, info.value.sequence) == ("p1", 2)
        # The actor crashes on every restart; past its budget the instance is parked.
        assert await handle.settle() is Status.SUSPENDED
        assert c.restarts == QUICK.max_restarts + 1
        with pytest.raises(CorruptHistoryError):  # no decision on a history that is unreadable
            await c.cancel("p1")
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT sequence, type, data FROM saga_events WHERE saga_id = 'p1' ORDER BY sequence"
        ).fetchall()
    finally:
        conn.close()
    assert rows[1][2] == corrupt  # left exactly as it was, for an operator
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1][1] == "SagaSuspended"
    assert "CorruptHistoryError" in rows[-1][2]


async def test_a_suspended_instance_resumes_where_it_was(tmp_path: Path) -> None:
    began = anyio.Event()

    async def hangs(ctx: StepContext) -> None:
        began.set()
        await anyio.sleep_forever()

    async def ok(ctx: StepContext) -> str:
        return ctx.step

    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store, Coordinator(store, [two_steps(ok, hangs)]) as c:
        await c.start("pair", "p1")
        await began.wait()
    good = _corrupt_and_keep(path)
    saga = two_steps(ok, ok)
    async with SQLiteStore(path) as store, Coordinator(store, [saga], supervision=QUICK) as c:
        handle = c.handle("p1")
        assert await handle.settle() is Status.SUSPENDED
        _repair(path, good)  # the operator mends the row...
        await c.resume("p1")  # ...and resumes the instance
        outcome = await handle.outcome()
        with pytest.raises(CommandRejected, match="only a suspended saga"):
            await c.resume("p1")
        kinds = [type(r.event) for r in await handle.history()]
    assert outcome.status is Status.COMPLETED
    assert outcome.reason is None  # the suspension's reason went with the suspension
    assert kinds[-4:] == [ev.SagaSuspended, ev.SagaResumed, ev.StepCompleted, ev.SagaCompleted]


def _corrupt_and_keep(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        good = str(
            conn.execute(
                "SELECT data FROM saga_events WHERE saga_id = 'p1' AND sequence = 3"
            ).fetchone()[0]
        )
    finally:
        conn.close()
    _corrupt(path, "p1", 3)
    return good


def _repair(path: Path, good: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "UPDATE saga_events SET data = ? WHERE saga_id = 'p1' AND sequence = 3", (good,)
        )
        conn.commit()
    finally:
        conn.close()


async def test_shutdown_lets_a_begun_compensation_finish(store: Any) -> None:
    compensating = anyio.Event()
    undone: list[str] = []

    async def ok(ctx: StepContext) -> None:
        return None

    async def fail(ctx: StepContext) -> None:
        raise RuntimeError("no")

    async def undo(ctx: StepContext) -> None:
        compensating.set()
        await anyio.sleep(0.05)  # the compensation's own work, under a cancelled scope
        undone.append(ctx.step)

    saga = two_steps(ok, fail, undo)
    async with Coordinator(store, [saga]) as c:
        await c.start(saga, "p1")
        await compensating.wait()
    assert undone == ["first"]


async def test_shutdown_with_running_steps_leaves_them_running(store: Any) -> None:
    began = anyio.Event()

    async def hangs(ctx: StepContext) -> None:
        began.set()
        await anyio.sleep_forever()

    saga = two_steps(hangs, hangs)
    async with Coordinator(store, [saga]) as c:
        await c.start(saga, "p1")
        await began.wait()
    row = await store.instance("p1")
    assert row is not None and row.status == "running"


class _GatedCreate(MemoryStore):
    """A store whose creates wait at a gate: a start caught with its write in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = anyio.Event()
        self.gate = anyio.Event()

    async def create(self, instance: Any) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await super().create(instance)


async def test_a_start_cancelled_mid_write_still_gets_its_actor() -> None:
    store = _GatedCreate()

    async def ok(ctx: StepContext) -> str:
        return "done"

    saga = two_steps(ok, ok)
    async with Coordinator(store, [saga]) as c:
        scope = anyio.CancelScope()

        async def starter() -> None:
            with scope:
                await c.start(saga, "p1")

        async with anyio.create_task_group() as tg:
            tg.start_soon(starter)
            await store.entered.wait()
            scope.cancel()  # the caller gives up (a request timed out)...
            store.gate.set()  # ...while its write lands
        outcome = await c.handle("p1").outcome()
    assert outcome.status is Status.COMPLETED


class _DownStore(MemoryStore):
    async def claim(self, *args: Any, **kw: Any) -> Any:
        raise StoreUnavailableError("db down")


async def test_a_store_error_on_entry_is_raised_as_itself() -> None:
    with pytest.raises(StoreUnavailableError, match="db down"):
        async with Coordinator(_DownStore(), []):
            pass


async def test_waiting_leaves_no_waiters_behind(store: Any) -> None:
    async def ok(ctx: StepContext) -> None:
        return None

    saga = two_steps(ok, ok)
    async with Coordinator(store, [saga]) as c:
        handles = [await c.start(saga, f"p{i}") for i in range(5)]
        for handle in handles:
            await handle.outcome()
            await handle.outcome()  # finished: answered from the store
        for _ in range(3):
            with pytest.raises(NotFoundError):
                await c.handle("ghost").outcome()
        assert c._waiters == {}


async def test_a_history_that_does_not_fit_its_definition_is_parked(tmp_path: Path) -> None:
    began = anyio.Event()

    async def ok(ctx: StepContext) -> None:
        return None

    async def hangs(ctx: StepContext) -> None:
        began.set()
        await anyio.sleep_forever()

    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store, Coordinator(store, [two_steps(ok, hangs)]) as c:
        await c.start("pair", "p1")
        await began.wait()
    # Deployed: same name and version, but step "second" was renamed.
    renamed = SagaDefinition("pair", [Step(name="first", action=ok), Step(name="last", action=ok)])
    async with SQLiteStore(path) as store, Coordinator(store, [renamed], supervision=QUICK) as c:
        handle = c.handle("p1")
        assert await handle.settle() is Status.SUSPENDED
        state = await handle.state()
    assert state.suspension is not None
    assert "NonDeterminismError" in state.suspension
    assert "'second'" in state.suspension


class _GatedCancel(MemoryStore):
    """A store whose commit of a cancellation waits at a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = anyio.Event()
        self.gate = anyio.Event()

    async def commit(self, transition: Any) -> None:
        if any(e.type == "CancelRequested" for e in transition.events):
            self.entered.set()
            await self.gate.wait()
        await super().commit(transition)


async def test_a_command_is_never_reported_done_unless_it_was_written() -> None:
    store = _GatedCancel()
    began = anyio.Event()
    heard: list[str] = []

    async def hangs(ctx: StepContext) -> None:
        began.set()
        await anyio.sleep_forever()

    async def cancel(c: Coordinator) -> None:
        try:
            await c.cancel("p1")
            heard.append("done")
        except Exception as exc:
            heard.append(type(exc).__name__)

    async def open_gate() -> None:
        await anyio.lowlevel.checkpoint()
        store.gate.set()

    saga = two_steps(hangs, hangs)
    async with anyio.create_task_group() as outside, Coordinator(store, [saga]) as c:
        await c.start(saga, "p1")
        await began.wait()
        outside.start_soon(cancel, c)
        await store.entered.wait()
        outside.start_soon(open_gate)  # the write lands while the coordinator exits
    loaded = await store.load("p1")
    assert loaded is not None
    written = any(e.type == "CancelRequested" for e in loaded[1])
    assert heard == ["done" if written else "CoordinatorError"]
    assert written  # the commit was shielded: shutdown waited for it
