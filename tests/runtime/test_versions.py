"""Versions side by side: an instance stays on its version and waits for a process that has it."""

from __future__ import annotations

from typing import Any

import pytest

from saga import SagaDefinition, Sleep, Status, Step, StepContext, WaitForSignal
from saga.errors import UnknownSagaError
from saga.testing import SagaTestKit

pytestmark = pytest.mark.anyio


async def v1_step(ctx: StepContext) -> str:
    return "v1"


async def v2_step(ctx: StepContext) -> str:
    return "v2"


V1 = SagaDefinition("order", [Step(name="work", action=v1_step)], version=1)
V2 = SagaDefinition(
    "order",
    [
        Step(name="settle", wait=Sleep(60.0)),
        Step(name="approval", wait=WaitForSignal("approve")),
        Step(name="work", action=v2_step),
    ],
    version=2,
)


async def test_an_instance_waits_for_a_process_that_has_its_version(store: Any) -> None:
    kit = SagaTestKit(store, autojump=False)
    async with kit.coordinator([V1, V2], node="new") as new:
        handle = await new.start("order", "s1")  # the newest: v2
        await kit.clock.wait_idle()
        assert (await handle.query()).version == 2
    await kit.clock.advance(120.0)  # its sleep is over: it is due, and nobody holds it

    async with kit.coordinator([V1], node="old") as old:
        assert await old.recover() == 0  # not a version this process can drive
        view = await old.query("s1")
        assert (view.status, view.version, view.definition_registered) == (
            Status.RUNNING,
            2,
            False,
        )
        assert view.waits == ()  # without the definition, waits cannot be told apart
        # A signal is kept for it; this process does not take the instance to deliver it.
        await old.signal("s1", "approve", {"ok": True}, message_id="m1")
        assert "s1" not in old._actors
        row = await store.instance("s1")
        assert row is not None and row.owner is None
        with pytest.raises(UnknownSagaError):
            await old.cancel("s1")
        # New instances here take the newest version this process has.
        assert (await (await old.start("order", "s2")).outcome()).results == {"work": "v1"}

    async with kit.coordinator([V2], node="newer") as newer:
        await kit.clock.wait_idle()
        outcome = await newer.handle("s1").outcome()
    assert outcome.status is Status.COMPLETED
    assert outcome.results == {"settle": None, "approval": {"ok": True}, "work": "v2"}
