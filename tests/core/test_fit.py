"""Does a history fit a definition? Histories made by the decider, checked against changed
definitions: what breaks a rule is reported exactly, what is harmless passes."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga._core import events as ev
from saga._core import messages as msg
from saga._core.definition import RetryPolicy, SagaDefinition, Step, StepKind
from saga._core.fit import Divergence, Rule, check_fits, divergence
from saga.errors import NonDeterminismError
from tests.core.test_decide import Instance, act, compensatable, pivot, plain, retriable
from tests.core.test_properties import Run, runs


def saga(*steps: Step, version: int = 1) -> SagaDefinition:
    return SagaDefinition("checkout", steps, version=version)


def shop() -> Instance:
    """reserve (undo) -> charge (undo) -> ship, as the decider runs it."""
    return Instance(compensatable("reserve"), compensatable("charge"), plain("ship"))


def compensated() -> Instance:
    """The shop saga after ship failed for good and charge, then reserve, were undone."""
    instance = shop()
    instance.ok("reserve")
    instance.ok("charge")
    instance.fail("ship", retryable=False)
    instance.undone("charge")
    instance.undone("reserve")
    return instance


def found(definition: SagaDefinition, instance: Instance) -> Divergence:
    result = divergence(definition, instance.history)
    assert result is not None, "the history fits, but should not"
    return result


# -- what fits --------------------------------------------------------------------------


def test_a_history_fits_the_definition_that_made_it() -> None:
    instance = compensated()
    assert divergence(instance.definition, instance.history) is None


def test_policies_timeouts_and_functions_do_not_matter() -> None:
    instance = Instance(
        compensatable("reserve", retry=RetryPolicy(max_attempts=5)),
        plain("charge", retry=RetryPolicy(max_attempts=5)),
    )
    instance.fail("reserve")  # retried under max_attempts=5
    instance.ok("reserve", attempt=2)
    instance.fail("charge")
    instance.fail("charge", attempt=2, retryable=False)  # for good: compensates
    instance.undo_failed("reserve")
    instance.undone("reserve", attempt=2)

    async def other(ctx: Any) -> None:
        return None

    changed = saga(
        Step(
            name="reserve",
            action=other,
            compensation=other,
            retry=RetryPolicy(max_attempts=1),
            compensation_retry=RetryPolicy(max_attempts=1),
            timeout=0.5,
        ),
        Step(name="charge", action=other, retry=RetryPolicy(max_attempts=None), timeout=9),
    )
    assert divergence(changed, instance.history) is None


def test_steps_appended_after_the_last_one_run_fit_a_running_and_a_finished_history() -> None:
    running = shop()
    running.ok("reserve")  # charge is in flight
    longer = saga(compensatable("reserve"), compensatable("charge"), plain("pack"), plain("ship"))
    assert divergence(longer, running.history) is None

    done = shop()
    for step in ("reserve", "charge", "ship"):
        done.ok(step)
    assert divergence(saga(*shop().definition.steps, plain("invoice")), done.history) is None


def test_a_compensation_added_to_a_step_not_reached_yet_fits() -> None:
    instance = Instance(plain("reserve"), compensatable("charge"), plain("ship"))
    instance.ok("reserve")
    instance.ok("charge")
    instance.fail("ship", retryable=False)  # compensating charge; reserve has nothing to undo
    both = saga(compensatable("reserve"), compensatable("charge"), plain("ship"))
    assert divergence(both, instance.history) is None


def test_suspension_and_resumption_are_transparent() -> None:
    instance = shop()
    instance.ok("reserve")
    instance.send(msg.SuspendSaga(reason="operator"))
    instance.send(msg.ResumeSaga())
    instance.ok("charge")
    assert divergence(instance.definition, instance.history) is None
    assert found(saga(compensatable("reserve"), plain("ship")), instance).sequence == 4


# -- what does not ---------------------------------------------------------------------


def test_the_saga_name_and_version_must_match() -> None:
    instance = shop()
    result = found(saga(*instance.definition.steps, version=2), instance)
    assert result.rule is Rule.SAGA
    assert str(result) == (
        "event 1 (SagaStarted): the history is of 'checkout' v1, the definition is "
        "'checkout' v2\n"
        "  definition: checkout v2\n"
        "  history:    checkout v1"
    )


def test_a_renamed_step_is_named_with_the_step_that_replaced_it() -> None:
    instance = shop()
    instance.ok("reserve")
    renamed = saga(compensatable("reserve"), compensatable("pay"), plain("ship"))
    result = found(renamed, instance)
    assert (result.rule, result.sequence, result.step) == (Rule.UNKNOWN_STEP, 4, "charge")
    assert str(result) == (
        "event 4 (StepScheduled 'charge'): step 2: the history ran 'charge', which the "
        "definition does not have (its step 2 is 'pay')\n"
        "  definition: reserve, pay, ship\n"
        "  history:    reserve, charge\n"
        "                       ^"
    )


def test_a_removed_step() -> None:
    instance = shop()
    instance.ok("reserve")
    result = found(saga(compensatable("reserve"), plain("ship")), instance)
    assert result.rule is Rule.UNKNOWN_STEP
    assert result.summary == (
        "event 4 (StepScheduled 'charge'): step 2: the history ran 'charge', which the "
        "definition does not have (its step 2 is 'ship')"
    )


def test_a_removed_last_step_of_a_finished_history() -> None:
    instance = shop()
    for step in ("reserve", "charge", "ship"):
        instance.ok(step)
    result = found(saga(compensatable("reserve"), compensatable("charge")), instance)
    assert result.summary == (
        "event 6 (StepScheduled 'ship'): step 3: the history ran 'ship', which the "
        "definition does not have"
    )


def test_reordered_steps() -> None:
    instance = shop()
    instance.ok("reserve")
    swapped = saga(compensatable("charge"), compensatable("reserve"), plain("ship"))
    result = found(swapped, instance)
    assert result.rule is Rule.STEP_ORDER
    assert str(result) == (
        "event 2 (StepScheduled 'reserve'): step 1: the history ran 'reserve', the "
        "definition's next step is 'charge'\n"
        "  definition: charge, reserve, ship\n"
        "  history:    reserve\n"
        "              ^"
    )


def test_a_step_inserted_before_one_the_history_ran() -> None:
    instance = shop()
    instance.ok("reserve")
    inserted = saga(
        compensatable("reserve"), compensatable("authorize"), compensatable("charge"), plain("ship")
    )
    assert str(found(inserted, instance)) == (
        "event 4 (StepScheduled 'charge'): step 2: the history ran 'charge', the "
        "definition's next step is 'authorize'\n"
        "  definition: reserve, authorize, charge, ship\n"
        "  history:    reserve, charge\n"
        "                       ^"
    )


def test_a_compensation_dropped_from_a_step_the_history_undid() -> None:
    no_undo = saga(compensatable("reserve"), plain("charge"), plain("ship"))
    result = found(no_undo, compensated())
    assert result.rule is Rule.NO_COMPENSATION
    assert str(result) == (
        "event 9 (CompensationScheduled 'charge'): compensation 1: the history undid "
        "'charge', which has no compensation in the definition\n"
        "  definition: undo reserve\n"
        "  history:    undo charge\n"
        "              ^"
    )


def test_a_compensation_added_to_a_step_the_history_passed_over() -> None:
    instance = Instance(compensatable("reserve"), plain("charge"), compensatable("pack"))
    instance.ok("reserve")
    instance.ok("charge")
    instance.fail("pack", retryable=False)
    instance.undone("reserve")  # charge had nothing to undo
    every = saga(compensatable("reserve"), compensatable("charge"), compensatable("pack"))
    result = found(every, instance)
    assert result.rule is Rule.COMPENSATION_ORDER
    assert str(result) == (
        "event 9 (CompensationScheduled 'reserve'): compensation 1: the history undid "
        "'reserve', the definition's next compensation is 'charge'\n"
        "  definition: undo charge, undo reserve\n"
        "  history:    undo reserve\n"
        "              ^"
    )


def test_a_step_the_history_undid_is_now_the_pivot() -> None:
    moved = saga(compensatable("reserve"), pivot("charge"), retriable("ship"))
    result = found(moved, compensated())
    # The compensation started after charge completed: past the pivot, by the definition.
    assert result.rule is Rule.COMPENSATED_PAST_PIVOT
    assert str(result) == (
        "event 8 (CompensationTriggered 'charge'): the history started compensating after "
        "'charge' completed, but the definition makes 'charge' a pivot step: past the pivot "
        "a saga only goes forward\n"
        "  definition: reserve, charge (pivot), ship (retriable)\n"
        "  history:    reserve, charge, ship (failed), compensate"
    )


def test_a_compensation_after_a_failure_of_a_step_now_retriable() -> None:
    moved = saga(compensatable("reserve"), compensatable("charge"), retriable("ship"))
    result = found(moved, compensated())
    assert result.rule is Rule.COMPENSATED_PAST_PIVOT
    assert result.summary == (
        "event 8 (CompensationTriggered 'ship'): the history started compensating when "
        "'ship' failed, but the definition makes 'ship' a retriable step: past the pivot a "
        "saga only goes forward (it fails instead)"
    )


def test_a_cancel_of_a_step_now_the_pivot() -> None:
    instance = shop()
    instance.ok("reserve")
    instance.send(msg.CancelSaga(reason="user"))  # while charge runs
    instance.ok("charge")
    moved = saga(compensatable("reserve"), pivot("charge"), retriable("ship"))
    result = found(moved, instance)
    assert result.rule is Rule.CANCELLED_PAST_PIVOT
    assert str(result) == (
        "event 5 (CancelRequested 'charge'): the history accepted a cancel while 'charge' "
        "ran, but the definition makes 'charge' a pivot step: it refuses to cancel at or "
        "past its pivot\n"
        "  definition: reserve, charge (pivot), ship (retriable)\n"
        "  history:    reserve, charge (running), cancel"
    )


def test_a_saga_failed_forward_at_a_step_now_compensatable() -> None:
    instance = Instance(compensatable("reserve"), pivot("charge"), retriable("ship"))
    instance.ok("reserve")
    instance.ok("charge")
    instance.fail("ship", retryable=False)  # past the pivot: the saga fails
    assert isinstance(instance.history[-1], ev.SagaFailed)
    no_pivot = saga(compensatable("reserve"), compensatable("charge"), plain("ship"))
    result = found(no_pivot, instance)
    assert result.rule is Rule.FAILED_FORWARD
    assert str(result) == (
        "event 8 (SagaFailed 'ship'): the history failed the saga when 'ship' failed, but "
        "the definition makes 'ship' a compensatable step: it compensates instead\n"
        "  definition: reserve, charge, ship\n"
        "  history:    reserve, charge, ship (failed), saga failed"
    )


def test_a_history_that_does_not_start_with_saga_started() -> None:
    definition = shop().definition
    assert divergence(definition, []) == Divergence(
        sequence=1,
        event="nothing",
        step=None,
        rule=Rule.SAGA,
        reason="a history starts with SagaStarted",
        expected="SagaStarted",
        actual="an empty history",
    )
    first = ev.StepScheduled(step="reserve", attempt=1)
    assert found_rule(definition, [first]) is Rule.SAGA


def found_rule(definition: SagaDefinition, history: list[Any]) -> Rule | None:
    result = divergence(definition, history)
    return None if result is None else result.rule


# -- the error the runtime raises --------------------------------------------------------


def test_check_fits_raises_non_determinism_error_with_the_diff() -> None:
    instance = shop()
    instance.ok("reserve")
    renamed = saga(compensatable("reserve"), compensatable("pay"), plain("ship"))
    check_fits(instance.definition, "order-1", instance.history)  # fits: returns
    with pytest.raises(NonDeterminismError) as caught:
        check_fits(renamed, "order-1", instance.history)
    error = caught.value
    assert (error.saga_id, error.saga, error.version) == ("order-1", "checkout", 1)
    assert (error.step, error.sequence) == ("charge", 4)
    assert error.detail == found(renamed, instance).summary
    assert error.diff == found(renamed, instance).diff
    assert str(error) == (
        "saga 'order-1': its history does not fit 'checkout' v1: event 4 (StepScheduled "
        "'charge'): step 2: the history ran 'charge', which the definition does not have "
        "(its step 2 is 'pay')\n"
        "  definition: reserve, pay, ship\n"
        "  history:    reserve, charge\n"
        "                       ^"
    )


def test_the_old_constructor_still_works() -> None:
    error = NonDeterminismError("p1", step="second", saga="pair", version=1)
    assert str(error) == "saga 'p1': its history names step 'second', which 'pair' v1 does not have"
    assert (error.sequence, error.diff) == (None, "")


# -- properties -------------------------------------------------------------------------

SETTINGS = settings(max_examples=200, deadline=None)


@SETTINGS
@given(runs())
def test_every_history_the_decider_makes_fits_its_definition(run: Run) -> None:
    for end in range(1, len(run.history) + 1):  # and so does every prefix: a live instance
        assert divergence(run.definition, run.history[:end]) is None


def _loosened(step: Step, policy: RetryPolicy) -> Step:
    return attrs.evolve(step, retry=policy, compensation_retry=policy, timeout=1.0)


@SETTINGS
@given(runs(), st.sampled_from([RetryPolicy(max_attempts=1), RetryPolicy(max_attempts=None)]))
def test_changed_policies_and_an_appended_step_still_fit(run: Run, policy: RetryPolicy) -> None:
    steps = [_loosened(step, policy) for step in run.definition.steps]
    appended = Step(name="appended_step", action=act, kind=StepKind.RETRIABLE)
    changed = attrs.evolve(run.definition, steps=[*steps, appended])
    assert divergence(changed, run.history) is None


@SETTINGS
@given(runs(), st.data())
def test_renaming_a_step_the_history_ran_never_fits(run: Run, data: st.DataObject) -> None:
    ran = [e.step for e in run.history if isinstance(e, ev.StepScheduled)]
    name = data.draw(st.sampled_from(ran))
    steps = [
        attrs.evolve(step, name="renamed_step") if step.name == name else step
        for step in run.definition.steps
    ]
    result = divergence(attrs.evolve(run.definition, steps=steps), run.history)
    assert result is not None
    assert (result.rule, result.step) == (Rule.UNKNOWN_STEP, name)
