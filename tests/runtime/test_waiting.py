"""Waiting steps at runtime: durable sleeps, signal waits, signals, queries, passivation.

On every store and on asyncio and trio, through the test kit's virtual clock: ``kit`` lets
time jump to the next deadline (hours of waiting take none), ``still`` moves it only when
the test says so (``advance``), and ``clock.wait_idle()`` returns once everything the last
move set off (commits included) is done, so the test sees each step of the way.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Collection
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from saga import (
    Coordinator,
    LeasePolicy,
    MemoryStore,
    OnTimeout,
    PendingWait,
    SagaDefinition,
    Sleep,
    Status,
    Step,
    StepContext,
    WaitForSignal,
)
from saga import events as ev
from saga._core import messages as msg
from saga._core.definition import Wait
from saga._runtime.coordinator import signal_key
from saga._runtime.history import RecordedEvent
from saga.errors import (
    CommandRejected,
    InvalidSagaIdError,
    NotFoundError,
    PayloadError,
)
from saga.testing import SagaTestKit, compensations
from saga.testing._clock import DEFAULT_START
from saga_adapters.sqlite import SQLiteStore
from tests.conftest import postgres_schema, postgres_store

pytestmark = pytest.mark.anyio

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
START = DEFAULT_START


@pytest.fixture
def kit(store: Any) -> SagaTestKit:
    """Virtual time that jumps to the next deadline whenever everything waits."""
    return SagaTestKit(store)


@pytest.fixture
def still(store: Any) -> SagaTestKit:
    """Virtual time that stands still until the test moves it."""
    return SagaTestKit(store, autojump=False)


class World:
    """The services the saga calls: every call, in order, and what each step saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.seen: dict[str, dict[str, Any]] = {}

    def step(self, result: Any = None) -> Any:
        async def call(ctx: StepContext) -> Any:
            self.calls.append((ctx.phase.value, ctx.step))
            self.seen[ctx.step] = dict(ctx.results)
            return result

        return call


class Gate:
    """A step that holds until the test lets it through."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, ctx: StepContext) -> str:
        self.world.calls.append((ctx.phase.value, ctx.step))
        self.entered.set()
        await self.release.wait()
        return "held"


def order(world: World, wait: Wait, *, gate: Gate | None = None) -> SagaDefinition:
    """reserve and hold (both undone on the way back), then the wait, then charge."""
    return SagaDefinition(
        "order",
        [
            Step(name="reserve", action=world.step({"stock": 1}), compensation=world.step()),
            Step(name="hold", action=gate or world.step("held"), compensation=world.step()),
            Step(name="wait", wait=wait),
            Step(name="charge", action=world.step("charged")),
        ],
    )


def of(history: list[RecordedEvent], kind: type[Any]) -> list[RecordedEvent]:
    return [r for r in history if isinstance(r.event, kind)]


def ended_at(history: list[RecordedEvent], step: str) -> RecordedEvent:
    [done] = [r for r in of(history, ev.StepCompleted) if r.event.step == step]
    return done


def ended(history: list[RecordedEvent], step: str) -> float:
    """When ``step`` completed (the event's recorded time, on the virtual clock)."""
    return ended_at(history, step).recorded_at


APPROVAL = WaitForSignal("approve")
#: Leases whose keeper polls often (real time), for what only its poll picks up: two
#: SQLite stores in one process do not wake each other, a coordinator plans its first
#: alarm at its first beat, a resume does not deliver what waits in the inbox.
QUICK = LeasePolicy(duration=30.0, renew_every=10.0, poll_interval=0.05)
UNDONE = [("compensation", "hold"), ("compensation", "reserve")]


# -- sleeps ------------------------------------------------------------------------------


@pytest.mark.parametrize("passivate_after", [-1, -0.5, math.inf, math.nan, True, "60"])
async def test_passivate_after_must_be_seconds_or_none(passivate_after: Any) -> None:
    saga = order(World(), APPROVAL)
    with pytest.raises(ValueError, match="passivate_after"):
        Coordinator(MemoryStore(), [saga], passivate_after=passivate_after)
    assert Coordinator(MemoryStore(), [saga], passivate_after=0).passivate_after == 0
    # Without recovery nothing would claim a passivated instance back: it is never one.
    assert Coordinator(MemoryStore(), [saga], recover=False).passivate_after is None


@pytest.mark.parametrize("passivate_after", [None, MINUTE], ids=["in-memory", "passivated"])
async def test_a_sleep_ends_at_its_time(
    kit: SagaTestKit, store: Any, passivate_after: float | None
) -> None:
    world = World()
    saga = order(world, Sleep(HOUR))
    async with kit.coordinator([saga], passivate_after=passivate_after) as c:
        outcome = await (await c.start(saga, "o1")).outcome()
        history = await c.history("o1")
        claimed = c._keeper.claimed
    assert outcome.status is Status.COMPLETED
    assert ended(history, "wait") == START + HOUR  # on time, whoever held it meanwhile
    assert ended(history, "charge") == START + HOUR
    assert kit.clock.now() == START + HOUR
    assert world.calls[-1] == ("action", "charge")
    # Passivated, the instance left memory and its timer brought it back (a new lease).
    row = await store.instance("o1")
    assert (claimed, row.epoch) == ((0, 1) if passivate_after is None else (1, 2))


async def test_an_overdue_sleep_ends_at_once_under_the_next_coordinator(
    still: SagaTestKit, store: Any
) -> None:
    world = World()
    saga = order(world, Sleep(HOUR))
    async with still.coordinator([saga]) as c:
        await c.start(saga, "o1")
        await still.clock.wait_idle()
        assert (await c.query("o1")).waits == (
            PendingWait(step="wait", signal=None, until=START + HOUR),
        )
    row = await store.instance("o1")
    assert (row.owner, row.wake_at) == (None, START + HOUR)  # asleep in the store
    await still.clock.advance(2 * HOUR)  # nobody runs it meanwhile
    assert world.calls == [("action", "reserve"), ("action", "hold")]

    still.autojump = True
    async with still.coordinator([saga]) as c:
        outcome = await c.handle("o1").outcome()
        history = await c.history("o1")
    assert outcome.status is Status.COMPLETED
    assert ended(history, "wait") == START + 2 * HOUR  # at once: no time went by
    assert still.clock.now() == START + 2 * HOUR


async def test_a_sleep_not_due_yet_wakes_on_time_under_the_next_coordinator(
    still: SagaTestKit, store: Any
) -> None:
    world = World()
    saga = order(world, Sleep(HOUR))
    async with still.coordinator([saga]) as c:
        await c.start(saga, "o1")
        await still.clock.wait_idle()
    await still.clock.advance(10 * MINUTE)

    still.autojump = True
    async with still.coordinator([saga], leases=QUICK) as c:
        # Not claimed on entry: it is not due, it sleeps on in the store.
        assert "o1" not in c._actors
        assert (await store.instance("o1")).owner is None
        outcome = await c.handle("o1").outcome()
        history = await c.history("o1")
    assert outcome.status is Status.COMPLETED
    assert ended(history, "wait") == START + HOUR  # not before, not after
    assert world.calls[-1] == ("action", "charge")


async def test_a_node_restarted_after_a_crash_wakes_its_sleeping_instance_on_time(
    still: SagaTestKit, store: Any
) -> None:
    world = World()
    saga = order(world, Sleep(HOUR))
    async with still.coordinator([saga], node="n1") as c:
        await c.start(saga, "o1")
        await still.clock.wait_idle()
    # The node died holding the lease (no graceful exit hands it back): as it left it.
    taken = await store.acquire("o1", "n1", lease=600.0)
    assert taken is not None and taken.owner == "n1"

    # The same node comes back ("a restarted process takes its instances back at once").
    async with still.coordinator([saga], node="n1") as c:
        await still.clock.wait_idle()
        await still.clock.advance(HOUR)
        status = await c.status("o1")
        row = await store.instance("o1")
    assert (status, row.owner) == (Status.COMPLETED, None)


# -- passivation ---------------------------------------------------------------------------


async def test_an_idle_actor_leaves_memory_after_passivate_after_and_a_signal_brings_it_back(
    still: SagaTestKit, store: Any
) -> None:
    world = World()
    saga = order(world, APPROVAL)
    async with still.coordinator([saga], passivate_after=MINUTE) as c:
        handle = await c.start(saga, "o1")
        await still.clock.wait_idle()
        assert "o1" in c._actors
        assert (await store.instance("o1")).owner == "test"

        await still.clock.advance(MINUTE - 1)
        assert "o1" in c._actors  # not idle long enough
        await still.clock.advance(1)
        assert "o1" not in c._actors
        row = await store.instance("o1")
        assert (row.owner, row.lease_until, row.wake_at) == (None, None, None)

        # No timer: only a message can wake it, however long it sleeps.
        await still.clock.advance(DAY)
        assert "o1" not in c._actors
        assert (await store.instance("o1")).owner is None
        assert c._keeper.claimed == 0

        await handle.signal("approve", {"by": "ann"})
        outcome = await handle.outcome()
        history = await handle.history()
    assert outcome.status is Status.COMPLETED
    assert outcome.results["wait"] == {"by": "ann"}
    assert world.seen["charge"]["wait"] == {"by": "ann"}
    assert ended(history, "wait") == START + MINUTE + DAY
    assert (await store.instance("o1")).epoch == 2  # taken again, by the signal


async def test_passivate_after_none_keeps_the_actor(still: SagaTestKit, store: Any) -> None:
    saga = order(World(), APPROVAL)
    async with still.coordinator([saga], passivate_after=None) as c:
        await c.start(saga, "o1")
        await still.clock.wait_idle()
        await still.clock.advance(DAY)
        assert "o1" in c._actors
        assert (await store.instance("o1")).owner == "test"


# -- signals -------------------------------------------------------------------------------


async def test_a_signal_sent_before_the_wait_is_kept_and_taken(
    still: SagaTestKit, store: Any
) -> None:
    world = World()
    gate = Gate(world)
    saga = order(world, WaitForSignal("approve", timeout=HOUR), gate=gate)
    async with still.coordinator([saga]) as c:
        handle = await c.start(saga, "o1")
        await gate.entered.wait()
        await still.clock.wait_idle()
        await handle.signal("approve", "yes", message_id="early")
        await still.clock.wait_idle()
        assert (await handle.query()).signals == ("approve",)  # kept for the wait
        gate.release.set()
        outcome = await handle.outcome()
        history = await handle.history()
    assert outcome.results["wait"] == "yes"
    # Received while "hold" ran; taken as the wait began, with no time gone by.
    [received] = of(history, ev.SignalReceived)
    assert received.sequence < ended_at(history, "hold").sequence
    assert [(r.event.step, r.event.message_id) for r in of(history, ev.SignalConsumed)] == [
        ("wait", "early")
    ]
    assert ended(history, "wait") == START


async def test_a_signal_is_taken_once_per_message_id(still: SagaTestKit, store: Any) -> None:
    world = World()
    gate = Gate(world)
    saga = order(world, APPROVAL, gate=gate)
    async with still.coordinator([saga]) as c:
        handle = await c.start(saga, "o1")
        await gate.entered.wait()
        await still.clock.wait_idle()
        for name, payload, message_id in [
            ("approve", 1, "cb-1"),
            ("approve", 2, "cb-1"),  # the callback came twice
            ("note", "a", None),  # no id: each call is a new signal
            ("note", "a", None),
        ]:
            await handle.signal(name, payload, message_id=message_id)
            await still.clock.wait_idle()  # recorded before the gate opens
        gate.release.set()
        outcome = await handle.outcome()
        await handle.signal("approve", 3, message_id="cb-1")  # after the end: a repeat
        history = await handle.history()
    assert outcome.results["wait"] == 1
    received = [(r.event.name, r.event.payload) for r in of(history, ev.SignalReceived)]
    assert received == [("approve", 1), ("note", "a"), ("note", "a")]
    assert len({r.event.message_id for r in of(history, ev.SignalReceived)}) == 3


async def test_a_signal_to_a_finished_saga_is_rejected_unless_it_repeats_one_it_took(
    still: SagaTestKit, store: Any
) -> None:
    saga = order(World(), APPROVAL)
    async with still.coordinator([saga]) as c:
        handle = await c.start(saga, "o1")
        await still.clock.wait_idle()
        await handle.signal("approve", message_id="cb-1")
        assert (await handle.outcome()).status is Status.COMPLETED
        before = await handle.history()

        await handle.signal("approve", message_id="cb-1")  # a repeat: no error
        for kw in ({"message_id": "cb-2"}, {}):
            with pytest.raises(CommandRejected) as info:
                await handle.signal("approve", **kw)
            assert (info.value.saga_id, info.value.command, info.value.status) == (
                "o1",
                "signal",
                "completed",
            )
        # Nor the repeat of one it never took, even with the name it waited for.
        with pytest.raises(CommandRejected):
            await handle.signal("other", message_id="cb-3")
        assert await handle.history() == before
    assert [m.message_id for m in await store.inbox(saga_id="o1")] == []


async def test_bad_signals_are_refused_before_anything_is_written(store: Any) -> None:
    kit = SagaTestKit(store, autojump=False)
    saga = order(World(), APPROVAL)
    async with kit.coordinator([saga]) as c:
        await c.start(saga, "o1")
        await kit.clock.wait_idle()
        before = await c.history("o1")
        with pytest.raises(NotFoundError):
            await c.signal("nobody", "approve")
        with pytest.raises(InvalidSagaIdError):
            await c.signal("", "approve")
        for name in ("", "no spaces", "x" * 129, 7):
            with pytest.raises(ValueError, match="signal name"):
                await c.signal("o1", name)  # type: ignore[arg-type]
        for message_id in ("", "x" * 201, "new\nline", 7):
            with pytest.raises(ValueError, match="message_id"):
                await c.signal("o1", "approve", message_id=message_id)  # type: ignore[arg-type]
        for payload in (object(), {"when": {1, 2}}, float("nan"), {1: "x"}):
            with pytest.raises(PayloadError, match="payload"):
                await c.signal("o1", "approve", payload)
        assert await c.history("o1") == before
        assert list(await store.inbox()) == []
        assert (await c.query("o1")).status is Status.RUNNING


async def test_a_signal_is_kept_by_its_inbox_key_per_instance(store: Any) -> None:
    # One message id on two instances is two signals; the key has a fixed length.
    assert signal_key("o1", "cb") != signal_key("o2", "cb")
    assert signal_key("o1", "cb") == signal_key("o1", "cb")
    assert len(signal_key("o" * 200, "m" * 200)) == len(signal_key("o", "m"))
    kit = SagaTestKit(store, autojump=False)
    saga = order(World(), APPROVAL)
    async with kit.coordinator([saga]) as c:
        for saga_id in ("o1", "o2"):
            handle = await c.start(saga, saga_id)
            await handle.signal("approve", saga_id, message_id="cb")
            await kit.clock.wait_idle()
        for saga_id in ("o1", "o2"):
            assert (await c.handle(saga_id).outcome()).results["wait"] == saga_id


class _HeldNextWake(MemoryStore):
    """The reference store, whose next ``next_wake`` waits until the test lets it go on:
    it holds the keeper's beat after its delivery, before its next wait."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.entered = anyio.Event()
        self.go_on = anyio.Event()

    async def next_wake(self, *, sagas: Collection[tuple[str, int]], after: float) -> float | None:
        if self.armed:
            self.armed = False
            self.entered.set()
            await self.go_on.wait()
        return await super().next_wake(sagas=sagas, after=after)


async def test_a_signal_sent_while_the_keeper_is_busy_is_delivered_without_a_poll() -> None:
    store = _HeldNextWake()
    kit = SagaTestKit(store, autojump=False)
    saga = order(World(), APPROVAL)
    async with kit.coordinator([saga], passivate_after=None) as c:
        for saga_id in ("o1", "o2"):
            await c.start(saga, saga_id)
        await kit.clock.wait_idle()
        store.armed = True
        await c.signal("o1", "approve")
        await store.entered.wait()  # the beat delivered it, and has not gone back to wait
        await c.signal("o2", "approve")  # durable; its wake-up comes now
        store.go_on.set()
        await kit.clock.wait_idle()
        statuses = [await c.status(saga_id) for saga_id in ("o1", "o2")]
    assert statuses == [Status.COMPLETED, Status.COMPLETED]


# -- timeouts ------------------------------------------------------------------------------


async def test_a_timeout_that_compensates_undoes_in_reverse_order(kit: SagaTestKit) -> None:
    world = World()
    saga = order(world, WaitForSignal("approve", timeout=DAY))
    async with kit.coordinator([saga]) as c:
        outcome = await (await c.start(saga, "o1")).outcome()
        history = await c.history("o1")
    assert outcome.status is Status.COMPENSATED
    assert outcome.reason is not None and "'approve'" in outcome.reason
    assert "saga.SignalTimeout" in outcome.reason
    [failed] = of(history, ev.StepFailed)
    assert (failed.event.step, failed.event.error.type) == ("wait", "saga.SignalTimeout")
    assert failed.recorded_at == START + DAY
    assert compensations(history) == ["hold", "reserve"]
    assert world.calls[2:] == UNDONE
    assert ("action", "charge") not in world.calls


async def test_a_timeout_that_continues_hands_on_its_timeout_result(kit: SagaTestKit) -> None:
    world = World()
    wait = WaitForSignal(
        "approve", timeout=DAY, on_timeout=OnTimeout.CONTINUE, timeout_result={"auto": True}
    )
    saga = order(world, wait)
    async with kit.coordinator([saga]) as c:  # passivated after a minute meanwhile
        outcome = await (await c.start(saga, "o1")).outcome()
        history = await c.history("o1")
        claimed = c._keeper.claimed
    assert outcome.status is Status.COMPLETED
    assert outcome.results["wait"] == {"auto": True}
    assert world.seen["charge"]["wait"] == {"auto": True}
    assert ended(history, "wait") == START + DAY
    assert claimed == 1  # its timeout woke it in the store


async def test_a_signal_before_the_timeout_wins_and_the_timer_is_ignored(
    still: SagaTestKit, store: Any
) -> None:
    world = World()
    saga = order(world, WaitForSignal("approve", timeout=HOUR))
    async with still.coordinator([saga], passivate_after=None) as c:
        handle = await c.start(saga, "o1")
        await still.clock.wait_idle()
        await still.clock.advance(HOUR - 1)
        await handle.signal("approve", "in time")
        await still.clock.wait_idle()
        await still.clock.advance(DAY)  # past the deadline: its timer fires, stale
        outcome = await handle.outcome()
        history = await handle.history()
    assert outcome.results["wait"] == "in time"
    assert ended(history, "wait") == START + HOUR - 1
    assert of(history, ev.StepFailed) == []


# -- cancel, suspend, resume -----------------------------------------------------------------


@pytest.mark.parametrize("passivated", [False, True], ids=["in-memory", "passivated"])
@pytest.mark.parametrize("wait", [Sleep(DAY), APPROVAL], ids=["sleep", "signal"])
async def test_cancel_while_waiting_compensates_in_reverse_order(
    still: SagaTestKit, store: Any, wait: Wait, passivated: bool
) -> None:
    world = World()
    saga = order(world, wait)
    async with still.coordinator([saga], passivate_after=MINUTE) as c:
        handle = await c.start(saga, "o1")
        await still.clock.wait_idle()
        if passivated:
            await still.clock.advance(MINUTE)
        assert ("o1" in c._actors) is not passivated
        await c.cancel("o1", "customer left")
        outcome = await handle.outcome()
        history = await handle.history()
    assert outcome.status is Status.CANCELLED
    assert outcome.reason == "customer left"
    [failed] = of(history, ev.StepFailed)
    assert (failed.event.step, failed.event.error.type) == ("wait", "saga.Cancelled")
    assert compensations(history) == ["hold", "reserve"]
    assert world.calls == [("action", "reserve"), ("action", "hold"), *UNDONE]
    row = await store.instance("o1")
    assert (row.status, row.owner, row.wake_at) == ("cancelled", None, None)


async def test_a_signal_while_suspended_is_taken_after_resume(
    still: SagaTestKit, store: Any
) -> None:
    world = World()
    saga = order(world, APPROVAL)
    async with still.coordinator([saga], leases=QUICK) as c:
        handle = await c.start(saga, "o1")
        await still.clock.wait_idle()
        # No public suspend: an operator's suspend is this command (the supervisor parks
        # crashing instances the same way).
        await c._command("o1", msg.SuspendSaga(reason="ops look at it"))
        await still.clock.wait_idle()
        assert await handle.status() is Status.SUSPENDED
        assert "o1" not in c._actors

        await handle.signal("approve", "while parked", message_id="p1")
        await still.clock.wait_idle()
        view = await handle.query()
        assert (view.status, view.completed) == (Status.SUSPENDED, ("reserve", "hold"))

        await c.resume("o1")
        outcome = await handle.outcome()
        history = await handle.history()
    assert outcome.status is Status.COMPLETED
    assert outcome.results["wait"] == "while parked"
    types = [type(r.event).__name__ for r in history]
    assert types.index("SagaResumed") < types.index("SignalConsumed")
    assert world.calls[-1] == ("action", "charge")


# -- queries ------------------------------------------------------------------------------


async def test_query_shows_a_running_a_waiting_and_a_passivated_instance(
    still: SagaTestKit, store: Any
) -> None:
    world = World()
    gate = Gate(world)
    saga = order(world, WaitForSignal("approve", timeout=HOUR), gate=gate)
    async with still.coordinator([saga], passivate_after=MINUTE) as c:
        handle = await c.start(saga, "o1")
        await gate.entered.wait()
        running = await handle.query()
        assert (running.status, running.in_progress, running.waits) == (
            Status.RUNNING,
            ("hold",),
            (),
        )
        assert (running.completed, dict(running.results)) == (
            ("reserve",),
            {"reserve": {"stock": 1}},
        )

        gate.release.set()
        await still.clock.wait_idle()
        waiting = await handle.query()
        assert waiting.waits == (PendingWait(step="wait", signal="approve", until=START + HOUR),)
        assert (waiting.in_progress, waiting.completed) == (("wait",), ("reserve", "hold"))
        assert (waiting.saga, waiting.version, waiting.definition_registered) == ("order", 1, True)
        assert waiting.sequence == len(await handle.history())

        await still.clock.advance(MINUTE)
        assert "o1" not in c._actors
        passivated = await handle.query()
        assert passivated == waiting  # the same, replayed from the store
        # The query spawned no actor and took no lease.
        assert "o1" not in c._actors
        assert (await store.instance("o1")).owner is None

        await handle.signal("approve", "ok")
        done = await handle.outcome()
        final = await handle.query()
    assert done.status is Status.COMPLETED
    assert (final.status, final.waits, final.in_progress) == (Status.COMPLETED, (), ())
    assert final.results["wait"] == "ok"


async def test_query_of_an_unknown_or_foreign_instance(still: SagaTestKit, store: Any) -> None:
    saga = order(World(), APPROVAL)
    other = SagaDefinition("other", [Step(name="only", wait=Sleep(1.0))])
    async with still.coordinator([saga], node="a") as a:
        await a.start(saga, "o1")
        await still.clock.wait_idle()
        with pytest.raises(NotFoundError):
            await a.query("nobody")
        with pytest.raises(InvalidSagaIdError):
            await a.query("")
        async with still.coordinator([other], node="b") as b:
            view = await b.query("o1")  # a runs it; b does not even know its definition
            assert "o1" not in b._actors
    assert (view.status, view.definition_registered, view.waits) == (Status.RUNNING, False, ())
    assert view.in_progress == ("wait",)  # still shown as an attempt in flight


# -- two nodes on one database --------------------------------------------------------------


@asynccontextmanager
async def two_stores(kind: str, tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    """Two stores on one database, as two processes open it."""
    a: Any
    b: Any
    async with AsyncExitStack() as stack:
        if kind == "sqlite":
            a = await stack.enter_async_context(SQLiteStore(tmp_path / "shared.db"))
            b = await stack.enter_async_context(SQLiteStore(tmp_path / "shared.db"))
        else:
            dsn, schema = await stack.enter_async_context(postgres_schema())
            a = await stack.enter_async_context(postgres_store(dsn, schema))
            b = await stack.enter_async_context(postgres_store(dsn, schema))
        yield a, b


SHARED = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("kind", SHARED)
async def test_a_signal_through_another_node_wakes_an_instance_the_first_passivated(
    kind: str, tmp_path: Path
) -> None:
    world = World()
    saga = order(world, APPROVAL)
    async with two_stores(kind, tmp_path) as (store_a, store_b):
        kit_a = SagaTestKit(store_a, autojump=False)
        kit_b = SagaTestKit(store_b, clock=kit_a.clock, autojump=False)
        clock = kit_a.clock
        async with (
            kit_a.coordinator([saga], node="a", passivate_after=MINUTE) as a,
            kit_b.coordinator([saga], node="b") as b,
        ):
            await a.start(saga, "o1")
            await clock.wait_idle()
            await clock.advance(MINUTE)
            assert "o1" not in a._actors
            assert (await store_b.instance("o1")).owner is None

            await b.signal("o1", "approve", "via b", message_id="cb")
            outcome = await b.handle("o1").outcome()
            history = await b.history("o1")
    assert outcome.status is Status.COMPLETED
    assert outcome.results["wait"] == "via b"
    assert world.seen["charge"]["wait"] == "via b"
    assert [r.event.message_id for r in of(history, ev.SignalReceived)] == ["cb"]


@pytest.mark.parametrize("kind", SHARED)
async def test_a_signal_through_another_node_reaches_the_live_owner_through_the_inbox(
    kind: str, tmp_path: Path
) -> None:
    world = World()
    saga = order(world, APPROVAL)
    async with two_stores(kind, tmp_path) as (store_a, store_b):
        kit_a = SagaTestKit(store_a, autojump=False)
        kit_b = SagaTestKit(store_b, clock=kit_a.clock, autojump=False)
        async with (
            kit_a.coordinator([saga], node="a", passivate_after=None, leases=QUICK) as a,
            kit_b.coordinator([saga], node="b", leases=QUICK) as b,
        ):
            handle = await a.start(saga, "o1")
            await kit_a.clock.wait_idle()
            await b.signal("o1", "approve", "via the inbox")
            assert "o1" not in b._actors  # a holds it: b only leaves the message
            outcome = await handle.outcome()
            row = await store_a.instance("o1")
    assert outcome.results["wait"] == "via the inbox"
    assert row.epoch == 1  # a held it throughout
