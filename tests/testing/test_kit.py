"""The test kit on real stores: virtual time for backoff and timeouts, injected faults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from saga import (
    MemoryStore,
    Phase,
    RetryPolicy,
    SagaDefinition,
    Status,
    Step,
    StepContext,
    StepKind,
)
from saga.errors import StoreUnavailableError
from saga.testing import FaultError, SagaTestKit, compensations, completed_steps
from saga.testing._clock import DEFAULT_START
from saga_adapters.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

MINUTE, HOUR = 60.0, 3600.0


@pytest.fixture(params=["memory", "sqlite"])
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaTestKit]:
    if request.param == "memory":
        yield SagaTestKit(MemoryStore())
        return
    async with SQLiteStore(tmp_path / "sagas.db") as store:
        yield SagaTestKit(store)


class World:
    """The outside world of the test saga: every call, with its idempotency key."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str]] = []

    def record(self, ctx: StepContext) -> dict[str, Any]:
        self.calls.append((ctx.phase.value, ctx.step, ctx.attempt, ctx.idempotency_key))
        return {"done": ctx.step}

    def of(self, phase: str, step: str) -> list[tuple[str, str, int, str]]:
        return [c for c in self.calls if c[:2] == (phase, step)]


def trip(world: World) -> SagaDefinition:
    async def act(ctx: StepContext) -> dict[str, Any]:
        return world.record(ctx)

    async def undo(ctx: StepContext) -> None:
        world.record(ctx)

    backoff = RetryPolicy(max_attempts=4, initial_interval=10 * MINUTE, jitter=0, max_interval=HOUR)
    return SagaDefinition(
        "trip",
        [
            Step(name="flight", action=act, compensation=undo, retry=backoff),
            Step(name="hotel", action=act, compensation=undo, retry=backoff, timeout=HOUR),
            Step(name="pay", action=act, kind=StepKind.PIVOT),
            Step(name="email", action=act, kind=StepKind.RETRIABLE),
        ],
    )


async def test_minutes_of_backoff_take_no_real_time_and_are_recorded_in_virtual_time(
    kit: SagaTestKit,
) -> None:
    world = World()
    saga = trip(world)
    kit.faults.fail("flight", times=3)
    async with kit.coordinator([saga]) as c:
        handle = await c.start(saga, "t-1", {})
        outcome = await handle.outcome()
        history = await handle.history()
    assert outcome.status is Status.COMPLETED
    # 10, 20 and 40 minutes of backoff, on the virtual clock, in the history as well.
    assert kit.clock.now() - DEFAULT_START == 70 * MINUTE
    assert history[0].recorded_at == DEFAULT_START
    assert history[-1].recorded_at == DEFAULT_START + 70 * MINUTE
    # The store keeps the coordinator's times, not its own: no database now() in them.
    row = await kit.store.inner.instance("t-1")
    assert row is not None
    assert (row.created_at, row.updated_at) == (DEFAULT_START, DEFAULT_START + 70 * MINUTE)
    assert [c[2] for c in world.of("action", "flight")] == [4]  # the failures never ran it
    assert [i.attempt for i in kit.faults.injected] == [1, 2, 3]


async def test_an_hour_long_timeout_fires_in_virtual_time(kit: SagaTestKit) -> None:
    world = World()
    saga = trip(world)
    kit.faults.time_out("hotel")
    async with kit.coordinator([saga]) as c:
        handle = await c.start(saga, "t-2", {})
        outcome = await handle.outcome()
        history = await handle.history()
    assert outcome.status is Status.COMPLETED
    failed = [e.event for e in history if type(e.event).__name__ == "StepFailed"]
    assert [(f.step, f.error.type) for f in failed] == [("hotel", "saga.errors.StepTimeoutError")]
    assert kit.clock.now() - DEFAULT_START == HOUR + 10 * MINUTE  # the timeout, one backoff


async def test_a_permanent_failure_compensates_in_reverse_order(kit: SagaTestKit) -> None:
    world = World()
    saga = trip(world)
    kit.faults.fail_permanently("pay")
    async with kit.coordinator([saga]) as c:
        handle = await c.start(saga, "t-3", {})
        outcome = await handle.outcome()
        history = await handle.history()
    assert outcome.status is Status.COMPENSATED
    assert completed_steps(history) == ["flight", "hotel"]
    assert compensations(history) == ["hotel", "flight"]
    assert len(world.of("action", "pay")) == 0  # one attempt, never retried, never called


async def test_a_crash_after_the_side_effect_reruns_the_step_with_the_same_key(
    kit: SagaTestKit,
) -> None:
    world = World()
    saga = trip(world)
    kit.faults.crash_after("hotel")
    async with kit.coordinator([saga]) as c:
        handle = await c.start(saga, "t-4", {})
        outcome = await handle.outcome()
        history = await handle.history()
        restarts = c.restarts
    assert outcome.status is Status.COMPLETED
    runs = world.of("action", "hotel")
    assert len(runs) == 2  # the effect happened twice: once before the crash
    assert runs[0] == runs[1]  # same attempt, same idempotency key
    assert completed_steps(history) == ["flight", "hotel", "pay", "email"]  # recorded once
    assert restarts == 1


async def test_faults_in_compensations_and_counting_per_instance(kit: SagaTestKit) -> None:
    world = World()
    saga = trip(world)
    kit.faults.fail_permanently("pay")
    kit.faults.fail("flight", phase="compensation", times=2)
    async with kit.coordinator([saga]) as c:
        first = await (await c.start(saga, "t-5a", {})).outcome()
        second = await (await c.start(saga, "t-5b", {})).outcome()
    assert first.status is second.status is Status.COMPENSATED
    retried = [i for i in kit.faults.injected if i.phase is Phase.COMPENSATION]
    assert [(i.saga_id, i.attempt) for i in retried] == [
        ("t-5a", 1),
        ("t-5a", 2),
        ("t-5b", 1),
        ("t-5b", 2),
    ]


async def test_a_fault_can_target_one_instance(kit: SagaTestKit) -> None:
    world = World()
    saga = trip(world)
    kit.faults.fail_permanently("flight", saga_id="t-6b")
    async with kit.coordinator([saga]) as c:
        a = await (await c.start(saga, "t-6a", {})).outcome()
        b = await (await c.start(saga, "t-6b", {})).outcome()
    assert (a.status, b.status) == (Status.COMPLETED, Status.COMPENSATED)


@pytest.mark.parametrize(
    ("declare", "store_faults"),
    [
        (lambda f: f.store_unavailable("commit", times=3), 3),
        (lambda f: f.commit_outcome_unknown(times=2), 2),
        (lambda f: f.store_conflict(times=2), 2),
        # The rebuild after the crash cannot read its history at first.
        (
            lambda f: (
                f.crash_after("hotel"),
                f.store_unavailable(["load_recent", "instance"], times=2),
            ),
            2,
        ),
    ],
    ids=["unavailable", "outcome-unknown", "conflict", "rebuild-reads-unavailable"],
)
async def test_store_faults_delay_but_do_not_change_the_outcome(
    kit: SagaTestKit, declare: Any, store_faults: int
) -> None:
    world = World()
    saga = trip(world)
    declare(kit.faults)
    async with kit.coordinator([saga]) as c:
        handle = await c.start(saga, "t-7", {})
        outcome = await handle.outcome()
        history = await handle.history()
    assert outcome.status is Status.COMPLETED
    assert [e.sequence for e in history] == list(range(1, len(history) + 1))
    assert completed_steps(history) == ["flight", "hotel", "pay", "email"]
    assert sum(1 for i in kit.faults.injected if i.operation) == store_faults  # they happened


async def test_a_start_whose_outcome_is_unknown_can_be_given_again(kit: SagaTestKit) -> None:
    world = World()
    saga = trip(world)
    kit.faults.store_unavailable("create")
    # No takeover in the background: the repeated start alone must set the instance going,
    # although its row says this coordinator holds it (the lost create did land).
    async with kit.coordinator([saga], recover=False) as c:
        with pytest.raises(StoreUnavailableError, match="injected"):
            await c.start(saga, "t-8", {})
        kit.faults.commit_outcome_unknown(operation="create")  # lands; the caller hears no
        with pytest.raises(StoreUnavailableError):
            await c.start(saga, "t-8", {})
        outcome = await (await c.start(saga, "t-8", {})).outcome()  # the same instance
    assert outcome.status is Status.COMPLETED
    assert len(world.of("action", "flight")) == 1


async def test_store_latency_is_virtual_time(kit: SagaTestKit) -> None:
    world = World()
    saga = trip(world)
    kit.faults.store_latency(2.5, "commit")
    async with kit.coordinator([saga]) as c:
        outcome = await (await c.start(saga, "t-9", {})).outcome()
    assert outcome.status is Status.COMPLETED
    commits = sum(1 for i in kit.faults.injected if i.operation == "commit")
    assert commits > 0
    assert kit.clock.now() - DEFAULT_START == pytest.approx(2.5 * commits)


# -- declarations that cannot happen are refused, with the reason ---------------------------


async def test_faults_are_checked_against_the_definitions(kit: SagaTestKit) -> None:
    saga = trip(World())
    kit.faults.fail("flihgt")
    with pytest.raises(FaultError, match="any registered saga has no step 'flihgt'"):
        async with kit.coordinator([saga]):
            pass


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda f: f.time_out("flight"), "step 'flight' has no timeout"),
        (lambda f: f.fail("pay", phase="compensation"), "step 'pay' has no compensation"),
        (lambda f: f.fail("pay", phase="undo"), "phase must be 'action' or 'compensation'"),
        (lambda f: f.fail("pay", times=0), "times must be an int >= 1 or None"),
        (lambda f: f.fail("pay", error=ValueError), "error must be an exception instance"),
        (lambda f: f.fail("pay", saga="other"), "saga 'other' has no step 'pay'"),
        (lambda f: f.store_unavailable("comit"), r"unknown store operation\(s\) \['comit'\]"),
        (lambda f: f.store_latency(-1), "seconds must be a number >= 0"),
    ],
)
async def test_impossible_faults_are_refused(kit: SagaTestKit, declare: Any, message: str) -> None:
    async with kit.coordinator([trip(World())]):
        with pytest.raises(FaultError, match=message):
            declare(kit.faults)
