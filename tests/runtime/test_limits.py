"""History limits: payloads and histories past their limits are refused with typed errors."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from saga import (
    Coordinator,
    HistoryLimits,
    RetryPolicy,
    SagaDefinition,
    Status,
    Step,
    StepContext,
    WaitForSignal,
)
from saga import events as ev
from saga.errors import PayloadError, PayloadTooLargeError

pytestmark = pytest.mark.anyio

SMALL = HistoryLimits(warn_events=6, max_events=10, warn_payload_bytes=100, max_payload_bytes=1000)


async def noop(ctx: StepContext) -> None:
    return None


async def undo(ctx: StepContext) -> None:
    return None


def big(size: int) -> str:
    return "x" * size


async def test_an_input_past_the_limit_is_refused_and_nothing_is_written(store: Any) -> None:
    saga = SagaDefinition("limited", [Step(name="only", action=noop)])
    async with Coordinator(store, [saga], limits=SMALL) as coordinator:
        with pytest.raises(PayloadTooLargeError) as caught:
            await coordinator.start(saga, "s1", {"blob": big(2000)})
        assert (caught.value.path, caught.value.limit) == ("input", 1000)
        assert caught.value.size == len('{"blob":""}') + 2000
        assert isinstance(caught.value, PayloadError)
        assert await store.instance("s1") is None


async def test_a_signal_past_the_limit_is_refused_and_not_kept(store: Any) -> None:
    saga = SagaDefinition(
        "limited", [Step(name="approval", wait=WaitForSignal("approve", timeout=3600))]
    )
    async with Coordinator(store, [saga], limits=SMALL) as coordinator:
        await coordinator.start(saga, "s1")
        with pytest.raises(PayloadTooLargeError) as caught:
            await coordinator.signal("s1", "approve", big(1001), message_id="m1")
        assert caught.value.path == "payload"
        assert await store.inbox(saga_id="s1") == []
        assert (await coordinator.query("s1")).status is Status.RUNNING


async def test_a_result_past_the_limit_fails_its_step_for_good(store: Any) -> None:
    async def huge(ctx: StepContext) -> str:
        return big(5000)

    saga = SagaDefinition(
        "limited",
        [
            Step(name="first", action=noop, compensation=undo),
            Step(name="huge", action=huge, retry=RetryPolicy(max_attempts=5)),
        ],
    )
    async with Coordinator(store, [saga], limits=SMALL) as coordinator:
        handle = await coordinator.start(saga, "s1")
        outcome = await handle.outcome()
    assert outcome.status is Status.COMPENSATED
    failed = [
        e.event for e in await coordinator.history("s1") if isinstance(e.event, ev.StepFailed)
    ]
    assert [(f.step, f.attempt, f.will_retry) for f in failed] == [("huge", 1, False)]
    assert failed[0].error.type == "saga.errors.PayloadTooLargeError"


async def test_a_history_at_its_limit_is_parked_not_grown(store: Any) -> None:
    async def flaky(ctx: StepContext) -> None:
        raise RuntimeError("never")

    forever = RetryPolicy(max_attempts=None, initial_interval=0.001, max_interval=0.001)
    saga = SagaDefinition("limited", [Step(name="flaky", action=flaky, retry=forever)])
    async with Coordinator(store, [saga], limits=SMALL) as coordinator:
        handle = await coordinator.start(saga, "s1")
        assert await handle.settle() is Status.SUSPENDED
        events = [e.event for e in await coordinator.history("s1")]
        assert coordinator.restarts == 1
    # SagaStarted + StepScheduled, then StepFailed + StepScheduled per retry: the last pair
    # that fits ends at 10 events; the next would make 12; the suspension is the 11th.
    assert len(events) == SMALL.max_events + 1
    suspended = events[-1]
    assert isinstance(suspended, ev.SagaSuspended)
    assert suspended.reason.startswith("HistoryTooLongError: ")  # at once, not after restarts
    assert "12 events, more than the limit of 10" in suspended.reason


async def test_warnings_come_before_the_limits(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def chatty(ctx: StepContext) -> str:
        return big(500)  # past the warning, within the limit

    saga = SagaDefinition(
        "limited",
        [Step(name=f"s{i}", action=chatty if i == 0 else noop) for i in range(4)],
    )
    caplog.set_level(logging.WARNING, logger="saga")
    async with Coordinator(store, [saga], limits=SMALL) as coordinator:
        outcome = await (await coordinator.start(saga, "s1")).outcome()
    assert outcome.status is Status.COMPLETED  # 10 events: at the limit, not past it
    messages = [r.getMessage() for r in caplog.records if r.name == "saga"]
    assert any("result of action 's0'" in m and "502 bytes" in m for m in messages)
    assert any("history holds 8 events (warning at 6" in m for m in messages)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_events": 0}, "max_events must be an int >= 1"),
        ({"warn_payload_bytes": 2.5}, "warn_payload_bytes must be an int >= 1"),
        ({"warn_events": 11, "max_events": 10}, "warn_events must not exceed max_events"),
        (
            {"warn_payload_bytes": 11, "max_payload_bytes": 10},
            "warn_payload_bytes must not exceed max_payload_bytes",
        ),
    ],
)
def test_limits_are_checked_when_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HistoryLimits(**options)


def test_defaults_are_temporals() -> None:
    limits = HistoryLimits()
    assert (limits.warn_events, limits.max_events) == (10_000, 50_000)
    assert (limits.warn_payload_bytes, limits.max_payload_bytes) == (256 * 1024, 2 * 1024 * 1024)
