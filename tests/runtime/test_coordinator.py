"""The runtime end to end, on every store and on asyncio and trio."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
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
    StepKind,
    idempotency_key,
)
from saga import events as ev
from saga.errors import (
    CommandRejected,
    CoordinatorError,
    DefinitionError,
    InvalidSagaIdError,
    NotFoundError,
    PayloadError,
    StartConflictError,
    UnknownSagaError,
)
from tests.adapters.test_contract import history

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=3, initial_interval=0.001, max_interval=0.001)


class Recorder:
    """Step functions that log each call: (step, phase, attempt, key)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str]] = []

    def fn(
        self, result: Any = None, *, fail: int = 0, error: type[Exception] = RuntimeError
    ) -> Callable[[StepContext], Awaitable[Any]]:
        """A step that fails its first ``fail`` attempts (all, if -1), then returns ``result``."""

        async def step(ctx: StepContext) -> Any:
            self.calls.append((ctx.step, ctx.phase.value, ctx.attempt, ctx.idempotency_key))
            if fail == -1 or ctx.attempt <= fail:
                raise error(f"{ctx.step} attempt {ctx.attempt} failed")
            return result

        return step

    def phases(self) -> list[tuple[str, str]]:
        return [(step, phase) for step, phase, _, _ in self.calls]


def three_steps(rec: Recorder, *, fail_last: int = 0, **last: Any) -> SagaDefinition:
    return SagaDefinition(
        "trip",
        [
            Step(name="hotel", action=rec.fn({"room": 7}), compensation=rec.fn()),
            Step(name="flight", action=rec.fn({"seat": "2A"}), compensation=rec.fn()),
            Step(name="car", action=rec.fn("ok", fail=fail_last), retry=FAST, **last),
        ],
    )


def types(history: list[Any]) -> list[str]:
    return [type(r.event).__name__ for r in history]


async def test_a_saga_completes_and_records_results(store: Any) -> None:
    rec = Recorder()
    trip = three_steps(rec)
    async with Coordinator(store, [trip]) as coordinator:
        handle = await coordinator.start(trip, "t1", {"city": "Oslo"})
        outcome = await handle.outcome()
        assert outcome.status is Status.COMPLETED
        assert outcome.results == {"hotel": {"room": 7}, "flight": {"seat": "2A"}, "car": "ok"}
        assert await handle.status() is Status.COMPLETED
        history = await handle.history()
    assert types(history) == [
        "SagaStarted",
        "StepScheduled",
        "StepCompleted",
        "StepScheduled",
        "StepCompleted",
        "StepScheduled",
        "StepCompleted",
        "SagaCompleted",
    ]
    assert [r.sequence for r in history] == list(range(1, 9))
    assert rec.phases() == [("hotel", "action"), ("flight", "action"), ("car", "action")]
    assert list(await store.tasks()) == []


async def test_a_failed_step_compensates_in_reverse_order(store: Any) -> None:
    rec = Recorder()
    trip = three_steps(rec, fail_last=-1)
    async with Coordinator(store, [trip]) as coordinator:
        outcome = await (await coordinator.start(trip, "t1")).outcome()
    assert outcome.status is Status.COMPENSATED
    assert outcome.reason is not None and "car" in outcome.reason
    assert rec.phases() == [
        ("hotel", "action"),
        ("flight", "action"),
        ("car", "action"),
        ("car", "action"),
        ("car", "action"),
        ("flight", "compensation"),
        ("hotel", "compensation"),
    ]
    assert list(await store.tasks()) == []


async def test_compensation_receives_its_steps_result(store: Any) -> None:
    seen: list[Any] = []

    async def undo(ctx: StepContext) -> None:
        seen.append((ctx.step, ctx.result, sorted(ctx.results)))

    async def fail(ctx: StepContext) -> None:
        raise ValueError("no")

    saga = SagaDefinition(
        "s",
        [
            Step(name="a", action=Recorder().fn({"id": 1}), compensation=undo),
            Step(name="b", action=fail, retry=RetryPolicy(max_attempts=1)),
        ],
    )
    async with Coordinator(store, [saga]) as coordinator:
        await (await coordinator.start(saga, "s1")).outcome()
    assert seen == [("a", {"id": 1}, ["a"])]


async def test_retries_share_one_idempotency_key(store: Any) -> None:
    rec = Recorder()
    trip = three_steps(rec, fail_last=2)
    async with Coordinator(store, [trip]) as coordinator:
        handle = await coordinator.start(trip, "t1")
        assert (await handle.outcome()).status is Status.COMPLETED
        history = await handle.history()
    car = [c for c in rec.calls if c[0] == "car"]
    assert [attempt for _, _, attempt, _ in car] == [1, 2, 3]
    assert {key for *_, key in car} == {idempotency_key("t1", "car", Phase.ACTION)}
    failed = [r.event for r in history if isinstance(r.event, ev.StepFailed)]
    assert [(f.attempt, f.will_retry) for f in failed] == [(1, True), (2, True)]
    assert failed[0].error.type == "RuntimeError"


async def test_non_retryable_errors_are_not_retried(store: Any) -> None:
    rec = Recorder()
    trip = SagaDefinition(
        "trip",
        [
            *three_steps(rec).steps[:2],
            Step(
                name="car",
                action=rec.fn(fail=-1, error=KeyError),
                retry=RetryPolicy(max_attempts=5, non_retryable=[KeyError]),
            ),
        ],
    )
    async with Coordinator(store, [trip]) as coordinator:
        outcome = await (await coordinator.start(trip, "t1")).outcome()
    assert outcome.status is Status.COMPENSATED
    assert [c for c in rec.phases() if c[0] == "car"] == [("car", "action")]


async def test_a_compensation_that_keeps_failing_ends_failed(store: Any) -> None:
    rec = Recorder()

    async def fail(ctx: StepContext) -> None:
        raise RuntimeError("down")

    saga = SagaDefinition(
        "s",
        [
            Step(name="a", action=rec.fn(1), compensation=rec.fn()),
            Step(name="b", action=rec.fn(2), compensation=fail, compensation_retry=FAST),
            Step(name="c", action=fail, retry=RetryPolicy(max_attempts=1)),
        ],
    )
    async with Coordinator(store, [saga]) as coordinator:
        outcome = await (await coordinator.start(saga, "s1")).outcome()
    assert outcome.status is Status.FAILED
    assert outcome.pending == ("b", "a")
    assert outcome.reason is not None and "compensation" in outcome.reason


async def test_a_step_past_its_timeout_fails_and_is_retried(store: Any) -> None:
    attempts: list[int] = []

    async def slow_once(ctx: StepContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await anyio.sleep_forever()
        return "done"

    saga = SagaDefinition("s", [Step(name="a", action=slow_once, timeout=0.05, retry=FAST)])
    async with Coordinator(store, [saga]) as coordinator:
        handle = await coordinator.start(saga, "s1")
        outcome = await handle.outcome()
        failed = [r.event for r in await handle.history() if isinstance(r.event, ev.StepFailed)]
    assert outcome.status is Status.COMPLETED
    assert attempts == [1, 2]
    assert failed[0].error.type == "saga.errors.StepTimeoutError"


async def test_a_result_that_is_not_json_fails_the_step_for_good(store: Any) -> None:
    async def bad(ctx: StepContext) -> object:
        return object()

    saga = SagaDefinition("s", [Step(name="a", action=bad, retry=FAST)])
    async with Coordinator(store, [saga]) as coordinator:
        handle = await coordinator.start(saga, "s1")
        outcome = await handle.outcome()
        failed = [r.event for r in await handle.history() if isinstance(r.event, ev.StepFailed)]
    assert outcome.status is Status.COMPENSATED
    assert [(f.error.type, f.will_retry) for f in failed] == [("saga.errors.PayloadError", False)]


async def test_start_is_idempotent(store: Any) -> None:
    rec = Recorder()
    trip = three_steps(rec)
    async with Coordinator(store, [trip]) as coordinator:
        first = await coordinator.start(trip, "t1", {"a": [1, 2]})
        again = await coordinator.start("trip", "t1", {"a": (1, 2)})
        assert again.saga_id == first.saga_id
        await first.outcome()
        after = await coordinator.start(trip, "t1", {"a": [1, 2]})
        assert (await after.outcome()).status is Status.COMPLETED
    assert len(await store.instances()) == 1
    assert rec.phases().count(("hotel", "action")) == 1


async def test_concurrent_starts_of_one_id_run_it_once(store: Any) -> None:
    rec = Recorder()
    trip = three_steps(rec)
    async with Coordinator(store, [trip]) as coordinator:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(coordinator.start, trip, "t1", {"n": 1})
        await coordinator.handle("t1").outcome()
    assert rec.phases() == [("hotel", "action"), ("flight", "action"), ("car", "action")]


async def test_start_conflicts_are_typed_and_write_nothing(store: Any) -> None:
    rec = Recorder()
    trip = three_steps(rec)
    other = SagaDefinition("other", [Step(name="x", action=rec.fn())])
    async with Coordinator(store, [trip, other]) as coordinator:
        await coordinator.start(trip, "t1", {"n": 1})
        with pytest.raises(StartConflictError, match="different input") as info:
            await coordinator.start(trip, "t1", {"n": 2})
        assert info.value.saga_id == "t1"
        with pytest.raises(StartConflictError, match="instance of 'trip'"):
            await coordinator.start(other, "t1", {"n": 1})
        await coordinator.handle("t1").outcome()
    records = await history(store, "t1")
    # Compared decoded: a store may keep JSON as JSONB and hand back equivalent text.
    assert json.loads(records[0].data) == {
        "input": {"n": 1},
        "parent": None,
        "saga": "trip",
        "version": 1,
    }
    assert len(await store.instances()) == 1


async def test_bad_start_arguments_are_refused_before_anything_is_written(store: Any) -> None:
    rec = Recorder()
    trip = three_steps(rec)
    unregistered = three_steps(rec)
    async with Coordinator(store, [trip]) as coordinator:
        with pytest.raises(UnknownSagaError, match="'nope'"):
            await coordinator.start("nope", "x1")
        with pytest.raises(UnknownSagaError):
            await coordinator.start(unregistered, "x1")
        with pytest.raises(InvalidSagaIdError):
            await coordinator.start(trip, "")
        with pytest.raises(InvalidSagaIdError):
            await coordinator.start(trip, 42)  # type: ignore[arg-type]
        with pytest.raises(InvalidSagaIdError):
            await coordinator.start(trip, "a\nb")
        with pytest.raises(PayloadError) as info:
            await coordinator.start(trip, "x1", {"when": {1, 2}})
        assert info.value.path == "input['when']"
        with pytest.raises(PayloadError):
            await coordinator.start(trip, "x1", float("nan"))
    assert list(await store.instances()) == []
    assert rec.calls == []


async def test_reads_of_an_unknown_instance_are_not_found(store: Any) -> None:
    async with Coordinator(store, []) as coordinator:
        handle = coordinator.handle("ghost")
        for read in (handle.outcome, handle.status, handle.history, handle.state):
            with pytest.raises(NotFoundError):
                await read()
        with pytest.raises(NotFoundError):
            await coordinator.cancel("ghost")


async def test_cancel_compensates_what_completed(store: Any) -> None:
    began = anyio.Event()
    release = anyio.Event()
    rec = Recorder()

    async def flight(ctx: StepContext) -> str:
        began.set()
        await release.wait()
        return "booked"

    saga = SagaDefinition(
        "s",
        [
            Step(name="hotel", action=rec.fn(1), compensation=rec.fn()),
            Step(name="flight", action=flight, compensation=rec.fn()),
            Step(name="car", action=rec.fn(3)),
        ],
    )
    async with Coordinator(store, [saga]) as coordinator:
        handle = await coordinator.start(saga, "s1")
        await began.wait()
        await coordinator.cancel("s1", "customer changed their mind")
        assert any(isinstance(r.event, ev.CancelRequested) for r in await handle.history())
        release.set()
        outcome = await handle.outcome()
        assert outcome.status is Status.CANCELLED
        assert outcome.reason == "customer changed their mind"
        with pytest.raises(CommandRejected, match="finished") as info:
            await coordinator.cancel("s1")
        assert (info.value.command, info.value.status) == ("cancel", "cancelled")
    assert rec.phases() == [
        ("hotel", "action"),
        ("flight", "compensation"),
        ("hotel", "compensation"),
    ]


async def test_cancel_drops_an_attempt_waiting_out_its_backoff(store: Any) -> None:
    failed = anyio.Event()

    async def flaky(ctx: StepContext) -> None:
        failed.set()
        raise RuntimeError("busy")

    saga = SagaDefinition(
        "s", [Step(name="a", action=flaky, retry=RetryPolicy(initial_interval=3600))]
    )
    async with Coordinator(store, [saga]) as coordinator:
        handle = await coordinator.start(saga, "s1")
        await failed.wait()
        await coordinator.cancel("s1")
        outcome = await handle.outcome()
        assert outcome.status is Status.CANCELLED
        errors = [
            r.event.error.type for r in await handle.history() if isinstance(r.event, ev.StepFailed)
        ]
    assert errors == ["RuntimeError", "saga.Aborted"]


async def test_cancel_past_the_pivot_is_rejected(store: Any) -> None:
    began = anyio.Event()
    release = anyio.Event()

    async def ship(ctx: StepContext) -> None:
        began.set()
        await release.wait()

    saga = SagaDefinition(
        "s",
        [
            Step(name="pay", action=Recorder().fn(), kind=StepKind.PIVOT),
            Step(name="ship", action=ship, kind=StepKind.RETRIABLE),
        ],
    )
    async with Coordinator(store, [saga]) as coordinator:
        handle = await coordinator.start(saga, "s1")
        await began.wait()
        with pytest.raises(CommandRejected, match="pivot"):
            await coordinator.cancel("s1")
        release.set()
        assert (await handle.outcome()).status is Status.COMPLETED


async def test_steps_run_under_the_concurrency_limit(store: Any) -> None:
    running = 0
    peak = 0
    full = anyio.Event()

    async def step(ctx: StepContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            full.set()
        await full.wait()  # the first three hold their slots until all three are taken
        await anyio.lowlevel.checkpoint()
        running -= 1

    saga = SagaDefinition("s", [Step(name="a", action=step), Step(name="b", action=step)])
    async with Coordinator(store, [saga], max_concurrent_steps=3) as coordinator:
        handles = [await coordinator.start(saga, f"s{i}") for i in range(20)]
        for handle in handles:
            assert (await handle.outcome()).status is Status.COMPLETED
    assert peak == 3


async def test_a_coordinator_that_is_not_entered_says_so(store: Any) -> None:
    rec = Recorder()
    trip = three_steps(rec)
    coordinator = Coordinator(store, [trip])
    with pytest.raises(CoordinatorError, match="not running"):
        await coordinator.start(trip, "t1")
    assert list(await store.instances()) == []
    async with Coordinator(store, [trip]) as running:
        await (await running.start(trip, "t1")).outcome()
    for _ in range(2):  # and it keeps saying so: nothing was left half-registered
        with pytest.raises(CoordinatorError, match="not running"):
            await coordinator.cancel("t1")


def test_bad_coordinator_arguments_are_refused() -> None:
    trip = three_steps(Recorder())
    with pytest.raises(ValueError, match="max_concurrent_steps"):
        Coordinator(MemoryStore(), [trip], max_concurrent_steps=0)
    with pytest.raises(TypeError, match="list of definitions"):
        Coordinator(MemoryStore(), trip)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="two different definitions"):
        Coordinator(MemoryStore(), [trip, three_steps(Recorder())])
    with pytest.raises(DefinitionError, match="SagaDefinition objects"):
        Coordinator(MemoryStore(), ["trip"])  # type: ignore[list-item]


async def test_several_versions_run_side_by_side(store: Any) -> None:
    rec = Recorder()
    v1 = SagaDefinition("s", [Step(name="a", action=rec.fn(1))], version=1)
    v2 = SagaDefinition("s", [Step(name="a", action=rec.fn(2))], version=2)
    async with Coordinator(store, [v1, v2]) as coordinator:
        newest = await (await coordinator.start("s", "n1")).outcome()
        older = await (await coordinator.start(v1, "o1")).outcome()
        with pytest.raises(UnknownSagaError, match="'s v3'"):
            coordinator.definition("s", 3)
    assert (newest.results, older.results) == ({"a": 2}, {"a": 1})
    rows = {row.saga_id: row.version for row in await store.instances()}
    assert rows == {"n1": 2, "o1": 1}
