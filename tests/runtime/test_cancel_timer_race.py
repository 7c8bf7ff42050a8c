"""A cancel that races a durable sleep's timer while the saga is passivated.

The saga books, pays, sleeps (``Sleep(NAP)``), then ships; book, pay and ship have a
compensation. Its actor passivates during the sleep (``passivate_after``
on the virtual clock): the instance sleeps in the store, held by nobody, and the
coordinator's alarm claims it when the sleep is due. Time moves only by
``VirtualClock.advance``, so every ordering is chosen by the test:

* the cancel comes **just before** the fire time: it wins. The wait ends with
  ``StepFailed(nap, saga.Cancelled)``; pay and book are undone, newest first; ship never
  runs, not even once the fire time has passed;
* the cancel comes **at** the fire time, after the coordinator took the due instance and
  fired the timer: the sleep completed (``StepCompleted(nap)``, recorded no earlier than
  its ``run_after``), ship began, and the cancel undoes ship, pay and book once ship ends;
* the cancel and the alarm wake **in the same instant** (a task sleeping on the virtual
  clock until the fire time): either may win, and the history must be one of the two
  above, whole.

Every run ends in exactly one terminal outcome (cancelled), with a history that passes the
chaos checks (gap-free, replays to its row, nothing twice, nothing in flight), every
compensation run exactly once in the outside world and in reverse completion order.

Last, a race found by the chaos runner: a signal sent just as its saga finishes must not
leave the finished instance leased (``Coordinator.signal`` took the lease of what it had
read as running, found it finished, and kept it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from saga import (
    Coordinator,
    LeasePolicy,
    SagaDefinition,
    Sleep,
    Status,
    Step,
    StepContext,
    Store,
)
from saga._core import events as ev
from saga._runtime.history import decode_history
from saga.errors import CommandRejected
from saga.testing import SagaTestKit
from tests.chaos.checks import (
    TERMINAL_EVENTS,
    compensation_violations,
    history_violations,
    snapshot,
)

pytestmark = pytest.mark.anyio

SAGA = "nap_then_ship"
ID = "order-1"
#: Seconds of the sleep, and of idleness before an actor leaves memory (virtual time).
NAP = 60.0
IDLE = 5.0
#: Real seconds: how often the lease keeper looks at the store when no wake-up came.
LEASES = LeasePolicy(poll_interval=0.02)
COMPENSATED = ("book", "pay", "ship")
#: A bound on waiting for the program to get somewhere (real time), not synchronisation.
WITHIN = 15.0


class World:
    """The outside world: what the steps did, in order; ship blocks until ``gate``."""

    def __init__(self) -> None:
        self.effects: list[tuple[str, str]] = []
        self.ship_began = anyio.Event()
        self.gate = anyio.Event()


def definition(world: World) -> SagaDefinition:
    async def act(ctx: StepContext) -> str:
        world.effects.append((ctx.phase.value, ctx.step))
        return ctx.step

    async def ship(ctx: StepContext) -> str:
        world.effects.append((ctx.phase.value, ctx.step))
        world.ship_began.set()
        await world.gate.wait()
        return "shipped"

    async def undo(ctx: StepContext) -> None:
        assert ctx.result is not None, "a compensation sees its step's result"
        world.effects.append((ctx.phase.value, ctx.step))

    return SagaDefinition(
        SAGA,
        [
            Step(name="book", action=act, compensation=undo),
            Step(name="pay", action=act, compensation=undo),
            Step(name="nap", wait=Sleep(NAP)),
            Step(name="ship", action=ship, compensation=undo),
        ],
    )


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` (it reads the store) until it holds; fail after ``WITHIN``."""
    with anyio.move_on_after(WITHIN) as waited:
        while not await condition():  # noqa: ASYNC110 - polling the store
            await anyio.sleep(0.002)
    if waited.cancelled_caught:
        pytest.fail(f"not within {WITHIN}s: {what}")


async def ends_cancelled(coordinator: Coordinator) -> None:
    with anyio.move_on_after(WITHIN):
        outcome = await coordinator.handle(ID).outcome()
        assert outcome.status is Status.CANCELLED, outcome
        return
    pytest.fail(f"the saga did not end within {WITHIN}s: {await coordinator.history(ID)}")


async def events(store: Store) -> list[Any]:
    loaded = await store.load(ID)
    assert loaded is not None
    return [r.event for r in decode_history(ID, loaded[1])]


@asynccontextmanager
async def passivated(store: Store) -> AsyncIterator[tuple[SagaTestKit, Coordinator, World, float]]:
    """A coordinator whose saga sleeps in the store, held by nobody; and the fire time."""
    world = World()
    kit = SagaTestKit(store, autojump=False)
    async with kit.coordinator(
        [definition(world)], passivate_after=IDLE, leases=LEASES
    ) as coordinator:
        await coordinator.start(SAGA, ID)

        async def sleeping() -> bool:
            return any(
                isinstance(e, ev.StepScheduled) and e.step == "nap" for e in await events(store)
            )

        await until(sleeping, "the saga sleeps")
        (scheduled,) = [
            e for e in await events(store) if isinstance(e, ev.StepScheduled) and e.step == "nap"
        ]
        assert scheduled.run_after is not None
        fire_at = scheduled.run_after

        async def released() -> bool:
            # Time passes a second at a time: the actor leaves memory once it has been
            # idle for IDLE (counted from whenever it got there), well before the fire time.
            row = await store.instance(ID)
            if row is not None and row.owner is None and ID not in coordinator._actors:
                return True
            assert kit.clock.now() + 1.0 < fire_at, "not passivated in time"
            await kit.clock.advance(1.0)
            return False

        await until(released, "the instance is passivated")
        row = await store.instance(ID)
        assert row is not None and row.wake_at == fire_at
        assert kit.clock.now() < fire_at
        assert world.effects == [("action", "book"), ("action", "pay")]
        yield kit, coordinator, world, fire_at


async def check(store: Store, world: World, *, winner: str | None) -> str:
    """The history and the outside world after the race; returns who won."""
    snap = await snapshot(store)
    assert history_violations(snap, ID) == []
    assert compensation_violations(snap, ID, COMPENSATED) == []
    history, records = snap.events(ID), snap.records[ID]
    assert snap.rows[ID].status == Status.CANCELLED.value
    terminal = [e for e in history if isinstance(e, TERMINAL_EVENTS)]
    assert terminal == [history[-1]] and isinstance(history[-1], ev.SagaCancelled), history
    (scheduled,) = [e for e in history if isinstance(e, ev.StepScheduled) and e.step == "nap"]
    assert scheduled.run_after is not None
    ended = [
        i
        for i, e in enumerate(history)
        if isinstance(e, ev.StepCompleted | ev.StepFailed) and e.step == "nap"
    ]
    assert len(ended) == 1, history  # the sleep ended once: by its timer, or by the cancel
    nap = history[ended[0]]
    (cancelled,) = [i for i, e in enumerate(history) if isinstance(e, ev.CancelRequested)]
    if isinstance(nap, ev.StepFailed):
        won = "cancel"
        assert nap.error.type == "saga.Cancelled" and not nap.will_retry, nap
        assert cancelled < ended[0], history
        # Nothing after the sleep was scheduled, nor ran.
        assert not any(isinstance(e, ev.StepScheduled) and e.step == "ship" for e in history)
    else:
        won = "timer"
        assert cancelled > ended[0], history
        assert records[ended[0]].recorded_at >= scheduled.run_after
    if winner is not None:
        assert won == winner, history
    completed = [e.step for e in history if isinstance(e, ev.StepCompleted)]
    expected = [s for s in reversed(completed) if s in COMPENSATED]
    assert [e.step for e in history if isinstance(e, ev.CompensationCompleted)] == expected
    # In the outside world: the actions of the steps that completed, then each of their
    # compensations once, newest first.
    assert world.effects == [("action", s) for s in completed if s != "nap"] + [
        ("compensation", s) for s in expected
    ]
    return won


async def test_a_cancel_just_before_the_fire_time_wins(store: Store) -> None:
    async with passivated(store) as (kit, coordinator, world, fire_at):
        await kit.clock.advance(fire_at - kit.clock.now() - 0.001)
        assert kit.clock.now() < fire_at
        await coordinator.cancel(ID, "changed my mind")
        await ends_cancelled(coordinator)
        before = [(r.sequence, r.type, r.data) for r in (await store.load(ID))[1]]  # type: ignore[index]
        # Past the fire time (and past another idle spell): the dead timer stays dead.
        await kit.clock.advance(NAP + IDLE)
        after = [(r.sequence, r.type, r.data) for r in (await store.load(ID))[1]]  # type: ignore[index]
        assert after == before
    await check(store, world, winner="cancel")
    assert world.effects == [
        ("action", "book"),
        ("action", "pay"),
        ("compensation", "pay"),
        ("compensation", "book"),
    ]


async def test_a_cancel_at_the_fire_time_after_the_timer_undoes_what_followed(
    store: Store,
) -> None:
    async with passivated(store) as (kit, coordinator, world, fire_at):
        await kit.clock.advance(fire_at - kit.clock.now())
        assert kit.clock.now() == fire_at
        # The alarm (or the beat) claimed the due instance and fired its timer.
        with anyio.fail_after(WITHIN):
            await world.ship_began.wait()
        assert kit.clock.now() == fire_at
        await coordinator.cancel(ID, "changed my mind")
        world.gate.set()
        await ends_cancelled(coordinator)
    await check(store, world, winner="timer")
    assert world.effects == [
        ("action", "book"),
        ("action", "pay"),
        ("action", "ship"),
        ("compensation", "ship"),
        ("compensation", "pay"),
        ("compensation", "book"),
    ]


async def test_a_cancel_in_the_same_instant_as_the_fire_is_one_or_the_other(
    store: Store,
) -> None:
    async with passivated(store) as (kit, coordinator, world, fire_at):

        async def cancel_at_the_fire_time() -> None:
            await kit.clock.sleep_until(fire_at)
            await coordinator.cancel(ID, "changed my mind")
            world.gate.set()  # if ship began, let it end so that it can be undone

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_at_the_fire_time)
            await kit.clock.advance(fire_at - kit.clock.now())
        assert kit.clock.now() == fire_at
        await ends_cancelled(coordinator)
    await check(store, world, winner=None)


# -- a signal that races the end of its saga ---------------------------------------------


async def test_a_signal_racing_the_end_of_its_saga_leaves_no_lease_behind(store: Store) -> None:
    """``Coordinator.signal`` reads the instance (running), then sends; meanwhile the saga
    finishes. Whatever the signal's fate, the finished instance must not stay leased."""
    kit = SagaTestKit(store)
    began = anyio.Event()

    async def work(ctx: StepContext) -> str:
        began.set()
        await kit.clock.sleep(1.0)
        return "done"

    racer = SagaDefinition("racer", [Step(name="work", action=work)])
    # The send reaches the store only after the saga has finished (virtual seconds).
    kit.faults.store_latency(10.0, "send", times=1)
    async with kit.coordinator([racer]) as coordinator:
        await coordinator.start(racer, ID)
        with anyio.fail_after(WITHIN):
            await began.wait()
        # Refused (as for a saga that has finished) or not: either is fine here.
        with contextlib.suppress(CommandRejected):
            await coordinator.signal(ID, "late", {"n": 1}, message_id="late-1")
        row = await store.instance(ID)
        assert row is not None and row.status == Status.COMPLETED.value
        assert (row.owner, row.lease_until) == (None, None), row
