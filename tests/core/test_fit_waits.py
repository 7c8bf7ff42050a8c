"""Rule 9 of the fit check: a step waits in the definition as the history shows it waited."""

from __future__ import annotations

import pytest

from saga import ChildSaga, SagaDefinition, Sleep, Step, WaitForSignal
from saga._core import messages as msg
from saga._core.fit import Rule, divergence
from tests.core.test_decide import Instance, compensatable, plain


def approved() -> Instance:
    saga = Instance(compensatable("reserve"), Step(name="approval", wait=WaitForSignal("go")))
    saga.ok("reserve")
    saga.send(msg.SignalSaga(name="go", payload={"ok": True}, message_id="m1"))
    return saga


def with_child() -> Instance:
    saga = Instance(compensatable("reserve"), Step(name="ship", wait=ChildSaga("shipping")))
    saga.ok("reserve")
    saga.send(msg.CancelSaga(reason="no"))
    return saga


@pytest.mark.parametrize(
    ("changed", "expects"),
    [
        (plain("approval"), "a step with an action"),
        (Step(name="approval", wait=Sleep(60)), "a sleep"),
        (Step(name="approval", wait=WaitForSignal("stop")), "a wait for signal 'stop'"),
    ],
)
def test_a_step_that_took_a_signal_must_still_wait_for_it(changed: Step, expects: str) -> None:
    saga = approved()
    assert divergence(saga.definition, saga.history) is None
    other = SagaDefinition("checkout", [saga.definition.steps[0], changed])
    found = divergence(other, saga.history)
    assert found is not None and found.rule is Rule.WAIT_KIND
    assert found.reason == (
        f"the history's step 'approval' took signal 'go', but the definition makes it {expects}"
    )


def test_a_step_whose_child_was_cancelled_must_still_start_a_child() -> None:
    saga = with_child()
    assert divergence(saga.definition, saga.history) is None
    other = SagaDefinition("checkout", [saga.definition.steps[0], plain("ship")])
    found = divergence(other, saga.history)
    assert found is not None and found.rule is Rule.WAIT_KIND
    assert "'ship' cancelled its child" in found.reason
