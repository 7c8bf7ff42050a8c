"""Properties of the pure core, checked on generated definitions and message sequences.

A *run* starts an instance of a generated definition and feeds its decider a generated
sequence of messages: outcomes of the attempt in flight (success, retryable or
non-retryable failure), stale and duplicate outcomes, cancellation, and suspension
followed by resumption. Every property below is checked on such runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga._core import events as ev
from saga._core import messages as msg
from saga._core.decide import Decision, decide, idempotency_key, outstanding, start
from saga._core.definition import SagaDefinition, StepKind
from saga._core.effects import Effect, Finish, RunAttempt
from saga._core.events import ErrorInfo, Phase
from saga._core.state import SagaState, Status, fold
from saga.errors import CommandRejected
from tests.core.strategies import definitions, json_results, saga_ids

SETTINGS = settings(max_examples=200, deadline=None)

#: Failures a driver reports for one (phase, step) before it lets that attempt succeed:
#: retriable steps (and ``max_attempts=None`` policies) retry forever, so a run only ends
#: if failures are finite.
FAIL_LIMIT = 4

ERROR = ErrorInfo("builtins.RuntimeError", "boom")
OUTCOMES = (msg.CompleteAttempt, msg.FailAttempt)


#: Seconds that pass before each message of a run.
_advance = st.floats(0, 50)


# -- runs ----------------------------------------------------------------------------


@attrs.frozen
class Turn:
    """One message handed to ``decide``, and what came of it."""

    before: SagaState
    snapshot: SagaState  # a copy of ``before`` taken before the call
    message: msg.Message
    now: float
    history: tuple[ev.Event, ...]  # every event before this turn
    decision: Decision | None
    rejected: CommandRejected | None

    @property
    def is_outcome(self) -> bool:
        return isinstance(self.message, OUTCOMES)

    @property
    def stale(self) -> bool:
        """An outcome of no attempt in flight: a duplicate, a stale re-run, a late report."""
        if not isinstance(self.message, OUTCOMES):
            return False
        current = self.before.attempt(self.message.phase, self.message.step)
        return (
            self.before.status.terminal
            or current is None
            or current.attempt != self.message.attempt
        )


@attrs.frozen
class Run:
    definition: SagaDefinition
    saga_id: str
    started: Decision
    turns: tuple[Turn, ...]
    history: tuple[ev.Event, ...]
    state: SagaState

    def __repr__(self) -> str:
        """The definition and the messages, one a line: what a failing example shows."""
        lines = [f"Run of {self.definition.name!r} as {self.saga_id!r}:"]
        for step in self.definition.steps:
            lines.append(
                f"  step {step.name!r} {step.kind.value}"
                f"{' +compensation' if step.compensation else ''}"
                f" retry={step.retry.max_attempts} compensation_retry="
                f"{step.compensation_retry.max_attempts}"
            )
        lines.append(f"  start -> {[type(e).__name__ for e in self.started.events]}")
        for turn in self.turns:
            if turn.decision is None:
                outcome = f"rejected: {turn.rejected}"
            else:
                outcome = str([type(e).__name__ for e in turn.decision.events])
            lines.append(f"  {turn.message!r} -> {outcome}")
        lines.append(f"  final status: {self.state.status.value}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # Hypothesis prints this
        printer.text(repr(self))

    def decisions(self) -> Iterator[Decision]:
        yield self.started
        for turn in self.turns:
            if turn.decision is not None:
                yield turn.decision

    def checkpoints(self) -> Iterator[tuple[tuple[ev.Event, ...], SagaState]]:
        """(events so far, live state) after the start and after every turn."""
        yield self.started.events, self.started.state
        for turn in self.turns:
            if turn.decision is not None:
                yield (*turn.history, *turn.decision.events), turn.decision.state
            else:
                yield turn.history, turn.before

    def effects(self) -> Iterator[Effect]:
        for decision in self.decisions():
            yield from decision.effects


class _Driver:
    """Feeds one instance generated messages; records every turn."""

    def __init__(self, draw: st.DrawFn, definition: SagaDefinition, saga_id: str) -> None:
        self.draw = draw
        self.definition = definition
        self.saga_id = saga_id
        self.started = start(definition, saga_id, msg.StartSaga(input=draw(json_results)), now=0.0)
        self.state = self.started.state
        self.history: list[ev.Event] = list(self.started.events)
        self.turns: list[Turn] = []
        self.delivered: list[msg.Message] = []
        self.failures: Counter[tuple[Phase, str]] = Counter()
        self.now = 0.0

    def run(self) -> Run:
        return Run(
            self.definition,
            self.saga_id,
            self.started,
            tuple(self.turns),
            tuple(self.history),
            self.state,
        )

    def send(self, message: msg.Message) -> None:
        self.now += self.draw(_advance)
        before = self.state
        snapshot = attrs.evolve(before, results=dict(before.results))
        history = tuple(self.history)
        try:
            decision = decide(self.definition, before, message, self.now)
        except CommandRejected as exc:
            self.turns.append(Turn(before, snapshot, message, self.now, history, None, exc))
            return
        self.turns.append(Turn(before, snapshot, message, self.now, history, decision, None))
        self.history.extend(decision.events)
        self.state = decision.state
        if isinstance(message, OUTCOMES):
            self.delivered.append(message)

    # -- actions ----------------------------------------------------------------------

    def outcome(self) -> None:
        """Report the outcome of an attempt in flight; failures are finite per attempt."""
        attempt = self.draw(st.sampled_from(self.state.in_flight))
        key = (attempt.phase, attempt.step)
        kind = "success"
        if self.failures[key] < FAIL_LIMIT:
            kind = self.draw(st.sampled_from(["success", "retryable", "non-retryable"]))
        if kind == "success":
            self.send(
                msg.CompleteAttempt(
                    phase=attempt.phase,
                    step=attempt.step,
                    attempt=attempt.attempt,
                    result=self.draw(json_results),
                )
            )
        else:
            self.failures[key] += 1
            self.send(
                msg.FailAttempt(
                    phase=attempt.phase,
                    step=attempt.step,
                    attempt=attempt.attempt,
                    error=ERROR,
                    retryable=kind == "retryable",
                )
            )

    def stale(self) -> None:
        """An outcome for no attempt in flight: wrong number, idle step, or a duplicate."""
        state = self.state
        idle = [
            (phase, step.name)
            for step in self.definition.steps
            for phase in Phase
            if state.attempt(phase, step.name) is None
        ]
        choices = ["idle"]
        if state.in_flight:
            choices.append("wrong-attempt")
        if self.delivered:
            choices.append("duplicate")
        match self.draw(st.sampled_from(choices)):
            case "duplicate":
                self.send(self.draw(st.sampled_from(self.delivered)))
                return
            case "wrong-attempt":
                current = self.draw(st.sampled_from(state.in_flight))
                phase, step = current.phase, current.step
                others = [n for n in range(1, current.attempt + 4) if n != current.attempt]
                number = self.draw(st.sampled_from(others))
            case _:
                phase, step = self.draw(st.sampled_from(idle))
                number = self.draw(st.integers(1, 5))
        if self.draw(st.booleans()):
            message: msg.Message = msg.CompleteAttempt(
                phase=phase, step=step, attempt=number, result=self.draw(json_results)
            )
        else:
            message = msg.FailAttempt(
                phase=phase,
                step=step,
                attempt=number,
                error=ERROR,
                retryable=self.draw(st.booleans()),
            )
        self.send(message)

    def cancel(self) -> None:
        self.send(msg.CancelSaga(reason=self.draw(st.sampled_from(["user", "timeout"]))))

    def suspend_and_resume(self) -> None:
        """Suspend, maybe try something that must not run while suspended, then resume."""
        self.send(msg.SuspendSaga(reason="operator"))
        match self.draw(st.sampled_from(["nothing", "suspend", "cancel", "stale"])):
            case "suspend":
                self.send(msg.SuspendSaga(reason="again"))
            case "cancel":
                self.cancel()
            case "stale":
                self.stale()
        self.send(msg.ResumeSaga())


@st.composite
def runs(
    draw: st.DrawFn,
    *,
    actions: tuple[str, ...] = ("outcome", "outcome", "outcome", "stale", "cancel", "suspend"),
    max_turns: int = 60,
    pivot_then_retriable: bool = False,
) -> Run:
    definition = draw(definitions(pivot_then_retriable=pivot_then_retriable))
    driver = _Driver(draw, definition, draw(saga_ids))
    act: dict[str, Callable[[], None]] = {
        "outcome": driver.outcome,
        "stale": driver.stale,
        "cancel": driver.cancel,
        "suspend": driver.suspend_and_resume,
    }
    for _ in range(max_turns):
        if driver.state.status.terminal or not driver.state.in_flight:
            break
        act[draw(st.sampled_from(actions))]()
    if driver.state.status.terminal:
        # A finished instance hears late outcomes and commands too.
        for _ in range(draw(st.integers(0, 3))):
            late = draw(st.sampled_from(["stale", "cancel", "suspend", "resume"]))
            if late == "resume":
                driver.send(msg.ResumeSaga())
            elif late == "suspend":
                driver.send(msg.SuspendSaga(reason="late"))
            else:
                act[late]()
    return driver.run()


# -- helpers -------------------------------------------------------------------------


def _compensable(definition: SagaDefinition, completed: tuple[str, ...]) -> list[str]:
    """Completed steps that have a compensation, newest first: the order to undo them in."""
    return [s for s in reversed(completed) if definition.step(s).compensation is not None]


def _past_point_of_no_return(run: Run) -> bool:
    """A pivot (or any retriable step) was reached and completed, or a retriable step began.

    From there on the saga only goes forward.
    """
    for event in run.history:
        match event:
            case ev.StepCompleted(step=step) if (
                run.definition.step(step).kind is not StepKind.COMPENSATABLE
            ):
                return True
            case ev.StepScheduled(step=step) if (
                run.definition.step(step).kind is StepKind.RETRIABLE
            ):
                return True
    return False


# -- properties ----------------------------------------------------------------------


@SETTINGS
@given(runs())
def test_replay_equals_live_state(run: Run) -> None:
    for events, live in run.checkpoints():
        assert fold(run.saga_id, events) == live


@SETTINGS
@given(runs())
def test_sequence_counts_events(run: Run) -> None:
    for events, live in run.checkpoints():
        assert live.sequence == len(events)
    for turn in run.turns:
        if turn.decision is not None:
            assert turn.decision.state.sequence == turn.before.sequence + len(turn.decision.events)


@SETTINGS
@given(runs())
def test_compensation_order_is_reverse_completion_order(run: Run) -> None:
    state = run.state
    undone = [e.step for e in run.history if isinstance(e, ev.CompensationCompleted)]
    assert list(state.compensated) == undone
    compensations_began = any(isinstance(e, ev.CompensationTriggered) for e in run.history)
    if not state.status.terminal:
        # Whatever was undone so far was undone newest first.
        if compensations_began:
            assert undone == _compensable(run.definition, state.completed)[: len(undone)]
        return
    expected = _compensable(run.definition, state.completed)
    if state.status is Status.COMPLETED:
        assert state.completed == tuple(s.name for s in run.definition.steps)
        assert not compensations_began
        assert undone == []
    elif _past_point_of_no_return(run):
        # Past the pivot a failure cannot be undone: the saga fails with nothing pending.
        assert state.status is Status.FAILED
        assert not compensations_began
        assert undone == []
        assert state.pending == ()
    elif state.status is Status.FAILED:
        # A compensation gave up: what was undone, then what is pending, is the full list.
        failed = run.history[-1]
        assert isinstance(failed, ev.SagaFailed)
        assert failed.pending == state.pending
        assert undone + list(state.pending) == expected
        assert state.pending, "a compensation failed, so at least its step is pending"
    else:
        assert state.status in (Status.COMPENSATED, Status.CANCELLED)
        assert undone == expected
        assert state.pending == ()


@SETTINGS
@given(runs())
def test_decide_is_deterministic(run: Run) -> None:
    input_ = run.history[0]
    assert isinstance(input_, ev.SagaStarted)
    again = start(run.definition, run.saga_id, msg.StartSaga(input=input_.input), now=0.0)
    assert again == run.started
    for turn in run.turns:
        if turn.rejected is None:
            assert decide(run.definition, turn.before, turn.message, turn.now) == turn.decision
            continue
        with pytest.raises(CommandRejected) as again:
            decide(run.definition, turn.before, turn.message, turn.now)
        first, second = turn.rejected, again.value
        assert (first.saga_id, first.command, first.status, first.reason) == (
            second.saga_id,
            second.command,
            second.status,
            second.reason,
        )


@SETTINGS
@given(runs())
def test_stale_and_duplicate_outcomes_decide_nothing(run: Run) -> None:
    for turn in run.turns:
        if turn.stale:
            assert turn.decision is not None, "an outcome is never rejected"
            assert turn.decision.events == ()
            assert turn.decision.effects == ()
            assert turn.decision.state == turn.before


@SETTINGS
@given(runs())
def test_rejected_commands_change_nothing(run: Run) -> None:
    for turn in run.turns:
        if turn.rejected is None:
            continue
        assert isinstance(turn.message, msg.CancelSaga | msg.SuspendSaga | msg.ResumeSaga)
        assert turn.before == turn.snapshot
        assert turn.rejected.saga_id == run.saga_id
        assert turn.rejected.status == turn.before.status.value
    # The run went on from the state the rejection left alone: replay still agrees.
    assert fold(run.saga_id, run.history) == run.state


@SETTINGS
@given(runs())
def test_an_unfinished_instance_has_one_attempt_in_flight(run: Run) -> None:
    for _, state in run.checkpoints():
        if state.status.terminal:
            assert state.in_flight == ()
        else:
            assert len(state.in_flight) == 1


@SETTINGS
@given(runs(actions=("outcome", "outcome", "outcome", "outcome", "cancel"), max_turns=400))
def test_every_instance_finishes_once(run: Run) -> None:
    # The driver reports at most FAIL_LIMIT failures per (phase, step), then a success:
    # every step's action and compensation each take at most FAIL_LIMIT + 1 outcomes.
    # (Cancellations take turns too, but make no attempt run.)
    steps = len(run.definition.steps)
    bound = 2 * steps * (FAIL_LIMIT + 1)
    outcomes = [t for t in run.turns if t.is_outcome and not t.stale]
    assert run.state.status.terminal, f"not finished after {len(run.turns)} messages"
    assert len(outcomes) <= bound
    finishes = [e for e in run.effects() if isinstance(e, Finish)]
    assert finishes == [Finish(status=run.state.status)]
    # ... and it is the last effect of the decision that recorded the terminal event.
    final = next(d for d in run.decisions() if d.state.status.terminal)
    assert final.effects[-1] == finishes[0]
    terminal = (ev.SagaCompleted, ev.SagaCompensated, ev.SagaCancelled, ev.SagaFailed)
    assert isinstance(final.events[-1], terminal)
    assert sum(isinstance(e, terminal) for e in run.history) == 1


@SETTINGS
@given(runs())
def test_finish_is_emitted_once_when_terminal(run: Run) -> None:
    finishes = [e for e in run.effects() if isinstance(e, Finish)]
    if run.state.status.terminal:
        assert finishes == [Finish(status=run.state.status)]
    else:
        assert finishes == []


@SETTINGS
@given(runs())
def test_idempotency_key_is_per_step_and_phase(run: Run) -> None:
    attempts = [e for e in run.effects() if isinstance(e, RunAttempt)]
    attempts += [
        e
        for t in run.turns
        if t.decision is not None and isinstance(t.message, msg.ResumeSaga)
        for e in outstanding(run.definition, t.decision.state)
        if isinstance(e, RunAttempt)
    ]
    keys: dict[tuple[str, Phase], set[str]] = {}
    for attempt in attempts:
        keys.setdefault((attempt.step, attempt.phase), set()).add(attempt.idempotency_key)
    for (step, phase), seen in keys.items():
        assert seen == {idempotency_key(run.saga_id, step, phase)}
    assert len({key for seen in keys.values() for key in seen}) == len(keys)


@SETTINGS
@given(definitions(), st.lists(saga_ids, min_size=2, max_size=2, unique=True))
def test_idempotency_keys_differ_across_steps_phases_and_sagas(
    definition: SagaDefinition, ids: list[str]
) -> None:
    keys = [
        idempotency_key(saga_id, step.name, phase)
        for saga_id in ids
        for step in definition.steps
        for phase in Phase
    ]
    assert len(set(keys)) == len(keys)
    assert all(len(key) == 32 and int(key, 16) >= 0 for key in keys)
    first = [
        start(definition, saga_id, msg.StartSaga(input=None), now=0.0).effects[0] for saga_id in ids
    ]
    assert isinstance(first[0], RunAttempt)
    assert isinstance(first[1], RunAttempt)
    assert first[0].idempotency_key != first[1].idempotency_key


@SETTINGS
@given(runs())
def test_retries_wait_within_the_policy_band(run: Run) -> None:
    for turn in run.turns:
        if turn.decision is None:
            continue
        for effect in turn.decision.effects:
            if not isinstance(effect, RunAttempt) or isinstance(turn.message, msg.ResumeSaga):
                continue
            if effect.attempt == 1:
                assert effect.run_after is None
                continue
            step = run.definition.step(effect.step)
            policy = step.action_policy if effect.phase is Phase.ACTION else step.compensation_retry
            assert effect.run_after is not None
            # Never before now, never later than the longest jittered interval.
            assert turn.now <= effect.run_after
            assert effect.run_after - turn.now <= policy.max_interval * (1 + policy.jitter) + 1e-6


@SETTINGS
@given(runs())
def test_attempts_follow_the_retry_policy(run: Run) -> None:
    definition = run.definition
    for event in run.history:
        match event:
            case ev.StepScheduled(step=name, attempt=n):
                assert definition.step(name).action_policy.allows(n)
            case ev.CompensationScheduled(step=name, attempt=n):
                assert definition.step(name).compensation_retry.allows(n)
    for turn in run.turns:
        if turn.stale or not isinstance(turn.message, msg.FailAttempt):
            continue
        assert turn.decision is not None
        failed = turn.decision.events[0]
        assert isinstance(failed, ev.StepFailed | ev.CompensationFailed)
        step = definition.step(turn.message.step)
        if isinstance(failed, ev.StepFailed):
            policy = step.action_policy
            # A cancellation stops retries, except past the pivot where only forward remains.
            may = turn.before.cancel_reason is None or step.kind is StepKind.RETRIABLE
        else:
            policy, may = step.compensation_retry, True
        expected = turn.message.retryable and policy.allows(turn.message.attempt + 1) and may
        assert failed.will_retry is expected
        retried = [e for e in turn.decision.effects if isinstance(e, RunAttempt)]
        if expected:
            assert [(e.step, e.phase, e.attempt) for e in retried] == [
                (step.name, turn.message.phase, turn.message.attempt + 1)
            ]


@SETTINGS
@given(runs())
def test_resume_reissues_the_attempts_in_flight(run: Run) -> None:
    for turn in run.turns:
        if turn.decision is None or not isinstance(turn.message, msg.ResumeSaga):
            continue
        state = turn.decision.state
        assert turn.decision.events == (ev.SagaResumed(),)
        assert turn.decision.effects == outstanding(run.definition, state)
        reissued = {
            (e.phase, e.step, e.attempt) for e in turn.decision.effects if isinstance(e, RunAttempt)
        }
        assert reissued == {(a.phase, a.step, a.attempt) for a in state.in_flight}


@SETTINGS
@given(runs(actions=("outcome", "outcome", "cancel", "stale", "suspend")))
def test_nothing_is_compensated_after_the_pivot(run: Run) -> None:
    # Cancellations are frequent here: a cancel while the pivot runs, then one after it.
    definition = run.definition
    past_pivot = False
    for event in run.history:
        if isinstance(event, ev.StepCompleted) and (
            definition.step(event.step).kind is not StepKind.COMPENSATABLE
        ):
            past_pivot = True
        if past_pivot:
            assert not isinstance(
                event,
                ev.CompensationTriggered | ev.CompensationScheduled | ev.CompensationCompleted,
            )
        if isinstance(event, ev.CompensationScheduled):
            assert definition.step(event.step).kind is StepKind.COMPENSATABLE


def _at_or_past_the_pivot(definition: SagaDefinition, state: SagaState) -> bool:
    """The pivot (or a step after it) completed, or an attempt of one is in flight."""
    return any(
        definition.step(name).kind is not StepKind.COMPENSATABLE for name in state.completed
    ) or any(
        a.phase is Phase.ACTION and definition.step(a.step).kind is not StepKind.COMPENSATABLE
        for a in state.in_flight
    )


@SETTINGS
@given(runs(actions=("outcome", "cancel"), pivot_then_retriable=True))
def test_a_cancellation_at_or_after_the_pivot_is_rejected(run: Run) -> None:
    # Every state the run went through is probed, not only those where it chose to cancel.
    for _, state in run.checkpoints():
        if state.status.terminal or not _at_or_past_the_pivot(run.definition, state):
            continue
        with pytest.raises(CommandRejected, match="cannot cancel") as rejected:
            decide(run.definition, state, msg.CancelSaga(reason="late"), 1e9)
        assert rejected.value.command == "cancel"
    # So once the pivot completed, the saga completes or fails, never compensates.
    if run.state.status.terminal and _at_or_past_the_pivot(run.definition, run.state):
        assert run.state.status in (Status.COMPLETED, Status.FAILED)
        assert run.state.compensated == ()
