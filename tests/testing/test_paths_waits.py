"""Compensation paths and faults of sagas that wait for time and for signals."""

from __future__ import annotations

from typing import Any

import pytest

from saga import (
    MemoryStore,
    OnTimeout,
    SagaDefinition,
    Sleep,
    Step,
    StepContext,
    StepKind,
    WaitForSignal,
)
from saga.testing import FaultError, SagaTestKit, compensation_paths

pytestmark = pytest.mark.anyio

DAY = 86400.0


async def act(ctx: StepContext) -> Any:
    return ctx.results.get("approval", "done")


async def undo(ctx: StepContext) -> None:
    return None


EXPENSE = SagaDefinition(
    "expense",
    [
        Step(name="reserve", action=act, compensation=undo),
        Step(name="cool_off", wait=Sleep(DAY)),
        Step(name="approval", wait=WaitForSignal("approve", timeout=2 * DAY)),
        Step(name="evidence", wait=WaitForSignal("receipt")),  # no timeout: cannot fail
        Step(
            name="reminder",
            wait=WaitForSignal("ack", timeout=DAY, on_timeout=OnTimeout.CONTINUE),
        ),
        Step(name="pay", action=act, kind=StepKind.PIVOT),
        Step(name="notify", action=act, kind=StepKind.RETRIABLE),
    ],
)


def test_waits_that_cannot_fail_get_no_path() -> None:
    assert [str(p) for p in compensation_paths(EXPENSE)] == [
        "reserve-fails",
        "approval-times-out",
        "pay-fails",
        "notify-fails",
    ]


@pytest.mark.parametrize("path", compensation_paths(EXPENSE), ids=str)
async def test_every_path_of_a_waiting_saga(path: Any) -> None:
    kit = SagaTestKit(MemoryStore())
    # The signals of the waits before the failing step are sent at the start and kept.
    outcome = await path.check(kit, signals={"approve": "yes", "receipt": {"n": 1}})
    assert outcome.status is path.status
    if path.step in ("pay", "notify"):
        assert outcome.results["approval"] == "yes"
        assert outcome.results["evidence"] == {"n": 1}
        assert outcome.results["reminder"] is None  # nobody acked: it went on


async def test_a_signal_wait_timing_out_is_its_own_path() -> None:
    (path,) = [p for p in compensation_paths(EXPENSE) if p.times_out]
    assert path.describe() == "approval times out -> compensated, undoing reserve"
    kit = SagaTestKit(MemoryStore())
    outcome = await path.check(kit)
    assert outcome.reason is not None and "SignalTimeout" in outcome.reason
    assert kit.faults.injected == []  # nothing injected: the timeout did it


@pytest.mark.parametrize("step", ["cool_off", "approval"])
async def test_a_fault_on_a_waiting_step_is_refused(step: str) -> None:
    kit = SagaTestKit(MemoryStore())
    kit.faults.fail_permanently(step)
    with pytest.raises(FaultError, match=f"step {step!r} waits"):
        async with kit.coordinator([EXPENSE]):
            pass
