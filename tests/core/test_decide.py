"""The decider's main paths, one example each, read top to bottom like a history."""

from __future__ import annotations

from typing import Any

import pytest

from saga._core import events as ev
from saga._core import messages as msg
from saga._core.decide import Decision, decide, idempotency_key, outstanding, start
from saga._core.definition import RetryPolicy, SagaDefinition, Step, StepKind
from saga._core.effects import AbortAttempt, Finish, RunAttempt
from saga._core.events import ErrorInfo, Phase
from saga._core.state import SagaState, Status, fold
from saga.errors import CommandRejected

ACTION, COMPENSATION = Phase.ACTION, Phase.COMPENSATION
BOOM = ErrorInfo("builtins.RuntimeError", "boom")
NO_JITTER = RetryPolicy(max_attempts=3, initial_interval=2.0, multiplier=3.0, jitter=0.0)


async def act(ctx: Any) -> None:
    raise AssertionError("the decider never calls step functions")


async def undo(ctx: Any) -> None:
    raise AssertionError("the decider never calls step functions")


def compensatable(name: str, **kwargs: Any) -> Step:
    return Step(name=name, action=act, compensation=undo, **kwargs)


def plain(name: str, **kwargs: Any) -> Step:
    return Step(name=name, action=act, **kwargs)


def pivot(name: str, **kwargs: Any) -> Step:
    return Step(name=name, action=act, kind=StepKind.PIVOT, **kwargs)


def retriable(name: str, **kwargs: Any) -> Step:
    return Step(name=name, action=act, kind=StepKind.RETRIABLE, **kwargs)


class Instance:
    """One instance and its history, driven one message at a time."""

    def __init__(self, *steps: Step, saga_id: str = "order-1", input: Any = None) -> None:
        self.definition = SagaDefinition("checkout", steps)
        self.saga_id = saga_id
        first = start(self.definition, saga_id, msg.StartSaga(input=input), now=0.0)
        self.first = first
        self.state = first.state
        self.history: list[ev.Event] = list(first.events)

    def send(self, message: msg.Message, now: float = 0.0) -> Decision:
        decision = decide(self.definition, self.state, message, now)
        self.state = decision.state
        self.history.extend(decision.events)
        # Every transition replays to the state the decider handed back.
        assert fold(self.saga_id, self.history) == self.state
        return decision

    def ok(self, step: str, attempt: int = 1, result: Any = None, now: float = 0.0) -> Decision:
        return self.send(
            msg.CompleteAttempt(phase=ACTION, step=step, attempt=attempt, result=result), now
        )

    def fail(
        self, step: str, attempt: int = 1, *, retryable: bool = True, now: float = 0.0
    ) -> Decision:
        return self.send(
            msg.FailAttempt(
                phase=ACTION, step=step, attempt=attempt, error=BOOM, retryable=retryable
            ),
            now,
        )

    def undone(self, step: str, attempt: int = 1) -> Decision:
        return self.send(msg.CompleteAttempt(phase=COMPENSATION, step=step, attempt=attempt))

    def undo_failed(self, step: str, attempt: int = 1, *, retryable: bool = True) -> Decision:
        return self.send(
            msg.FailAttempt(
                phase=COMPENSATION, step=step, attempt=attempt, error=BOOM, retryable=retryable
            )
        )

    def key(self, step: str, phase: Phase = ACTION) -> str:
        return idempotency_key(self.saga_id, step, phase)

    def run(self, step: str, attempt: int = 1, phase: Phase = ACTION, **kw: Any) -> RunAttempt:
        return RunAttempt(
            phase=phase, step=step, attempt=attempt, idempotency_key=self.key(step, phase), **kw
        )


# -- the happy path ------------------------------------------------------------------


def test_start_records_the_saga_and_schedules_its_first_step() -> None:
    saga = Instance(compensatable("reserve"), plain("charge"), input={"order": 7})

    assert saga.first.events == (
        ev.SagaStarted(saga="checkout", version=1, input={"order": 7}),
        ev.StepScheduled(step="reserve", attempt=1),
    )
    assert saga.first.effects == (saga.run("reserve"),)
    assert saga.state.status is Status.RUNNING
    assert saga.state.sequence == 2
    assert saga.state.input == {"order": 7}


def test_happy_path_runs_every_step_in_order_and_completes() -> None:
    saga = Instance(compensatable("reserve"), plain("charge"), plain("ship"))

    first = saga.ok("reserve", result={"hold": 1})
    assert first.events == (
        ev.StepCompleted(step="reserve", attempt=1, result={"hold": 1}),
        ev.StepScheduled(step="charge", attempt=1),
    )
    assert first.effects == (saga.run("charge"),)

    assert saga.ok("charge", result="tx-9").effects == (saga.run("ship"),)
    last = saga.ok("ship")
    assert last.events == (
        ev.StepCompleted(step="ship", attempt=1, result=None),
        ev.SagaCompleted(),
    )
    assert last.effects == (Finish(status=Status.COMPLETED),)

    assert [type(e).__name__ for e in saga.history] == [
        "SagaStarted",
        "StepScheduled",
        "StepCompleted",
        "StepScheduled",
        "StepCompleted",
        "StepScheduled",
        "StepCompleted",
        "SagaCompleted",
    ]
    assert saga.state.status is Status.COMPLETED
    assert saga.state.completed == ("reserve", "charge", "ship")
    assert saga.state.results == {"reserve": {"hold": 1}, "charge": "tx-9", "ship": None}
    assert saga.state.in_flight == ()


def test_starting_a_started_saga_is_rejected() -> None:
    saga = Instance(plain("only"))
    with pytest.raises(CommandRejected) as info:
        saga.send(msg.StartSaga(input=None))
    assert info.value.command == "start"


# -- retries ---------------------------------------------------------------------------


def test_a_retryable_failure_schedules_the_next_attempt_after_a_backoff() -> None:
    saga = Instance(plain("charge", retry=NO_JITTER))

    first = saga.fail("charge", now=100.0)
    assert first.events == (
        ev.StepFailed(step="charge", attempt=1, error=BOOM, will_retry=True),
        ev.StepScheduled(step="charge", attempt=2, run_after=102.0),
    )
    assert first.effects == (saga.run("charge", 2, run_after=102.0),)

    # Each interval is the previous one times the multiplier.
    second = saga.fail("charge", 2, now=200.0)
    assert second.effects == (saga.run("charge", 3, run_after=206.0),)
    assert saga.state.in_flight[0].run_after == 206.0


def test_backoff_is_capped_at_max_interval() -> None:
    policy = RetryPolicy(max_attempts=None, initial_interval=10.0, max_interval=15.0, jitter=0.0)
    saga = Instance(plain("charge", retry=policy))
    saga.fail("charge", 1, now=0.0)
    saga.fail("charge", 2, now=0.0)
    assert saga.state.in_flight[0].run_after == 15.0  # 20, capped


def test_jitter_is_within_its_band_and_the_same_on_every_call() -> None:
    policy = RetryPolicy(max_attempts=3, initial_interval=4.0, jitter=0.5)
    saga = Instance(plain("charge", retry=policy))
    message = msg.FailAttempt(phase=ACTION, step="charge", attempt=1, error=BOOM)

    once = decide(saga.definition, saga.state, message, 100.0)
    twice = decide(saga.definition, saga.state, message, 100.0)
    assert once == twice
    scheduled = once.events[-1]
    assert isinstance(scheduled, ev.StepScheduled)
    assert scheduled.run_after is not None
    assert 100.0 + 2.0 <= scheduled.run_after <= 100.0 + 6.0  # 4s, moved by up to 50%
    assert once.effects == (saga.run("charge", 2, run_after=scheduled.run_after),)

    # Fixed per saga, yet different sagas spread out.
    spread = set()
    for n in range(20):
        other = Instance(plain("charge", retry=policy), saga_id=f"order-{n}")
        event = other.fail("charge", now=100.0).events[-1]
        assert isinstance(event, ev.StepScheduled)
        spread.add(event.run_after)
    assert len(spread) > 1


def test_exhausted_retries_compensate() -> None:
    saga = Instance(compensatable("reserve"), plain("charge", retry=RetryPolicy(max_attempts=2)))
    saga.ok("reserve")
    saga.fail("charge", 1)

    last = saga.fail("charge", 2)
    assert last.events[0] == ev.StepFailed(step="charge", attempt=2, error=BOOM, will_retry=False)
    assert isinstance(last.events[1], ev.CompensationTriggered)
    assert last.events[2] == ev.CompensationScheduled(step="reserve", attempt=1)
    assert last.effects == (saga.run("reserve", phase=COMPENSATION),)


def test_a_non_retryable_error_goes_straight_to_compensation() -> None:
    saga = Instance(
        compensatable("reserve"),
        plain("notify"),  # nothing to undo
        compensatable("hold"),
        plain("charge", retry=RetryPolicy(max_attempts=5)),
    )
    saga.ok("reserve")
    saga.ok("notify")
    saga.ok("hold")

    failed = saga.fail("charge", retryable=False)
    assert failed.events == (
        ev.StepFailed(step="charge", attempt=1, error=BOOM, will_retry=False),
        ev.CompensationTriggered(
            reason="step 'charge' failed: builtins.RuntimeError: boom", cancelled=False
        ),
        ev.CompensationScheduled(step="hold", attempt=1),
    )
    assert saga.state.status is Status.COMPENSATING

    # Newest first, skipping the step without a compensation.
    assert saga.undone("hold").effects == (saga.run("reserve", phase=COMPENSATION),)
    last = saga.undone("reserve")
    assert last.events[-1] == ev.SagaCompensated()
    assert last.effects == (Finish(status=Status.COMPENSATED),)
    assert saga.state.compensated == ("hold", "reserve")


def test_a_failing_first_step_has_nothing_to_undo() -> None:
    saga = Instance(compensatable("reserve", retry=RetryPolicy(max_attempts=1)))
    last = saga.fail("reserve")
    assert [type(e) for e in last.events] == [
        ev.StepFailed,
        ev.CompensationTriggered,
        ev.SagaCompensated,
    ]
    assert last.effects == (Finish(status=Status.COMPENSATED),)


def test_a_retried_compensation_waits_its_backoff() -> None:
    saga = Instance(
        compensatable("reserve", compensation_retry=NO_JITTER), plain("charge", retry=NO_JITTER)
    )
    saga.ok("reserve")
    saga.fail("charge", retryable=False)

    retried = saga.send(
        msg.FailAttempt(phase=COMPENSATION, step="reserve", attempt=1, error=BOOM), now=50.0
    )
    assert retried.events == (
        ev.CompensationFailed(step="reserve", attempt=1, error=BOOM, will_retry=True),
        ev.CompensationScheduled(step="reserve", attempt=2, run_after=52.0),
    )
    assert retried.effects == (saga.run("reserve", 2, phase=COMPENSATION, run_after=52.0),)


def test_a_compensation_that_exhausts_its_retries_fails_the_saga_naming_what_is_pending() -> None:
    saga = Instance(
        compensatable("a"),
        compensatable("b", compensation_retry=RetryPolicy(max_attempts=2)),
        compensatable("c"),
        plain("d", retry=RetryPolicy(max_attempts=1)),
    )
    for step in "abc":
        saga.ok(step)
    saga.fail("d")
    saga.undone("c")
    saga.undo_failed("b", 1)

    last = saga.undo_failed("b", 2)
    assert last.events == (
        ev.CompensationFailed(step="b", attempt=2, error=BOOM, will_retry=False),
        ev.SagaFailed(
            reason="compensation of step 'b' failed: builtins.RuntimeError: boom",
            pending=("b", "a"),
        ),
    )
    assert last.effects == (Finish(status=Status.FAILED),)
    assert saga.state.status is Status.FAILED
    assert saga.state.pending == ("b", "a")
    assert saga.state.compensated == ("c",)


def test_a_non_retryable_compensation_failure_fails_at_once() -> None:
    saga = Instance(compensatable("a"), plain("b", retry=RetryPolicy(max_attempts=1)))
    saga.ok("a")
    saga.fail("b")
    last = saga.undo_failed("a", retryable=False)
    assert last.events[-1] == ev.SagaFailed(
        reason="compensation of step 'a' failed: builtins.RuntimeError: boom", pending=("a",)
    )


# -- stale outcomes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(msg.CompleteAttempt(phase=ACTION, step="reserve", attempt=1), id="duplicate"),
        pytest.param(msg.CompleteAttempt(phase=ACTION, step="charge", attempt=2), id="future"),
        pytest.param(
            msg.FailAttempt(phase=ACTION, step="charge", attempt=7, error=BOOM), id="wrong-attempt"
        ),
        pytest.param(
            msg.CompleteAttempt(phase=COMPENSATION, step="reserve", attempt=1), id="wrong-phase"
        ),
        pytest.param(msg.CompleteAttempt(phase=ACTION, step="ship", attempt=1), id="not-yet"),
        pytest.param(msg.CompleteAttempt(phase=ACTION, step="nope", attempt=1), id="unknown"),
    ],
)
def test_an_outcome_of_no_attempt_in_flight_decides_nothing(message: msg.Message) -> None:
    saga = Instance(compensatable("reserve"), plain("charge"), plain("ship"))
    saga.ok("reserve")
    before = saga.state

    decision = saga.send(message)
    assert decision == Decision((), (), before)


def test_an_outcome_after_the_end_decides_nothing() -> None:
    saga = Instance(plain("only"))
    saga.ok("only")
    done = saga.state
    assert saga.ok("only") == Decision((), (), done)
    assert saga.fail("only", 2) == Decision((), (), done)


# -- cancellation --------------------------------------------------------------------


def test_cancel_while_a_step_runs_waits_for_it_then_compensates_it() -> None:
    saga = Instance(compensatable("reserve"), compensatable("charge"), plain("ship"))
    saga.ok("reserve")

    cancel = saga.send(msg.CancelSaga(reason="customer changed their mind"))
    assert cancel.events == (ev.CancelRequested(reason="customer changed their mind"),)
    assert cancel.effects == (AbortAttempt(phase=ACTION, step="charge", attempt=1),)
    assert saga.state.status is Status.RUNNING  # until the attempt's fate is known
    assert saga.state.cancel_reason == "customer changed their mind"

    # It had begun, so it ran on and succeeded: it must be undone too.
    done = saga.ok("charge")
    assert done.events == (
        ev.StepCompleted(step="charge", attempt=1, result=None),
        ev.CompensationTriggered(reason="customer changed their mind", cancelled=True),
        ev.CompensationScheduled(step="charge", attempt=1),
    )
    assert done.effects == (saga.run("charge", phase=COMPENSATION),)

    saga.undone("charge")
    last = saga.undone("reserve")
    assert last.events[-1] == ev.SagaCancelled(reason="customer changed their mind")
    assert last.effects == (Finish(status=Status.CANCELLED),)
    assert saga.state.status is Status.CANCELLED
    assert saga.state.compensated == ("charge", "reserve")
    assert not any(isinstance(e, ev.StepScheduled) and e.step == "ship" for e in saga.history)


def test_cancel_of_an_attempt_dropped_before_it_began_undoes_only_what_completed() -> None:
    saga = Instance(compensatable("reserve"), compensatable("charge"))
    saga.ok("reserve")
    saga.fail("charge", 1)  # attempt 2 waits out its backoff
    cancel = saga.send(msg.CancelSaga(reason="stop"))
    assert cancel.effects == (AbortAttempt(phase=ACTION, step="charge", attempt=2),)

    # The runtime reports a dropped attempt as a non-retryable failure.
    dropped = saga.fail("charge", 2, retryable=False)
    assert dropped.events[1] == ev.CompensationTriggered(reason="stop", cancelled=True)
    assert dropped.effects == (saga.run("reserve", phase=COMPENSATION),)
    assert saga.undone("reserve").effects == (Finish(status=Status.CANCELLED),)


def test_after_a_cancel_a_retryable_failure_is_not_retried() -> None:
    saga = Instance(compensatable("reserve"), plain("charge", retry=RetryPolicy(max_attempts=9)))
    saga.ok("reserve")
    saga.send(msg.CancelSaga(reason="stop"))
    failed = saga.fail("charge", retryable=True)
    assert failed.events[0] == ev.StepFailed(step="charge", attempt=1, error=BOOM, will_retry=False)
    assert failed.events[1] == ev.CompensationTriggered(reason="stop", cancelled=True)


def test_cancel_of_a_saga_with_nothing_to_undo_ends_cancelled() -> None:
    saga = Instance(plain("only"))
    saga.send(msg.CancelSaga(reason="stop"))
    last = saga.ok("only")
    assert last.events[-1] == ev.SagaCancelled(reason="stop")
    assert last.effects == (Finish(status=Status.CANCELLED),)


def test_cancelling_twice_or_while_compensating_changes_nothing() -> None:
    saga = Instance(compensatable("reserve"), compensatable("charge"))
    saga.ok("reserve")
    saga.send(msg.CancelSaga(reason="first"))
    before = saga.state
    assert saga.send(msg.CancelSaga(reason="second")) == Decision((), (), before)
    assert saga.state.cancel_reason == "first"

    saga.ok("charge")
    assert saga.state.status is Status.COMPENSATING
    compensating = saga.state
    assert saga.send(msg.CancelSaga(reason="third")) == Decision((), (), compensating)


@pytest.mark.parametrize("end", ["completed", "compensated"])
def test_cancel_of_a_finished_saga_is_rejected(end: str) -> None:
    saga = Instance(compensatable("only", retry=RetryPolicy(max_attempts=1)))
    if end == "completed":
        saga.ok("only")
    else:
        saga.fail("only")
    with pytest.raises(CommandRejected) as info:
        saga.send(msg.CancelSaga(reason="too late"))
    assert (info.value.saga_id, info.value.command, info.value.status) == (
        "order-1",
        "cancel",
        end,
    )


def test_cancel_of_a_suspended_saga_is_rejected() -> None:
    saga = Instance(plain("only"))
    saga.send(msg.SuspendSaga(reason="ops"))
    with pytest.raises(CommandRejected) as info:
        saga.send(msg.CancelSaga(reason="stop"))
    assert info.value.status == "suspended"


# -- the pivot -----------------------------------------------------------------------


def test_steps_after_the_pivot_are_retried_forever() -> None:
    saga = Instance(
        compensatable("reserve"),
        pivot("charge"),
        retriable("ship", retry=RetryPolicy(max_attempts=1, jitter=0.0, max_interval=5.0)),
    )
    saga.ok("reserve")
    saga.ok("charge")
    for attempt in range(1, 50):
        failed = saga.fail("ship", attempt, now=float(attempt))
        failure, scheduled = failed.events
        assert failure == ev.StepFailed(step="ship", attempt=attempt, error=BOOM, will_retry=True)
        assert isinstance(scheduled, ev.StepScheduled)
        assert scheduled.attempt == attempt + 1
        assert scheduled.run_after is not None
        assert attempt < scheduled.run_after <= attempt + 5.0
    assert saga.ok("ship", 50).effects == (Finish(status=Status.COMPLETED),)
    assert not any(isinstance(e, ev.CompensationTriggered) for e in saga.history)


def test_a_retriable_step_with_a_non_retryable_error_fails_the_saga_without_undoing() -> None:
    saga = Instance(compensatable("reserve"), pivot("charge"), retriable("ship"))
    saga.ok("reserve")
    saga.ok("charge")
    last = saga.fail("ship", retryable=False)
    assert last.events == (
        ev.StepFailed(step="ship", attempt=1, error=BOOM, will_retry=False),
        ev.SagaFailed(reason="step 'ship' failed: builtins.RuntimeError: boom", pending=()),
    )
    assert last.effects == (Finish(status=Status.FAILED),)
    assert saga.state.compensated == ()


def test_a_failing_pivot_compensates_the_steps_before_it() -> None:
    saga = Instance(
        compensatable("reserve"),
        pivot("charge", retry=RetryPolicy(max_attempts=1)),
        retriable("ship"),
    )
    saga.ok("reserve")
    failed = saga.fail("charge")
    assert failed.effects == (saga.run("reserve", phase=COMPENSATION),)


def test_cancel_after_the_pivot_is_rejected() -> None:
    saga = Instance(compensatable("reserve"), pivot("charge"), retriable("ship"))
    saga.ok("reserve")
    saga.ok("charge")
    with pytest.raises(CommandRejected) as info:
        saga.send(msg.CancelSaga(reason="too late"))
    assert info.value.command == "cancel"
    assert info.value.status == "running"


def test_cancel_while_a_retriable_step_runs_is_rejected() -> None:
    saga = Instance(compensatable("reserve"), retriable("ship"))
    saga.ok("reserve")
    with pytest.raises(CommandRejected):
        saga.send(msg.CancelSaga(reason="too late"))


@pytest.mark.parametrize("attempt", [1, 2])
def test_cancel_while_the_pivot_runs_is_rejected(attempt: int) -> None:
    # Its attempt may complete, and then there is no way back: go/no-go is the pivot's call.
    saga = Instance(compensatable("reserve"), pivot("charge"), retriable("ship"))
    saga.ok("reserve")
    if attempt == 2:
        saga.fail("charge")  # even while it waits out a backoff
    before = saga.state
    with pytest.raises(CommandRejected) as info:
        saga.send(msg.CancelSaga(reason="stop"))
    assert (info.value.command, info.value.status) == ("cancel", "running")
    assert saga.state == before
    assert saga.state.cancel_reason is None


# -- suspension ----------------------------------------------------------------------


def test_suspend_then_resume_reissues_the_attempt_in_flight() -> None:
    saga = Instance(compensatable("reserve"), plain("charge", retry=NO_JITTER))
    saga.ok("reserve")
    saga.fail("charge", now=10.0)  # attempt 2, not before 12.0

    suspended = saga.send(msg.SuspendSaga(reason="too many crashes"))
    assert suspended.events == (ev.SagaSuspended(reason="too many crashes"),)
    assert suspended.effects == ()
    assert saga.state.status is Status.SUSPENDED
    assert outstanding(saga.definition, saga.state) == ()

    resumed = saga.send(msg.ResumeSaga())
    assert resumed.events == (ev.SagaResumed(),)
    assert resumed.effects == (saga.run("charge", 2, run_after=12.0),)
    assert resumed.effects == outstanding(saga.definition, saga.state)
    assert saga.state.status is Status.RUNNING


def test_a_saga_suspended_while_compensating_resumes_compensating() -> None:
    saga = Instance(compensatable("reserve"), plain("charge", retry=RetryPolicy(max_attempts=1)))
    saga.ok("reserve")
    saga.fail("charge")
    saga.send(msg.SuspendSaga(reason="ops"))
    resumed = saga.send(msg.ResumeSaga())
    assert saga.state.status is Status.COMPENSATING
    assert resumed.effects == (saga.run("reserve", phase=COMPENSATION),)


def test_suspending_a_suspended_saga_changes_nothing() -> None:
    saga = Instance(plain("only"))
    saga.send(msg.SuspendSaga(reason="first"))
    before = saga.state
    assert saga.send(msg.SuspendSaga(reason="second")) == Decision((), (), before)
    assert saga.state.suspension == "first"


def test_resume_forgets_why_the_saga_was_suspended() -> None:
    saga = Instance(plain("only"))
    saga.send(msg.SuspendSaga(reason="ops"))
    assert saga.state.suspension == "ops"
    assert saga.state.resume_to is Status.RUNNING
    saga.send(msg.ResumeSaga())
    assert (saga.state.suspension, saga.state.resume_to) == (None, None)


def test_resume_of_a_saga_that_is_not_suspended_is_rejected() -> None:
    saga = Instance(plain("only"))
    with pytest.raises(CommandRejected) as info:
        saga.send(msg.ResumeSaga())
    assert (info.value.command, info.value.status) == ("resume", "running")


def test_suspend_of_a_finished_saga_is_rejected() -> None:
    saga = Instance(plain("only"))
    saga.ok("only")
    with pytest.raises(CommandRejected) as info:
        saga.send(msg.SuspendSaga(reason="ops"))
    assert (info.value.command, info.value.status) == ("suspend", "completed")


def test_outstanding_reissues_nothing_for_a_finished_saga() -> None:
    saga = Instance(plain("only"))
    assert outstanding(saga.definition, saga.state) == (saga.run("only"),)
    saga.ok("only")
    assert outstanding(saga.definition, saga.state) == ()


def test_an_outcome_while_suspended_runs_nothing_and_stays_suspended() -> None:
    # BUG: decide() handles outcomes of a SUSPENDED instance like those of a running one.
    # A success schedules the next step (a RunAttempt effect, though SagaSuspended says
    # "nothing runs until an operator resumes it"); a failure records CompensationTriggered,
    # which sets the status to COMPENSATING and silently ends the suspension (resume_to
    # and suspension stay set).
    saga = Instance(compensatable("reserve"), plain("charge"), plain("ship"))
    saga.send(msg.SuspendSaga(reason="ops"))

    done = saga.ok("reserve")
    assert not any(isinstance(e, RunAttempt) for e in done.effects)
    assert saga.state.status is Status.SUSPENDED

    failed = saga.fail("charge", retryable=False)
    assert not any(isinstance(e, RunAttempt) for e in failed.effects)
    assert saga.state.status is Status.SUSPENDED


# -- long outages ----------------------------------------------------------------------


def test_a_retriable_step_keeps_retrying_after_a_thousand_attempts() -> None:
    # BUG: RetryPolicy.interval computes multiplier ** (failed_attempt - 1) before capping
    # at max_interval: from attempt 1025 on (multiplier 2.0) it raises OverflowError, so a
    # retriable step (retried forever) crashes its actor after ~17 hours of a 60s backoff.
    definition = SagaDefinition("checkout", [pivot("charge"), retriable("ship")])
    state = fold(
        "order-1",
        [
            ev.SagaStarted(saga="checkout", version=1, input=None),
            ev.StepScheduled(step="charge", attempt=1),
            ev.StepCompleted(step="charge", attempt=1, result=None),
            ev.StepScheduled(step="ship", attempt=1100, run_after=0.0),
        ],
    )
    message = msg.FailAttempt(phase=ACTION, step="ship", attempt=1100, error=BOOM)
    decision = decide(definition, state, message, 1000.0)
    scheduled = decision.events[-1]
    assert isinstance(scheduled, ev.StepScheduled)
    assert scheduled.attempt == 1101
    assert scheduled.run_after is not None
    assert 1000.0 + 54.0 <= scheduled.run_after <= 1000.0 + 66.0  # 60s, jitter 0.1


def _state_of(saga: Instance) -> SagaState:
    return fold(saga.saga_id, saga.history)


def test_rejected_commands_leave_the_state_as_it_was() -> None:
    saga = Instance(compensatable("reserve"), pivot("charge"), retriable("ship"))
    saga.ok("reserve")
    saga.ok("charge")
    before = saga.state
    for message in (msg.CancelSaga(reason="x"), msg.ResumeSaga(), msg.StartSaga(input=1)):
        with pytest.raises(CommandRejected):
            decide(saga.definition, saga.state, message, 0.0)
    assert saga.state == before == _state_of(saga)


def test_recovery_drops_again_a_backoff_that_a_cancel_had_dropped() -> None:
    # Crash after CancelRequested was committed but before the abort's outcome was: the
    # abort died with the process, so recovery must not wait out the backoff and then run
    # the action of a cancelled saga.
    saga = Instance(plain("charge", retry=NO_JITTER))
    saga.fail("charge", now=100.0)  # attempt 2 waits until 102
    saga.send(msg.CancelSaga(reason="changed my mind"), now=100.5)
    abort = AbortAttempt(phase=ACTION, step="charge", attempt=2)
    retry = saga.run("charge", 2, run_after=102.0)
    assert outstanding(saga.definition, saga.state, 101.0) == (retry, abort)
    # Past its run_after it may have begun before the crash: re-run it, do not abort it.
    assert outstanding(saga.definition, saga.state, 103.0) == (retry,)
