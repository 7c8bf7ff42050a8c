"""Continue-as-new in the decider: the next run's id, its start, and a cancel racing it."""

from __future__ import annotations

import pytest

from saga import ContinueAsNew, SagaDefinition, Step
from saga import events as ev
from saga._core import messages as msg
from saga._core.decide import next_run_id, outstanding, wake_at
from saga._core.effects import CancelChild, StartNext
from saga._core.state import Status
from saga.errors import DefinitionError
from tests.core.test_decide import Instance, act, compensatable


def looping() -> Instance:
    return Instance(compensatable("poll"), Step(name="again", wait=ContinueAsNew()), saga_id="p#2")


@pytest.mark.parametrize(
    ("run", "following"),
    [("p", "p#2"), ("p#2", "p#3"), ("p#9", "p#10"), ("p#x", "p#x#2"), ("p#0", "p#0#2")],
)
def test_runs_are_numbered(run: str, following: str) -> None:
    assert next_run_id(run) == following


def test_the_last_step_starts_the_next_run_then_the_run_completes() -> None:
    saga = looping()
    scheduled = saga.ok("poll")
    assert scheduled.effects == (StartNext(step="again", attempt=1, next_id="p#3"),)
    # Rebuilt before it heard back: it asks again (a no-op if the run exists); it is due.
    assert outstanding(saga.definition, saga.state, 0.0) == scheduled.effects
    assert wake_at(saga.definition, saga.state, 7.0) == 7.0
    assert saga.send(msg.NextStarted(step="again", next_id="p#4")).events == ()  # not ours
    done = saga.send(msg.NextStarted(step="again", next_id="p#3"))
    assert done.events[0] == ev.SagaContinued(next_id="p#3")
    assert saga.state.status is Status.COMPLETED
    assert saga.state.continued_as == "p#3"
    assert saga.state.results["again"] == {"continued_as": "p#3"}


def test_a_cancel_while_the_next_run_starts_cancels_that_run_too() -> None:
    saga = looping()
    saga.ok("poll")
    cancel = saga.send(msg.CancelSaga(reason="stop"))
    assert ev.ChildCancelRequested(step="again", child_id="p#3") in cancel.events
    assert CancelChild(child_id="p#3", reason="its parent stopped: stop") in cancel.effects
    saga.undone("poll")
    saga.send(msg.ChildCancelDelivered(child_id="p#3"))
    assert saga.state.status is Status.CANCELLED


def test_continue_as_new_is_the_last_step() -> None:
    with pytest.raises(DefinitionError, match="it is the last step"):
        SagaDefinition(
            "bad", [Step(name="again", wait=ContinueAsNew()), Step(name="x", action=act)]
        )
