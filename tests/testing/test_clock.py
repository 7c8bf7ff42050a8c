"""The virtual clock: time stands still until moved, timers fire in order, nothing is skipped."""

from __future__ import annotations

import anyio
import pytest

from saga.testing import VirtualClock
from saga.testing._clock import DEFAULT_START

pytestmark = pytest.mark.anyio


async def test_time_stands_still_until_moved() -> None:
    clock = VirtualClock()
    assert clock.now() == DEFAULT_START
    await anyio.sleep(0.01)
    assert clock.now() == DEFAULT_START
    await clock.advance(90)
    assert clock.now() == DEFAULT_START + 90


async def test_advance_fires_timers_in_deadline_order_and_settles_after_each() -> None:
    clock = VirtualClock(start=0)
    seen: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        seen.append((name, clock.now()))
        if name == "first":  # what a timer sets off happens before the next one fires
            await clock.sleep(5)
            seen.append(("first-again", clock.now()))

    async with anyio.create_task_group() as tg:
        for name, seconds in (("third", 30), ("first", 10), ("second", 20)):
            tg.start_soon(sleeper, name, seconds)
        await clock.wait_idle()
        await clock.advance(25)
        assert seen == [("first", 10), ("first-again", 15), ("second", 20)]
        assert clock.now() == 25
        await clock.advance(5)
    assert seen[-1] == ("third", 30)


async def test_autojump_runs_sleeps_in_order_without_real_time() -> None:
    clock = VirtualClock(start=0)
    seen: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        seen.append(clock.now())

    before = anyio.current_time()
    async with anyio.create_task_group() as outer:
        outer.start_soon(clock.autojump)
        async with anyio.create_task_group() as tg:
            for seconds in (3600 * 24 * 3, 60, 3600):
                tg.start_soon(sleeper, seconds)
        outer.cancel_scope.cancel()
    assert seen == [60, 3600, 3600 * 24 * 3]
    assert clock.jumps == 3
    assert anyio.current_time() - before < 5  # (a sanity bound, not a benchmark)


async def test_a_deadline_cancels_at_its_time_and_not_before() -> None:
    clock = VirtualClock(start=0)
    ended: list[tuple[float, bool]] = []

    async def guarded() -> None:
        with clock.move_on_at(100) as scope:
            await clock.sleep(1000)
        ended.append((clock.now(), scope.cancelled_caught))

    async with anyio.create_task_group() as tg:
        tg.start_soon(guarded)
        await clock.wait_idle()
        await clock.advance(99.5)
        assert ended == []
        await clock.advance(1)
        assert ended == [(100, True)]
    assert clock.now() == 100.5


async def test_timers_that_ended_early_do_not_move_time() -> None:
    clock = VirtualClock(start=0)
    with clock.move_on_at(3600):  # a timeout that is never reached
        await anyio.lowlevel.checkpoint()
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.autojump)
        await clock.sleep(10)
        tg.cancel_scope.cancel()
    assert clock.now() == 10
    assert clock.jumps == 1


async def test_time_does_not_jump_while_io_is_in_flight() -> None:
    clock = VirtualClock(start=0)
    order: list[str] = []
    io_started = anyio.Event()
    io_may_end = anyio.Event()

    async def io() -> None:
        with clock.busy():
            io_started.set()
            await io_may_end.wait()  # blocked, but marked busy: no jump
            order.append(f"io done at {clock.now()}")

    timer_fired = anyio.Event()

    async def timer() -> None:
        await clock.sleep(5)
        order.append(f"timer at {clock.now()}")
        timer_fired.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.autojump)
        tg.start_soon(io)
        await io_started.wait()
        tg.start_soon(timer)
        # Every task waits now; without the busy mark, autojump would fire the timer here.
        await anyio.wait_all_tasks_blocked()
        assert order == []
        assert clock.now() == 0
        io_may_end.set()
        await timer_fired.wait()
        tg.cancel_scope.cancel()
    assert order == ["io done at 0.0", "timer at 5.0"]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "5", True])
async def test_advance_refuses_what_is_not_a_duration(bad: object) -> None:
    with pytest.raises(ValueError, match="seconds must be a finite number >= 0"):
        await VirtualClock().advance(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), "2026", None, False])
def test_start_must_be_a_time(bad: object) -> None:
    with pytest.raises(TypeError, match="start must be a finite number"):
        VirtualClock(start=bad)  # type: ignore[arg-type]
