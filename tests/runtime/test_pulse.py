"""The lease keeper's wake-up pulse keeps a fire that comes while nobody waits."""

from __future__ import annotations

import anyio
import pytest

from saga._runtime.ownership import _Pulse

pytestmark = pytest.mark.anyio


async def test_a_fire_while_nobody_waits_is_kept_for_the_next_wait() -> None:
    pulse = _Pulse()
    pulse.fire()  # e.g. a signal sent while the beat was busy claiming
    with anyio.fail_after(5):
        await pulse.wait(timeout=3600)
    with anyio.move_on_after(0.05) as idle:  # consumed: the next wait waits
        await pulse.wait(timeout=3600)
    assert idle.cancelled_caught


async def test_every_waiter_wakes_and_a_later_fire_is_not_lost() -> None:
    pulse = _Pulse()
    woke: list[int] = []

    async def waiter(n: int) -> None:
        await pulse.wait(timeout=3600)
        woke.append(n)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(waiter, n)
            await anyio.wait_all_tasks_blocked()
            pulse.fire()
        assert sorted(woke) == [0, 1, 2]
        pulse.fire()
        await pulse.wait(timeout=3600)
