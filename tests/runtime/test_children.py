"""Child sagas end to end, on every store and on asyncio and trio."""

from __future__ import annotations

from typing import Any

import pytest

from saga import (
    ChildSaga,
    Coordinator,
    SagaDefinition,
    Status,
    Step,
    StepContext,
    WaitForSignal,
)
from saga import events as ev
from saga.errors import DefinitionError, NonRetryableError
from saga.testing import SagaTestKit

pytestmark = pytest.mark.anyio


class World:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []  # (saga_id, phase, step)

    async def act(self, ctx: StepContext) -> str:
        self.calls.append((ctx.saga_id, "action", ctx.step))
        return ctx.step

    async def undo(self, ctx: StepContext) -> None:
        self.calls.append((ctx.saga_id, "undo", ctx.step))

    async def refuse(self, ctx: StepContext) -> None:
        raise NonRetryableError("no courier")


def sagas(world: World) -> list[SagaDefinition]:
    def step(name: str) -> Step:
        return Step(name=name, action=world.act, compensation=world.undo)

    return [
        SagaDefinition("ship", [step("pack"), Step(name="label", action=world.act)]),
        SagaDefinition("no_ship", [step("pack"), Step(name="label", action=world.refuse)]),
        SagaDefinition(
            "approved_ship",
            [
                step("pack"),
                Step(name="approve", wait=WaitForSignal("go")),
                Step(name="courier", wait=ChildSaga("ship")),
            ],
        ),
        SagaDefinition(
            "order",
            [
                step("reserve"),
                Step(
                    name="ship",
                    wait=ChildSaga("ship", input=lambda ctx: {"order": ctx.saga_id}),
                ),
                Step(name="notify", action=world.act),
            ],
        ),
        SagaDefinition(
            "doomed_order", [step("reserve"), Step(name="ship", wait=ChildSaga("no_ship"))]
        ),
        SagaDefinition(
            "long_order", [step("reserve"), Step(name="ship", wait=ChildSaga("approved_ship"))]
        ),
        SagaDefinition("middle", [step("plan"), Step(name="sub", wait=ChildSaga("approved_ship"))]),
        SagaDefinition(
            "deep_order", [step("reserve"), Step(name="ship", wait=ChildSaga("middle"))]
        ),
    ]


async def test_a_child_completes_and_its_parent_goes_on_with_its_results(store: Any) -> None:
    world = World()
    async with Coordinator(store, sagas(world)) as coordinator:
        outcome = await (await coordinator.start("order", "o1")).outcome()
        child = await coordinator.history("o1/ship")
    assert outcome.status is Status.COMPLETED
    assert outcome.results["ship"] == {"pack": "pack", "label": "label"}
    started = child[0].event
    assert isinstance(started, ev.SagaStarted)
    assert started.input == {"order": "o1"}
    assert started.parent == ev.ParentRef(saga_id="o1", step="ship")


async def test_a_child_that_fails_makes_its_parent_compensate(store: Any) -> None:
    world = World()
    async with Coordinator(store, sagas(world)) as coordinator:
        outcome = await (await coordinator.start("doomed_order", "o1")).outcome()
    assert outcome.status is Status.COMPENSATED
    assert outcome.reason is not None and "child 'o1/ship' ended compensated" in outcome.reason
    assert [c for c in world.calls if c[1] == "undo"] == [
        ("o1/ship", "undo", "pack"),
        ("o1", "undo", "reserve"),
    ]


async def test_a_rebuilt_parent_finds_its_child_instead_of_starting_another(store: Any) -> None:
    world = World()
    kit = SagaTestKit(store)
    async with kit.coordinator(sagas(world), node="a") as a:
        await a.start("long_order", "o1")
        await kit.clock.wait_idle()
        assert (await a.query("o1/ship")).waits[0].signal == "go"
    # A new coordinator rebuilds the parent from history: it asks for its child again.
    async with kit.coordinator(sagas(world), node="b") as b:
        await b.recover()
        await kit.clock.wait_idle()
        await b.signal("o1/ship", "go")
        outcome = await b.handle("o1").outcome()
    assert outcome.status is Status.COMPLETED
    ids = [sid for sid, phase, step in world.calls if step == "pack"]
    assert ids == ["o1/ship", "o1/ship/courier"]  # each child started once


async def test_cancel_cascades_to_children_and_grandchildren(store: Any) -> None:
    world = World()
    kit = SagaTestKit(store)
    async with kit.coordinator(sagas(world)) as coordinator:
        handle = await coordinator.start("long_order", "o1")
        await kit.clock.wait_idle()  # the child waits for its signal
        await coordinator.cancel("o1", "customer")
        parent = await handle.outcome()
        child = await coordinator.handle("o1/ship").outcome()
        parent_history = [e.event for e in await coordinator.history("o1")]
    assert (parent.status, child.status) == (Status.CANCELLED, Status.CANCELLED)
    assert child.reason == "its parent stopped: customer"
    assert ("o1/ship", "undo", "pack") in world.calls
    assert ("o1", "undo", "reserve") in world.calls
    # The parent ended only once its child's cancel was recorded.
    names = [type(e).__name__ for e in parent_history]
    assert names.index("ChildCancelDelivered") < names.index("SagaCancelled")
    # The grandchild was never started: the child turned back while it waited.
    assert await store.instance("o1/ship/courier") is None


async def test_cancel_reaches_a_running_grandchild(store: Any) -> None:
    world = World()
    kit = SagaTestKit(store)
    async with kit.coordinator(sagas(world)) as coordinator:
        handle = await coordinator.start("deep_order", "o1")
        await kit.clock.wait_idle()  # the grandchild waits for its signal
        assert (await coordinator.query("o1/ship/sub")).status is Status.RUNNING
        await coordinator.cancel("o1", "customer")
        outcomes = [await handle.outcome()] + [
            await coordinator.handle(sid).outcome() for sid in ("o1/ship", "o1/ship/sub")
        ]
    assert [o.status for o in outcomes] == [Status.CANCELLED] * 3
    undone = [(sid, step) for sid, phase, step in world.calls if phase == "undo"]
    assert sorted(undone) == [("o1", "reserve"), ("o1/ship", "plan"), ("o1/ship/sub", "pack")]


def test_a_child_saga_must_be_registered_with_its_parent() -> None:
    world = World()
    order = next(s for s in sagas(world) if s.name == "order")
    with pytest.raises(DefinitionError, match="its child saga 'ship' is not registered"):
        Coordinator(None, [order])  # type: ignore[arg-type]
