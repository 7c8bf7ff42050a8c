"""Continue-as-new end to end, on every store and on asyncio and trio."""

from __future__ import annotations

from typing import Any

import pytest

from saga import ContinueAsNew, SagaDefinition, Sleep, Status, Step, StepContext
from saga.testing import SagaTestKit

pytestmark = pytest.mark.anyio

HOUR = 3600.0


async def poll(ctx: StepContext) -> int:
    return int(ctx.input["n"])


def poller(version: int = 1) -> SagaDefinition:
    return SagaDefinition(
        "poller",
        [
            Step(name="poll", action=poll),
            Step(name="nap", wait=Sleep(HOUR)),
            Step(
                name="again",
                wait=ContinueAsNew(
                    input=lambda ctx: {"n": ctx.input["n"] + 1},
                    until=lambda ctx: ctx.results["poll"] >= 3,
                ),
            ),
        ],
        version=version,
    )


async def test_a_loop_runs_in_fresh_histories_and_the_handle_follows_it(store: Any) -> None:
    kit = SagaTestKit(store)
    async with kit.coordinator([poller()]) as coordinator:
        handle = await coordinator.start("poller", "p", {"n": 0})
        last = await handle.outcome()
        first = await handle.outcome(follow=False)
        lengths = [len(await coordinator.history(run)) for run in ("p", "p#2", "p#3", "p#4")]
    assert (first.status, first.continued_as) == (Status.COMPLETED, "p#2")
    assert (last.saga_id, last.status, last.continued_as) == ("p#4", Status.COMPLETED, None)
    assert last.results["poll"] == 3
    # Each run starts afresh: as long as the first (the last one has no SagaContinued).
    assert lengths == [lengths[0]] * 3 + [lengths[0] - 1]
    assert await store.instance("p#5") is None


async def test_the_next_run_takes_the_newest_version(store: Any) -> None:
    kit = SagaTestKit(store)
    async with kit.coordinator([poller(1)]) as old:
        await old.start("poller", "p", {"n": 2})
        await kit.clock.wait_idle()  # run 1 naps
    async with kit.coordinator([poller(1), poller(2)]) as new:
        last = await new.handle("p").outcome()
        versions = [(await new.query(run)).version for run in ("p", "p#2")]
    assert last.saga_id == "p#2"
    assert versions == [1, 2]  # run 1 stays on its version; the next takes the newest
