"""Parallel groups in the decider: fan-out with a limit, failure and cancel, undo together."""

from __future__ import annotations

import pytest

from saga import Parallel, SagaDefinition, Step
from saga import events as ev
from saga._core import messages as msg
from saga._core.decide import outstanding
from saga._core.effects import AbortAttempt
from saga._core.fit import divergence
from saga._core.state import Status
from saga.errors import CommandRejected, DefinitionError
from tests.core.test_decide import (
    ACTION,
    COMPENSATION,
    Instance,
    act,
    compensatable,
    pivot,
    plain,
    retriable,
)


def trip(limit: int | None = None) -> Instance:
    return Instance(
        compensatable("quote"),
        Parallel(
            "book",
            [compensatable("flight"), compensatable("hotel"), compensatable("car")],
            limit=limit,
        ),
        pivot("pay"),
    )


def scheduled(decision: object) -> list[str]:
    return [e.step for e in decision.events if isinstance(e, ev.StepScheduled)]  # type: ignore[attr-defined]


def undoing(decision: object) -> list[str]:
    return [e.step for e in decision.events if isinstance(e, ev.CompensationScheduled)]  # type: ignore[attr-defined]


def test_a_group_fans_out_up_to_its_limit_then_goes_on_when_all_completed() -> None:
    saga = trip(limit=2)
    first = saga.ok("quote")
    assert scheduled(first) == ["flight", "hotel"]
    assert first.effects == (saga.run("flight"), saga.run("hotel"))
    assert scheduled(saga.ok("hotel")) == ["car"]  # a slot came free
    assert scheduled(saga.ok("car")) == []  # flight still runs
    assert scheduled(saga.ok("flight")) == ["pay"]
    saga.ok("pay")
    assert saga.state.status is Status.COMPLETED
    assert saga.state.completed == ("quote", "hotel", "car", "flight", "pay")
    assert divergence(saga.definition, saga.history) is None


def test_without_a_limit_every_member_starts_at_once() -> None:
    saga = trip()
    assert scheduled(saga.ok("quote")) == ["flight", "hotel", "car"]


def test_a_member_failing_stops_the_others_then_undoes_all_that_completed_together() -> None:
    saga = trip()
    saga.ok("quote")
    saga.ok("flight")
    failed = saga.fail("hotel", retryable=False)
    assert [type(e).__name__ for e in failed.events] == ["StepFailed", "CompensationTriggered"]
    assert failed.effects == (AbortAttempt(phase=ACTION, step="car", attempt=1),)
    assert saga.state.status is Status.COMPENSATING
    # The car had begun: it reports, completed; now all that completed is undone together.
    late = saga.ok("car")
    assert undoing(late) == ["car", "flight"]
    assert scheduled(late) == []  # no forward step after a turn back
    assert undoing(saga.undone("flight")) == []  # the car's undo still runs
    assert undoing(saga.undone("car")) == ["quote"]  # only then the step before the group
    saga.undone("quote")
    assert saga.state.status is Status.COMPENSATED
    assert saga.state.compensated == ("flight", "car", "quote")
    assert divergence(saga.definition, saga.history) is None


def test_a_member_dropped_before_it_began_is_not_undone() -> None:
    saga = trip()
    saga.ok("quote")
    saga.ok("flight")
    saga.fail("hotel", retryable=False)
    aborted = saga.fail("car", retryable=False)  # the runner dropped it: never began
    assert undoing(aborted) == ["flight"]
    saga.undone("flight")
    saga.undone("quote")
    assert saga.state.status is Status.COMPENSATED
    assert saga.state.compensated == ("flight", "quote")


def test_a_group_is_undone_at_most_limit_at_once() -> None:
    saga = trip(limit=1)
    saga.ok("quote")
    for member in ("flight", "hotel", "car"):
        saga.ok(member)
    assert undoing(saga.fail("pay", retryable=False)) == ["car"]
    assert undoing(saga.undone("car")) == ["hotel"]
    assert undoing(saga.undone("hotel")) == ["flight"]
    assert undoing(saga.undone("flight")) == ["quote"]


def test_a_retried_member_keeps_its_slot() -> None:
    saga = trip(limit=2)
    saga.ok("quote")
    retry = saga.fail("flight", now=5.0)
    assert [(e.step, e.attempt) for e in retry.events if isinstance(e, ev.StepScheduled)] == [
        ("flight", 2)
    ]
    assert saga.state.status is Status.RUNNING


def test_cancel_stops_every_member_and_ends_cancelled() -> None:
    saga = trip()
    saga.ok("quote")
    cancel = saga.send(msg.CancelSaga(reason="no"))
    assert {e.step for e in cancel.effects if isinstance(e, AbortAttempt)} == {
        "flight",
        "hotel",
        "car",
    }
    saga.ok("flight")  # it had begun
    saga.fail("hotel", retryable=False)  # dropped
    assert saga.state.status is Status.COMPENSATING
    assert undoing(saga.ok("car")) == ["car", "flight"]
    saga.undone("car")
    saga.undone("flight")
    saga.undone("quote")
    assert saga.state.status is Status.CANCELLED


def test_recovery_while_turning_back_drops_members_in_backoff_and_reruns_the_others() -> None:
    saga = trip()
    saga.ok("quote")
    saga.fail("flight", now=0.0)  # retry scheduled for later
    saga.fail("hotel", retryable=False)
    effects = outstanding(saga.definition, saga.state, 0.5)
    flight = next(a for a in saga.state.in_flight if a.step == "flight")
    assert flight.run_after is not None and flight.run_after > 0.5
    assert AbortAttempt(phase=ACTION, step="flight", attempt=2) in effects
    assert AbortAttempt(phase=ACTION, step="car", attempt=1) not in effects  # may have begun
    assert saga.run("car") in effects


def test_retriable_groups_run_after_the_pivot() -> None:
    saga = Instance(
        pivot("pay"),
        Parallel("notify", [retriable("email"), retriable("sms")]),
    )
    assert scheduled(saga.ok("pay")) == ["email", "sms"]
    with pytest.raises(CommandRejected):
        saga.send(msg.CancelSaga(reason="x"))
    saga.ok("sms")
    saga.ok("email")
    assert saga.state.status is Status.COMPLETED
    assert not any(e.phase is COMPENSATION for e in saga.state.in_flight)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([Parallel("g", [plain("a"), pivot("b")])], "a pivot cannot run in parallel"),
        (
            [pivot("p"), Parallel("g", [retriable("a"), plain("b")])],
            "follows a retriable step",
        ),
        ([plain("g"), Parallel("g", [plain("a")])], "may not share its name with a step"),
        (
            [Parallel("g", [plain("a")]), plain("x"), Parallel("g", [plain("b")])],
            "must be consecutive",
        ),
        ([Parallel("g", [plain("a")], limit=0)], "limit must be an int >= 1"),
        ([Parallel("g g", [plain("a")])], "a group name must match"),
        ([Step(name="a", action=act, group_limit=2)], "group_limit needs a group"),
    ],
)
def test_bad_groups_are_refused(steps: list[object], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        SagaDefinition("bad", steps)  # type: ignore[arg-type]


def test_members_must_share_a_kind() -> None:
    with pytest.raises(DefinitionError, match="all compensatable or all retriable"):
        SagaDefinition("bad", [Parallel("g", [plain("a"), retriable("b")])])
