"""Child sagas in the decider: deterministic ids, outcomes, and cancels that reach them;
and a timer that fires early."""

from __future__ import annotations

from saga import ChildSaga, ParentClose, Sleep, Step
from saga import events as ev
from saga._core import messages as msg
from saga._core.decide import child_id, outstanding, wake_at
from saga._core.effects import ArmTimer, CancelChild, StartChild
from saga._core.fit import divergence
from saga._core.state import Status
from tests.core.test_decide import Instance, compensatable, plain


def order(policy: ParentClose = ParentClose.CANCEL) -> Instance:
    return Instance(
        compensatable("reserve"),
        Step(name="ship", wait=ChildSaga("shipping", on_parent_close=policy)),
        plain("notify"),
        saga_id="o-1",
    )


def finished(status: str, results: object = None, reason: str | None = None) -> msg.ChildFinished:
    return msg.ChildFinished(
        step="ship", child_id="o-1/ship", status=status, results=results, reason=reason
    )


def test_a_child_step_starts_its_child_under_a_deterministic_id() -> None:
    saga = order()
    started = saga.ok("reserve")
    assert child_id("o-1", "ship") == "o-1/ship"
    assert started.effects == (StartChild(step="ship", attempt=1, child_id="o-1/ship"),)
    # Rebuilt after a crash, it asks again (a no-op if the child exists): never a new id.
    assert outstanding(saga.definition, saga.state, 0.0) == started.effects
    assert wake_at(saga.definition, saga.state, 0.0) is None  # the child's end wakes it


def test_the_child_completing_completes_the_step_with_its_results() -> None:
    saga = order()
    saga.ok("reserve")
    went_on = saga.send(finished("completed", {"label": "L1"}))
    assert [type(e).__name__ for e in went_on.events] == ["StepCompleted", "StepScheduled"]
    assert saga.state.results["ship"] == {"label": "L1"}
    assert saga.send(finished("completed", {"label": "L1"})).events == ()  # a repeat
    assert divergence(saga.definition, saga.history) is None


def test_a_child_ending_otherwise_fails_the_step_and_the_parent_compensates() -> None:
    saga = order()
    saga.ok("reserve")
    failed = saga.send(finished("compensated", reason="no courier"))
    step_failed = failed.events[0]
    assert isinstance(step_failed, ev.StepFailed)
    assert step_failed.error.type == "saga.ChildFailed"
    assert "'o-1/ship' ended compensated: no courier" in step_failed.error.message
    assert saga.state.status is Status.COMPENSATING
    saga.undone("reserve")
    assert saga.state.status is Status.COMPENSATED


def test_cancel_reaches_the_child_before_the_parent_may_end() -> None:
    saga = order()
    saga.ok("reserve")
    cancel = saga.send(msg.CancelSaga(reason="customer"))
    assert ev.ChildCancelRequested(step="ship", child_id="o-1/ship") in cancel.events
    assert CancelChild(child_id="o-1/ship", reason="its parent stopped: customer") in cancel.effects
    saga.undone("reserve")
    assert saga.state.status is Status.COMPENSATING  # the child's cancel is not delivered yet
    assert saga.state.cancelling == ("o-1/ship",)
    # A crash now: recovery delivers it again, and the instance is due at once.
    assert CancelChild(child_id="o-1/ship", reason="its parent stopped") in outstanding(
        saga.definition, saga.state, 0.0
    )
    assert wake_at(saga.definition, saga.state, 5.0) == 5.0
    saga.send(msg.ChildCancelDelivered(child_id="o-1/ship"))
    assert saga.state.status is Status.CANCELLED
    # The child ended, cancelled: its message finds the parent finished, and changes nothing.
    assert saga.send(finished("cancelled", reason="its parent stopped")).events == ()


def test_an_abandoned_child_is_left_running() -> None:
    saga = order(ParentClose.ABANDON)
    saga.ok("reserve")
    cancel = saga.send(msg.CancelSaga(reason="customer"))
    assert not any(isinstance(e, CancelChild) for e in cancel.effects)
    saga.undone("reserve")
    assert saga.state.status is Status.CANCELLED


def test_a_timer_that_fires_early_is_armed_again() -> None:
    saga = Instance(Step(name="nap", wait=Sleep(60.0)), plain("after"))
    early = saga.send(msg.FireTimer(step="nap", attempt=1), now=59.0)
    assert early.events == ()
    assert early.effects == (ArmTimer(step="nap", attempt=1, at=60.0),)
    on_time = saga.send(msg.FireTimer(step="nap", attempt=1), now=60.0)
    assert isinstance(on_time.events[0], ev.StepCompleted)
