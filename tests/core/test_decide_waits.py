"""The decider's waits: durable sleeps, signal waits and their timeouts, signals, wake-ups.

One example per path, read top to bottom like a history; every transition is checked to
replay to the state the decider handed back (see ``Instance.send``).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from saga._core import events as ev
from saga._core import messages as msg
from saga._core.decide import Decision, outstanding, wake_at
from saga._core.definition import (
    OnTimeout,
    RetryPolicy,
    SagaDefinition,
    Sleep,
    Step,
    StepKind,
    WaitForSignal,
)
from saga._core.effects import AbortAttempt, ArmTimer, Finish
from saga._core.events import EVENT_TYPES
from saga._core.state import Status
from saga.errors import CommandRejected, DefinitionError
from tests.core.test_decide import (
    ACTION,
    COMPENSATION,
    NO_JITTER,
    Instance,
    act,
    compensatable,
    pivot,
    plain,
    retriable,
    undo,
)


def sleep(name: str, seconds: float, **kwargs: Any) -> Step:
    return Step(name=name, wait=Sleep(seconds), **kwargs)


def wait_for(name: str, signal: str = "approve", **kwargs: Any) -> Step:
    kind = kwargs.pop("kind", StepKind.COMPENSATABLE)
    return Step(name=name, wait=WaitForSignal(signal, **kwargs), kind=kind)


def signal(name: str = "approve", payload: Any = None, message_id: str = "m1") -> msg.SignalSaga:
    return msg.SignalSaga(name=name, payload=payload, message_id=message_id)


def fire(step: str, attempt: int = 1) -> msg.FireTimer:
    return msg.FireTimer(step=step, attempt=attempt)


def unchanged(saga: Instance, message: msg.Message, now: float = 0.0) -> None:
    """``message`` decides nothing: no event, no effect, the same state."""
    before = saga.state
    assert saga.send(message, now) == Decision((), (), before)


# -- sleeps ----------------------------------------------------------------------------


def test_a_sleep_records_its_end_and_arms_a_timer_for_it() -> None:
    saga = Instance(compensatable("reserve"), sleep("cool-off", 30.0), plain("charge"))
    scheduled = saga.ok("reserve", now=5.0)
    assert scheduled.events == (
        ev.StepCompleted(step="reserve", attempt=1, result=None),
        ev.StepScheduled(step="cool-off", attempt=1, run_after=35.0),
    )
    # A timer, not an attempt: a waiting step has no action to run.
    assert scheduled.effects == (ArmTimer(step="cool-off", attempt=1, at=35.0),)
    assert wake_at(saga.definition, saga.state, 6.0) == 35.0

    woke = saga.send(fire("cool-off"), now=35.0)
    assert woke.events == (
        ev.StepCompleted(step="cool-off", attempt=1, result=None),
        ev.StepScheduled(step="charge", attempt=1),
    )
    assert woke.effects == (saga.run("charge"),)


def test_a_saga_may_start_with_a_sleep_and_end_with_one() -> None:
    saga = Instance(sleep("first", 10.0), sleep("last", 20.0))
    assert saga.first.events[1:] == (ev.StepScheduled(step="first", attempt=1, run_after=10.0),)
    assert saga.first.effects == (ArmTimer(step="first", attempt=1, at=10.0),)
    second = saga.send(fire("first"), now=10.0)
    assert second.effects == (ArmTimer(step="last", attempt=1, at=30.0),)
    last = saga.send(fire("last"), now=30.0)
    assert last.events[-1] == ev.SagaCompleted()
    assert last.effects == (Finish(status=Status.COMPLETED),)
    assert saga.state.results == {"first": None, "last": None}


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(fire("nap", 2), id="wrong-attempt"),
        pytest.param(fire("charge"), id="not-a-waiting-step"),
        pytest.param(fire("reserve"), id="done-already"),
        pytest.param(fire("nope"), id="unknown-step"),
    ],
)
def test_a_timer_of_no_wait_in_flight_decides_nothing(message: msg.FireTimer) -> None:
    saga = Instance(compensatable("reserve"), sleep("nap", 5.0), plain("charge"))
    saga.ok("reserve")
    unchanged(saga, message)


def test_a_timer_that_fires_twice_completes_the_sleep_once() -> None:
    saga = Instance(sleep("nap", 5.0), plain("charge"))
    saga.send(fire("nap"), now=5.0)
    unchanged(saga, fire("nap"), now=6.0)
    assert [e for e in saga.history if isinstance(e, ev.StepCompleted)] == [
        ev.StepCompleted(step="nap", attempt=1, result=None)
    ]


def test_a_timer_after_the_end_decides_nothing() -> None:
    saga = Instance(sleep("nap", 5.0))
    saga.send(fire("nap"), now=5.0)
    assert saga.state.status is Status.COMPLETED
    unchanged(saga, fire("nap"))


def test_a_waiting_step_may_be_the_pivot_or_come_after_it() -> None:
    saga = Instance(
        compensatable("reserve"),
        sleep("settle", 60.0, kind=StepKind.PIVOT),
        wait_for("ship", "shipped", kind=StepKind.RETRIABLE),
    )
    saga.ok("reserve")
    saga.send(fire("settle"), now=60.0)
    done = saga.send(signal("shipped", {"tracking": "X1"}), now=70.0)
    assert done.events[-2:] == (
        ev.StepCompleted(step="ship", attempt=1, result={"tracking": "X1"}),
        ev.SagaCompleted(),
    )


# -- signal waits ----------------------------------------------------------------------


def test_a_signal_wait_without_timeout_arms_nothing_and_takes_the_signal() -> None:
    saga = Instance(compensatable("reserve"), wait_for("approval"), plain("charge"))
    scheduled = saga.ok("reserve", now=3.0)
    assert scheduled.events[-1] == ev.StepScheduled(step="approval", attempt=1, run_after=None)
    assert scheduled.effects == ()  # only a signal can move it
    assert wake_at(saga.definition, saga.state, 4.0) is None

    took = saga.send(signal(payload={"by": "ann"}, message_id="cb-1"), now=9.0)
    assert took.events == (
        ev.SignalReceived(name="approve", payload={"by": "ann"}, message_id="cb-1"),
        ev.SignalConsumed(step="approval", message_id="cb-1"),
        ev.StepCompleted(step="approval", attempt=1, result={"by": "ann"}),
        ev.StepScheduled(step="charge", attempt=1),
    )
    assert took.effects == (saga.run("charge"),)
    assert saga.state.results["approval"] == {"by": "ann"}
    assert saga.state.signals == ()
    assert saga.state.signal_ids == frozenset({"cb-1"})


def test_a_signal_wait_with_a_timeout_arms_its_deadline() -> None:
    saga = Instance(wait_for("approval", timeout=60.0), plain("charge"))
    assert saga.first.events[-1] == ev.StepScheduled(step="approval", attempt=1, run_after=60.0)
    assert saga.first.effects == (ArmTimer(step="approval", attempt=1, at=60.0),)
    assert wake_at(saga.definition, saga.state, 1.0) == 60.0
    # The signal comes first: the timer that fires later is stale.
    saga.send(signal(), now=10.0)
    assert saga.state.completed == ("approval",)
    unchanged(saga, fire("approval"), now=60.0)


def test_a_signal_sent_before_the_wait_is_kept_and_taken_when_it_begins() -> None:
    saga = Instance(compensatable("reserve"), wait_for("approval", timeout=60.0), plain("charge"))
    early = saga.send(signal(payload="yes", message_id="early"), now=1.0)
    assert early.events == (ev.SignalReceived(name="approve", payload="yes", message_id="early"),)
    assert early.effects == ()
    assert [s.message_id for s in saga.state.signals] == ["early"]

    reached = saga.ok("reserve", now=2.0)
    assert reached.events == (
        ev.StepCompleted(step="reserve", attempt=1, result=None),
        ev.StepScheduled(step="approval", attempt=1, run_after=62.0),
        ev.SignalConsumed(step="approval", message_id="early"),
        ev.StepCompleted(step="approval", attempt=1, result="yes"),
        ev.StepScheduled(step="charge", attempt=1),
    )
    assert reached.effects == (saga.run("charge"),)  # no timer: the wait is over already
    assert saga.state.signals == ()


def test_a_repeated_message_id_is_dropped_before_and_after_it_was_taken() -> None:
    saga = Instance(compensatable("reserve"), wait_for("approval"), plain("charge"))
    saga.send(signal(payload=1, message_id="cb-1"))
    unchanged(saga, signal(payload=2, message_id="cb-1"))  # kept once, with its first payload
    assert [(s.message_id, s.payload) for s in saga.state.signals] == [("cb-1", 1)]
    saga.ok("reserve")
    assert saga.state.results["approval"] == 1
    unchanged(saga, signal(payload=3, message_id="cb-1"))  # taken already
    assert sum(isinstance(e, ev.SignalReceived) for e in saga.history) == 1


def test_signals_are_taken_by_name_oldest_first() -> None:
    saga = Instance(
        wait_for("first", "approve"),
        wait_for("second", "approve"),
        wait_for("third", "ship"),
    )
    saga.send(signal("ship", "s", message_id="m1"))  # not what "first" waits for: kept
    assert not saga.state.completed
    saga.send(signal("approve", "a1", message_id="m2"))
    assert saga.state.completed == ("first",)
    saga.send(signal("approve", "a2", message_id="m3"))
    # "third" found its signal waiting for it.
    assert saga.state.status is Status.COMPLETED
    assert saga.state.results == {"first": "a1", "second": "a2", "third": "s"}
    consumed = [(e.step, e.message_id) for e in saga.history if isinstance(e, ev.SignalConsumed)]
    assert consumed == [("first", "m2"), ("second", "m3"), ("third", "m1")]


def test_two_signals_of_one_name_feed_two_waits_in_arrival_order() -> None:
    saga = Instance(compensatable("reserve"), wait_for("one"), wait_for("two"))
    saga.send(signal(payload="a", message_id="x-late-id"))
    saga.send(signal(payload="b", message_id="a-early-id"))  # ids do not order them
    saga.ok("reserve")
    assert saga.state.status is Status.COMPLETED
    assert saga.state.results == {"reserve": None, "one": "a", "two": "b"}


def test_a_signal_that_nobody_waits_for_stays_until_the_end() -> None:
    saga = Instance(compensatable("reserve"), plain("charge"))
    saga.send(signal("unrelated", message_id="u1"))
    saga.ok("reserve")
    last = saga.ok("charge")
    assert last.events[-1] == ev.SagaCompleted()
    assert [s.name for s in saga.state.signals] == ["unrelated"]


def test_a_signal_to_a_finished_saga_is_rejected_even_a_repeat() -> None:
    saga = Instance(wait_for("approval"))
    saga.send(signal(message_id="m1"))
    assert saga.state.status is Status.COMPLETED
    for message_id in ("m2", "m1"):  # the coordinator answers repeats from the history
        with pytest.raises(CommandRejected) as info:
            saga.send(signal(message_id=message_id))
        assert (info.value.command, info.value.status) == ("signal", "completed")
    assert saga.state.sequence == len(saga.history)


# -- timeouts --------------------------------------------------------------------------


def test_a_timeout_that_compensates_fails_the_wait_and_undoes_in_reverse_order() -> None:
    saga = Instance(
        compensatable("reserve"),
        compensatable("hold"),
        wait_for("approval", timeout=60.0, on_timeout=OnTimeout.COMPENSATE),
        plain("charge"),
    )
    saga.ok("reserve")
    saga.ok("hold", now=10.0)
    timed_out = saga.send(fire("approval"), now=70.0)
    failed, triggered, scheduled = timed_out.events
    assert isinstance(failed, ev.StepFailed)
    assert (failed.step, failed.attempt, failed.will_retry) == ("approval", 1, False)
    assert failed.error.type == "saga.SignalTimeout"
    assert "'approve'" in failed.error.message and "60" in failed.error.message
    assert isinstance(triggered, ev.CompensationTriggered) and not triggered.cancelled
    assert "'approval'" in triggered.reason and "'approve'" in triggered.reason
    assert scheduled == ev.CompensationScheduled(step="hold", attempt=1)
    assert timed_out.effects == (saga.run("hold", phase=COMPENSATION),)

    saga.undone("hold")
    last = saga.undone("reserve")
    assert last.events[-1] == ev.SagaCompensated()
    assert saga.state.compensated == ("hold", "reserve")
    assert saga.state.reason == triggered.reason


def test_a_timeout_never_retries_whatever_the_retry_policy() -> None:
    many = RetryPolicy(max_attempts=9)
    saga = Instance(
        compensatable("reserve"),
        Step(name="approval", wait=WaitForSignal("approve", timeout=5.0), retry=many),
    )
    unchanged(saga, fire("approval"), now=5.0)  # not in flight yet: "reserve" runs
    saga.ok("reserve")
    saga.send(fire("approval"), now=5.0)
    assert saga.state.status is Status.COMPENSATING
    assert not any(isinstance(e, ev.StepScheduled) and e.attempt > 1 for e in saga.history)


def test_a_timeout_that_continues_completes_the_wait_with_its_timeout_result() -> None:
    saga = Instance(
        wait_for(
            "approval",
            timeout=60.0,
            on_timeout=OnTimeout.CONTINUE,
            timeout_result={"approved": False, "auto": True},
        ),
        plain("notify"),
    )
    timed_out = saga.send(fire("approval"), now=60.0)
    assert timed_out.events == (
        ev.StepCompleted(step="approval", attempt=1, result={"approved": False, "auto": True}),
        ev.StepScheduled(step="notify", attempt=1),
    )
    # A signal that comes too late is kept; it changes no result.
    late = saga.send(signal(payload={"approved": True}, message_id="late"), now=61.0)
    assert [type(e).__name__ for e in late.events] == ["SignalReceived"]
    assert saga.state.results["approval"] == {"approved": False, "auto": True}


def test_a_timeout_that_continues_after_the_pivot_defaults_to_none() -> None:
    saga = Instance(
        pivot("charge"),
        wait_for("review", kind=StepKind.RETRIABLE, timeout=5.0, on_timeout=OnTimeout.CONTINUE),
    )
    saga.ok("charge")
    last = saga.send(fire("review"), now=5.0)
    assert last.events == (
        ev.StepCompleted(step="review", attempt=1, result=None),
        ev.SagaCompleted(),
    )


def test_a_signal_while_compensating_is_kept_and_changes_nothing_else() -> None:
    saga = Instance(compensatable("reserve"), wait_for("approval", timeout=1.0))
    saga.ok("reserve")
    saga.send(fire("approval"), now=1.0)
    assert saga.state.status is Status.COMPENSATING
    kept = saga.send(signal(message_id="late"), now=2.0)
    assert kept.events == (ev.SignalReceived(name="approve", payload=None, message_id="late"),)
    assert kept.effects == ()
    assert saga.undone("reserve").events[-1] == ev.SagaCompensated()


# -- cancel ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "waiting", [sleep("wait", 3600.0), wait_for("wait"), wait_for("wait", timeout=60.0)]
)
def test_cancel_while_waiting_ends_the_wait_at_once_and_compensates(waiting: Step) -> None:
    saga = Instance(compensatable("reserve"), compensatable("hold"), waiting, plain("charge"))
    saga.ok("reserve")
    saga.ok("hold")

    cancel = saga.send(msg.CancelSaga(reason="customer left"), now=10.0)
    requested, failed, triggered, scheduled = cancel.events
    assert requested == ev.CancelRequested(reason="customer left")
    assert isinstance(failed, ev.StepFailed)
    assert (failed.step, failed.error.type, failed.will_retry) == ("wait", "saga.Cancelled", False)
    assert "customer left" in failed.error.message
    assert triggered == ev.CompensationTriggered(reason="customer left", cancelled=True)
    assert scheduled == ev.CompensationScheduled(step="hold", attempt=1)
    assert cancel.effects == (
        AbortAttempt(phase=ACTION, step="wait", attempt=1),  # its timer, if it has one
        saga.run("hold", phase=COMPENSATION),
    )
    assert saga.state.status is Status.COMPENSATING
    assert wake_at(saga.definition, saga.state, 10.0) == 10.0  # a compensation is due

    unchanged(saga, fire("wait"), now=3600.0)  # the timer of the ended wait
    saga.send(signal(message_id="late"))  # kept, never taken
    saga.undone("hold")
    last = saga.undone("reserve")
    assert last.events[-1] == ev.SagaCancelled(reason="customer left")
    assert saga.state.compensated == ("hold", "reserve")
    assert "charge" not in [e.step for e in saga.history if isinstance(e, ev.StepScheduled)]


def test_cancel_while_the_first_step_waits_ends_cancelled_with_nothing_to_undo() -> None:
    saga = Instance(sleep("nap", 60.0), plain("charge"))
    cancel = saga.send(msg.CancelSaga(reason="stop"))
    assert cancel.events[-1] == ev.SagaCancelled(reason="stop")
    assert cancel.effects[-1] == Finish(status=Status.CANCELLED)


def test_cancel_while_a_waiting_pivot_or_later_step_waits_is_rejected() -> None:
    for steps in (
        (compensatable("reserve"), sleep("settle", 60.0, kind=StepKind.PIVOT)),
        (pivot("charge"), wait_for("ship", kind=StepKind.RETRIABLE)),
    ):
        saga = Instance(*steps)
        saga.ok(steps[0].name)
        with pytest.raises(CommandRejected, match="pivot"):
            saga.send(msg.CancelSaga(reason="stop"))
        assert saga.state.cancel_reason is None


# -- suspend and resume ----------------------------------------------------------------


def test_a_signal_while_suspended_is_kept_and_taken_on_resume() -> None:
    saga = Instance(compensatable("reserve"), wait_for("approval", timeout=60.0), plain("charge"))
    saga.ok("reserve")
    saga.send(msg.SuspendSaga(reason="ops"), now=5.0)
    kept = saga.send(signal(payload="ok", message_id="s1"), now=6.0)
    assert kept.events == (ev.SignalReceived(name="approve", payload="ok", message_id="s1"),)
    assert saga.state.status is Status.SUSPENDED
    assert saga.state.completed == ("reserve",)
    unchanged(saga, fire("approval"), now=60.0)  # suspended: the timer does nothing

    resumed = saga.send(msg.ResumeSaga(), now=70.0)
    assert resumed.events == (
        ev.SagaResumed(),
        ev.SignalConsumed(step="approval", message_id="s1"),
        ev.StepCompleted(step="approval", attempt=1, result="ok"),
        ev.StepScheduled(step="charge", attempt=1),
    )
    # The re-armed timer is stale by the time it fires; the next step runs.
    assert resumed.effects == (ArmTimer(step="approval", attempt=1, at=60.0), saga.run("charge"))


def test_resume_rearms_a_sleep_whose_end_passed_while_suspended() -> None:
    saga = Instance(sleep("nap", 30.0), plain("charge"))
    saga.send(msg.SuspendSaga(reason="ops"), now=1.0)
    assert wake_at(saga.definition, saga.state, 1.0) is None
    assert outstanding(saga.definition, saga.state, 40.0) == ()
    unchanged(saga, fire("nap"), now=30.0)
    resumed = saga.send(msg.ResumeSaga(), now=40.0)
    assert resumed.effects == (ArmTimer(step="nap", attempt=1, at=30.0),)  # overdue: fires
    saga.send(fire("nap"), now=40.0)
    assert saga.state.completed == ("nap",)


# -- recovery: outstanding and wake_at -------------------------------------------------


def test_outstanding_rearms_timers_and_leaves_a_bare_signal_wait_alone() -> None:
    napping = Instance(compensatable("reserve"), sleep("nap", 30.0))
    napping.ok("reserve", now=10.0)
    assert outstanding(napping.definition, napping.state, 100.0) == (
        ArmTimer(step="nap", attempt=1, at=40.0),
    )
    bounded = Instance(wait_for("approval", timeout=5.0))
    assert outstanding(bounded.definition, bounded.state) == (
        ArmTimer(step="approval", attempt=1, at=5.0),
    )
    unbounded = Instance(wait_for("approval"))
    assert outstanding(unbounded.definition, unbounded.state) == ()


def test_wake_at_is_the_earliest_time_the_instance_needs_a_driver() -> None:
    saga = Instance(compensatable("reserve", retry=NO_JITTER), sleep("nap", 30.0))
    definition = saga.definition
    assert wake_at(definition, saga.state, 1.0) == 1.0  # an attempt is due (or running)
    saga.fail("reserve", now=1.0)
    assert wake_at(definition, saga.state, 2.0) == 3.0  # its backoff ends
    saga.ok("reserve", 2, now=3.0)
    assert wake_at(definition, saga.state, 4.0) == 33.0  # the sleep ends
    assert wake_at(definition, saga.state, 50.0) == 33.0  # overdue: still its time
    saga.send(fire("nap"), now=33.0)
    assert saga.state.status is Status.COMPLETED
    assert wake_at(definition, saga.state, 34.0) is None


def test_wake_at_of_a_cancelled_backoff_is_now() -> None:
    saga = Instance(compensatable("reserve"), compensatable("charge", retry=NO_JITTER))
    saga.ok("reserve")
    saga.fail("charge", now=10.0)  # attempt 2 after 12
    saga.send(msg.CancelSaga(reason="stop"), now=11.0)
    assert wake_at(saga.definition, saga.state, 11.0) == 11.0


# -- definitions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: Sleep(0), id="sleep-zero"),
        pytest.param(lambda: Sleep(-1.0), id="sleep-negative"),
        pytest.param(lambda: Sleep(math.inf), id="sleep-inf"),
        pytest.param(lambda: Sleep(math.nan), id="sleep-nan"),
        pytest.param(lambda: Sleep(True), id="sleep-bool"),
        pytest.param(lambda: Sleep("5"), id="sleep-str"),  # type: ignore[arg-type]
        pytest.param(lambda: WaitForSignal(""), id="signal-empty"),
        pytest.param(lambda: WaitForSignal("no spaces"), id="signal-name"),
        pytest.param(lambda: WaitForSignal(7), id="signal-not-str"),  # type: ignore[arg-type]
        pytest.param(lambda: WaitForSignal("ok", timeout=0), id="timeout-zero"),
        pytest.param(lambda: WaitForSignal("ok", timeout=math.inf), id="timeout-inf"),
        pytest.param(
            lambda: WaitForSignal("ok", on_timeout="continue"),  # type: ignore[arg-type]
            id="on-timeout-str",
        ),
        pytest.param(
            lambda: WaitForSignal("ok", on_timeout=OnTimeout.CONTINUE, timeout_result=object()),
            id="timeout-result-not-json",
        ),
    ],
)
def test_bad_waits_are_refused_when_built(build: Any) -> None:
    with pytest.raises(DefinitionError):
        build()


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            Step(name="w", action=act, wait=Sleep(1.0)),
            "an action or a wait, not both",
        ),
        (
            Step(name="w", compensation=undo, wait=Sleep(1.0)),
            "nothing to undo",
        ),
        (
            Step(name="w", timeout=5.0, wait=WaitForSignal("ok")),
            "WaitForSignal\\(timeout=",
        ),
        (Step(name="w", wait=5.0), "Sleep\\(...\\), WaitForSignal"),  # type: ignore[arg-type]
        (Step(name="w"), "action must be an async function"),
    ],
)
def test_bad_waiting_steps_are_refused_with_the_reason(step: Step, message: str) -> None:
    with pytest.raises(DefinitionError, match=message) as info:
        SagaDefinition("checkout", [step])
    assert (info.value.saga, info.value.step) == ("checkout", "w")


@pytest.mark.parametrize("kind", [StepKind.PIVOT, StepKind.RETRIABLE])
def test_only_a_compensatable_wait_may_compensate_on_timeout(kind: StepKind) -> None:
    first = compensatable("reserve") if kind is StepKind.PIVOT else pivot("charge")
    with pytest.raises(DefinitionError, match="cannot compensate on timeout") as info:
        SagaDefinition("checkout", [first, wait_for("w", kind=kind, timeout=5.0)])
    assert info.value.step == "w"
    # Waiting forever, or going on at the timeout, is fine there.
    SagaDefinition("checkout", [first, wait_for("w", kind=kind)])
    continuing = wait_for("w", kind=kind, timeout=5.0, on_timeout=OnTimeout.CONTINUE)
    SagaDefinition("checkout", [first, continuing])
    SagaDefinition("checkout", [first, sleep("w", 5.0, kind=kind)])


def test_a_retriable_wait_after_the_pivot_builds() -> None:
    definition = SagaDefinition(
        "checkout",
        [pivot("charge"), retriable("ship"), sleep("cool", 1.0, kind=StepKind.RETRIABLE)],
    )
    assert definition.step("cool").wait == Sleep(1.0)


def test_every_event_type_can_be_read_from_the_public_events_module() -> None:
    import saga.events

    assert set(EVENT_TYPES) <= set(saga.events.__all__)
    assert saga.events.SignalReceived is ev.SignalReceived
