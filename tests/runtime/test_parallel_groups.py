"""Parallel groups end to end, on every store and on asyncio and trio."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from saga import Coordinator, Parallel, SagaDefinition, Status, Step, StepContext, StepKind
from saga import events as ev
from saga.errors import NonRetryableError
from saga.testing import compensations

pytestmark = pytest.mark.anyio


class Meeting:
    """A place ``size`` callers must all reach before any of them goes on."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.arrived: list[str] = []
        self.everyone = anyio.Event()

    async def attend(self, who: str) -> None:
        self.arrived.append(who)
        if len(self.arrived) == self.size:
            self.everyone.set()
        with anyio.fail_after(10):  # they run at the same time, or this never returns
            await self.everyone.wait()


async def test_members_run_at_the_same_time_never_more_than_the_limit(store: Any) -> None:
    pair = Meeting(2)
    running, most = 0, 0

    async def book(ctx: StepContext) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if ctx.step != "car":  # the first two must overlap
            await pair.attend(ctx.step)
        running -= 1
        return ctx.step

    async def noop(ctx: StepContext) -> None:
        return None

    saga = SagaDefinition(
        "trip",
        [
            Parallel(
                "book", [Step(name=n, action=book) for n in ("flight", "hotel", "car")], limit=2
            ),
            Step(name="pay", action=noop, kind=StepKind.PIVOT),
        ],
    )
    async with Coordinator(store, [saga]) as coordinator:
        outcome = await (await coordinator.start(saga, "t1")).outcome()
        history = await coordinator.history("t1")
    assert outcome.status is Status.COMPLETED
    assert outcome.results == {"flight": "flight", "hotel": "hotel", "car": "car", "pay": None}
    assert most == 2
    assert sorted(pair.arrived) == ["flight", "hotel"]
    started = [e.event.step for e in history if isinstance(e.event, ev.StepScheduled)]
    assert started == ["flight", "hotel", "car", "pay"]


async def test_a_failing_member_undoes_every_member_that_completed_together(store: Any) -> None:
    hotel_failed, car_began = anyio.Event(), anyio.Event()
    undo_together = Meeting(2)
    undone: list[str] = []

    async def quote(ctx: StepContext) -> None:
        return None

    async def book(ctx: StepContext) -> str:
        if ctx.step == "hotel":
            await car_began.wait()
            hotel_failed.set()
            raise NonRetryableError("no rooms")
        if ctx.step == "car":  # running when the hotel fails: it finishes, then is undone
            car_began.set()
            await hotel_failed.wait()
        return ctx.step

    async def cancel_booking(ctx: StepContext) -> None:
        if ctx.step != "quote":
            await undo_together.attend(ctx.step)
        undone.append(ctx.step)

    saga = SagaDefinition(
        "trip",
        [
            Step(name="quote", action=quote, compensation=cancel_booking),
            Parallel(
                "book",
                [
                    Step(name=n, action=book, compensation=cancel_booking)
                    for n in ("flight", "hotel", "car")
                ],
            ),
        ],
    )
    async with Coordinator(store, [saga]) as coordinator:
        outcome = await (await coordinator.start(saga, "t1")).outcome()
        history = await coordinator.history("t1")
    assert outcome.status is Status.COMPENSATED
    assert outcome.reason is not None and "no rooms" in outcome.reason
    assert sorted(undo_together.arrived) == ["car", "flight"]  # at the same time
    assert sorted(compensations(history)[:2]) == ["car", "flight"]
    assert compensations(history)[2:] == ["quote"]  # only after the group's
    assert undone[-1] == "quote"
