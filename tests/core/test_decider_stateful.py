"""The pure decider as a state machine: instances driven by a world that misbehaves.

``test_properties`` checks properties on linear runs (one message after another, each
about the attempt in flight). Here Hypothesis interleaves at will what a runtime and its
surroundings do to an instance: runners report the attempts they were handed, late, twice,
out of order, after a crash lost them; time jumps by seconds or by decades; operators
cancel, suspend and resume; the process crashes and recovers from history alone.

The *world* is what a runtime would hold for the instance: every ``RunAttempt`` emitted so
far, the runners still alive (a crash loses them and recovery re-issues
``outstanding(definition, state, now)``, yet a lost runner may still report later), the attempts they
were told to abort, the outcomes already delivered, and the clock. Once an instance has
finished it still hears late messages, until the machine moves on to the next instance
of a fresh definition: most instances finish in a few steps.

After every step the invariants check the whole history of the current instance: replay
equals the live state, the history is well formed, attempts are numbered and were handed
to a runner, each outcome recorded is of the attempt then in flight (once), compensations
undo completed steps newest first and nothing past the pivot, status changes are legal, a
finished saga stays as it is, idempotency keys are stable, and every attempt in flight is
in some runner's hands. Three *what-if probes* then ask the decider, without committing,
what it would do if the attempt in flight ended now, if the process crashed now, or if an
operator suspended and resumed it now: every state a run passes through is checked, not
only the few that the run happens to take further.

Replaying a failure exactly: the report lists the steps (with each decision's events as
notes) and, since ``print_blob`` is on, a line ``@reproduce_failure('<version>', b'...')``.
Put that decorator on ``DeciderMachine`` (``from hypothesis import reproduce_failure``)
and rerun this module. ``pytest tests/core/test_decider_stateful.py --hypothesis-seed=N``
repeats a whole search (Hypothesis prints the seed to use when a failure cannot be
replayed from the blob); ``--hypothesis-show-statistics`` shows where the time went.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import attrs
from hypothesis import Phase as HypothesisPhase
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from saga._core import events as ev
from saga._core import messages as msg
from saga._core.decide import Decision, decide, outstanding, start
from saga._core.definition import SagaDefinition, StepKind
from saga._core.effects import AbortAttempt, Effect, Finish, RunAttempt
from saga._core.events import ErrorInfo, Phase
from saga._core.state import SagaState, Status, evolve, fold
from saga.errors import CommandRejected
from tests.core.strategies import definitions, json_results, saga_ids

#: Definitions where compensatable steps mostly have a compensation: more to undo.
DEFINITIONS = definitions(compensations=st.sampled_from([True, True, True, False]))

ACTION, COMPENSATION = Phase.ACTION, Phase.COMPENSATION
ERROR = ErrorInfo("builtins.RuntimeError", "boom")
DROPPED = ErrorInfo("builtins.RuntimeError", "aborted before it began")

Key = tuple[Phase, str, int]  # one attempt: (phase, step, attempt number)
Outcome = msg.CompleteAttempt | msg.FailAttempt

OUTCOME_EVENTS = (
    ev.StepCompleted,
    ev.StepFailed,
    ev.CompensationCompleted,
    ev.CompensationFailed,
)
SCHEDULED_EVENTS = (ev.StepScheduled, ev.CompensationScheduled)
TERMINAL_EVENTS = (
    ev.SagaCompleted,
    ev.SagaCompensated,
    ev.SagaCancelled,
    ev.SagaFailed,
)
#: What must never follow the point of no return.
BACKWARD_EVENTS = (
    ev.CancelRequested,
    ev.CompensationTriggered,
    ev.CompensationScheduled,
    ev.CompensationCompleted,
    ev.CompensationFailed,
    ev.SagaCompensated,
    ev.SagaCancelled,
)
#: What must never follow CompensationTriggered.
FORWARD_EVENTS = (ev.StepScheduled, ev.StepCompleted, ev.StepFailed, ev.CancelRequested)
ACTIVE = (Status.RUNNING, Status.COMPENSATING)

#: Status changes other than suspension (which goes back to where it came from).
NEXT_STATUS = {
    Status.RUNNING: {Status.COMPENSATING, Status.COMPLETED, Status.FAILED},
    Status.COMPENSATING: {Status.COMPENSATED, Status.CANCELLED, Status.FAILED},
}

#: What a lost runner reports: success, a retryable failure, a non-retryable one.
REPORTS = st.sampled_from(["completed", "completed", "failed", "fatal"])
#: Small steps (retries fall due) and huge ones (days, decades: every backoff is over).
SECONDS = st.one_of(
    st.floats(0, 5, allow_nan=False, allow_infinity=False),
    st.sampled_from([60.0, 3600.0, 3 * 86400.0, 1e9]),
)
MAX_SUSPENSIONS = 1  # per instance


def _key(item: RunAttempt | AbortAttempt | Outcome) -> Key:
    return (item.phase, item.step, item.attempt)


def _event_key(event: ev.Event) -> Key:
    assert isinstance(event, OUTCOME_EVENTS + SCHEDULED_EVENTS)
    action = isinstance(event, ev.StepScheduled | ev.StepCompleted | ev.StepFailed)
    return (ACTION if action else COMPENSATION, event.step, event.attempt)


def _compensable(definition: SagaDefinition, completed: tuple[str, ...]) -> list[str]:
    """Completed steps that have a compensation, newest first: the order to undo them in."""
    return [name for name in reversed(completed) if definition.step(name).compensation]


def _to_undo(definition: SagaDefinition, state: SagaState) -> list[str]:
    """What is left to undo, in order."""
    done = set(state.compensated)
    return [name for name in _compensable(definition, state.completed) if name not in done]


class DeciderMachine(RuleBasedStateMachine):
    """Instances of generated definitions, one at a time, and the world around them."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.instances = 0

    # -- plumbing ----------------------------------------------------------------------

    def _begin(self, definition: SagaDefinition, saga_id: str, payload: object) -> None:
        """Start an instance, in a world that knows nothing yet."""
        self.instances += 1
        self.definition, self.saga_id = definition, saga_id
        self.history: list[ev.Event] = []
        # Every event after SagaStarted, with the state it was applied to.
        self.trace: list[tuple[SagaState, ev.Event]] = []
        self.emitted: dict[Key, RunAttempt] = {}  # every attempt ever handed to a runner
        self.running: dict[Key, RunAttempt] = {}  # ... whose runner is alive and has not reported
        self.aborted: set[Key] = set()  # ... that the live runner was told to drop if not begun
        self.delivered: list[Outcome] = []
        self.keys: dict[tuple[str, Phase], set[str]] = {}
        self.finishes: list[Finish] = []
        self.finished: tuple[SagaState, int] | None = None  # the terminal state, and its length
        self.suspensions = 0
        decision = start(definition, saga_id, msg.StartSaga(input=payload), now=self.now)
        note(f"instance {self.instances}: {saga_id!r} -> {_names(decision.events)}")
        first = decision.events[0]
        assert isinstance(first, ev.SagaStarted)
        self.history.append(first)
        self._commit(SagaState.started(saga_id, first), decision.events[1:], decision.state)
        for effect in decision.effects:
            self._effect(effect)

    def _commit(self, before: SagaState, events: tuple[ev.Event, ...], after: SagaState) -> None:
        state = before
        for event in events:
            self.trace.append((state, event))
            state = evolve(state, event)
        self.history.extend(events)
        self.state = after

    def _effect(self, effect: Effect) -> None:
        match effect:
            case RunAttempt():
                key = _key(effect)
                self.emitted[key] = effect
                self.running[key] = effect  # a fresh runner: it has not been told to abort
                self.aborted.discard(key)
                self.keys.setdefault((effect.step, effect.phase), set()).add(effect.idempotency_key)
            case AbortAttempt():
                self.aborted.add(_key(effect))
            case Finish():
                self.finishes.append(effect)

    def _decide(self, message: msg.Message) -> Decision:
        before = self.state
        try:
            decision = decide(self.definition, before, message, self.now)
        except CommandRejected as exc:
            note(f"t={self.now:g} {message!r} -> rejected: {exc}")
            raise
        note(f"t={self.now:g} {message!r} -> {_names(decision.events)}")
        self._commit(before, decision.events, decision.state)
        for effect in decision.effects:
            self._effect(effect)
        return decision

    def _deliver(self, message: Outcome) -> Decision:
        """Hand the decider an outcome: it acts on it iff it reports the attempt in flight."""
        before = self.state
        current = before.attempt(message.phase, message.step)
        acts = (
            before.status in ACTIVE and current is not None and current.attempt == message.attempt
        )
        decision = self._decide(message)
        self.delivered.append(message)
        if acts:
            assert decision.events, f"{message!r} reports the attempt in flight"
            assert _event_key(decision.events[0]) == _key(message)
        else:
            assert decision == Decision((), (), before), f"{message!r} must decide nothing"
        return decision

    def _report(self, attempt: RunAttempt, report: str, data: st.DataObject) -> Outcome:
        if report == "completed":
            result = data.draw(json_results, label="result")
            return msg.CompleteAttempt(
                phase=attempt.phase,
                step=attempt.step,
                attempt=attempt.attempt,
                result=result,
            )
        return msg.FailAttempt(
            phase=attempt.phase,
            step=attempt.step,
            attempt=attempt.attempt,
            error=DROPPED if report == "dropped" else ERROR,
            retryable=report == "failed",
        )

    def _due(self, attempt: RunAttempt) -> bool:
        return attempt.run_after is None or attempt.run_after <= self.now

    def _due_runners(self) -> list[RunAttempt]:
        """Live runners whose attempt may have begun: it is not waiting out a backoff."""
        return [a for a in self.running.values() if self._due(a)]

    def _aborted_runners(self) -> list[RunAttempt]:
        return [a for k, a in self.running.items() if k in self.aborted]

    def _superseded(self) -> list[RunAttempt]:
        """Emitted attempts of a (phase, step) for which a later attempt was emitted."""
        latest: dict[tuple[Phase, str], int] = {}
        for phase, step, n in self.emitted:
            latest[phase, step] = max(n, latest.get((phase, step), 0))
        return [a for (p, s, n), a in self.emitted.items() if n < latest[p, s]]

    def _past_the_pivot(self, state: SagaState) -> bool:
        """At or past the point of no return: a non-compensatable step completed or runs."""
        forward = (
            *state.completed,
            *(a.step for a in state.in_flight if a.phase is ACTION),
        )
        return any(
            self.definition.step(name).kind is not StepKind.COMPENSATABLE for name in forward
        )

    def _events(self, *types: type) -> Iterator[tuple[int, ev.Event]]:
        return ((i, e) for i, e in enumerate(self.history) if isinstance(e, types))

    # -- instances start -----------------------------------------------------------------

    @initialize(definition=DEFINITIONS, saga_id=saga_ids, payload=json_results)
    def first_instance(self, definition: SagaDefinition, saga_id: str, payload: object) -> None:
        self._begin(definition, saga_id, payload)

    @rule(data=st.data())
    def next_instance(self, data: st.DataObject) -> None:
        """The finished instance is left alone; the next one starts (its own runners too)."""
        if not self.state.status.terminal:
            return
        definition = data.draw(DEFINITIONS, label="definition")
        saga_id = data.draw(saga_ids, label="saga_id")
        self._begin(definition, saga_id, data.draw(json_results, label="payload"))

    # -- runners report ------------------------------------------------------------------

    def _run(self, data: st.DataObject, candidates: list[RunAttempt]) -> RunAttempt:
        attempt = data.draw(st.sampled_from(candidates), label="attempt")
        del self.running[_key(attempt)]  # a runner reports once
        return attempt

    @rule(data=st.data())
    def complete_attempt(self, data: st.DataObject) -> None:
        """A live runner whose attempt was due reports that it returned."""
        if not self._due_runners():
            return
        attempt = self._run(data, self._due_runners())
        self._deliver(self._report(attempt, "completed", data))

    @rule(data=st.data(), reports=st.integers(1, 4))
    def quiet_period(self, data: st.DataObject, reports: int) -> None:
        """Nothing disturbs the runtime for a while: due attempts report success in turn."""
        for _ in range(reports):
            due = self._due_runners()
            if not due:
                return
            attempt = self._run(data, due)
            self._deliver(self._report(attempt, "completed", data))

    @rule(data=st.data(), retryable=st.sampled_from([True, True, True, False]))
    def fail_attempt(self, data: st.DataObject, retryable: bool) -> None:
        """A live runner whose attempt was due reports that it raised."""
        if not self._due_runners():
            return
        attempt = self._run(data, self._due_runners())
        self._deliver(self._report(attempt, "failed" if retryable else "fatal", data))

    @rule(data=st.data())
    def drop_attempt(self, data: st.DataObject) -> None:
        """A live runner told to abort drops its attempt before it began."""
        if not self._aborted_runners():
            return
        attempt = self._run(data, self._aborted_runners())
        self._deliver(self._report(attempt, "dropped", data))

    @rule(data=st.data())
    def report_late(self, data: st.DataObject) -> None:
        """A runner the world lost track of (a crashed process's, a duplicate) reports."""
        attempt = data.draw(st.sampled_from(list(self.emitted.values())), label="attempt")
        self._deliver(self._report(attempt, data.draw(REPORTS, label="report"), data))

    @rule(data=st.data())
    def report_out_of_order(self, data: st.DataObject) -> None:
        """An older attempt reports after a newer one of the same step was scheduled."""
        if not self._superseded():
            return
        attempt = data.draw(st.sampled_from(self._superseded()), label="attempt")
        decision = self._deliver(self._report(attempt, data.draw(REPORTS, label="report"), data))
        assert decision.events == (), "a superseded attempt is never in flight again"

    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """A message already delivered arrives again (at-least-once delivery)."""
        if not self.delivered:
            return
        self._deliver(data.draw(st.sampled_from(self.delivered), label="message"))

    @rule(seconds=SECONDS)
    def advance_time(self, seconds: float) -> None:
        self.now += seconds

    # -- operators -----------------------------------------------------------------------

    def _command(self, message: msg.Message, *, applies: bool) -> Decision | None:
        """Send a command; check that it was rejected exactly when it does not apply."""
        before = self.state
        rejected: CommandRejected | None = None
        try:
            decision = self._decide(message)
        except CommandRejected as exc:
            rejected = exc
        if rejected is None:
            assert applies, f"{message!r} must be rejected in {before.status.value}"
            return decision
        assert not applies, f"{message!r} was rejected in {before.status.value}: {rejected}"
        assert (rejected.saga_id, rejected.command, rejected.status) == (
            self.saga_id,
            msg.command_name(message),
            before.status.value,
        )
        assert self.state is before
        return None

    @rule(reason=st.sampled_from(["user", "timeout"]))
    def cancel(self, reason: str) -> None:
        before = self.state
        applies = before.status in ACTIVE and not (
            before.status is Status.RUNNING
            and before.cancel_reason is None
            and self._past_the_pivot(before)
        )
        decision = self._command(msg.CancelSaga(reason=reason), applies=applies)
        if decision is None:
            return
        if before.status is Status.COMPENSATING or before.cancel_reason is not None:
            assert decision.events == () and decision.effects == (), "already on its way back"
        else:
            assert decision.events == (ev.CancelRequested(reason=reason),)
            assert decision.effects == tuple(
                AbortAttempt(phase=a.phase, step=a.step, attempt=a.attempt)
                for a in before.in_flight
            )

    @rule(reason=st.sampled_from(["operator", "restarts"]))
    def suspend(self, reason: str) -> None:
        before = self.state
        # A suspended saga hears only no-ops until it is resumed: one such stretch per
        # instance is enough (and suspending it again is a no-op that test_properties checks).
        if before.status is Status.SUSPENDED or self.suspensions >= MAX_SUSPENSIONS:
            return
        decision = self._command(msg.SuspendSaga(reason=reason), applies=not before.status.terminal)
        if decision is None:
            return
        self.suspensions += 1
        assert decision.events == (ev.SagaSuspended(reason=reason),)
        assert decision.effects == ()

    @rule()
    def resume(self) -> None:
        before = self.state
        decision = self._command(msg.ResumeSaga(), applies=before.status is Status.SUSPENDED)
        if decision is None:
            return
        assert decision.events == (ev.SagaResumed(),)
        assert decision.state.status is before.resume_to
        reissued = {_key(e) for e in decision.effects if isinstance(e, RunAttempt)}
        assert reissued == {(a.phase, a.step, a.attempt) for a in before.in_flight}

    @rule()
    def crash(self) -> None:
        """The process dies with its runners; recovery has the history and the clock only."""
        recovered = fold(self.saga_id, self.history)
        assert recovered == self.state
        self.state = recovered
        self.running.clear()
        self.aborted.clear()
        effects = outstanding(self.definition, recovered, self.now)
        note(f"t={self.now:g} crash -> re-issued {effects!r}")
        for effect in effects:
            assert not isinstance(effect, Finish)
            self._effect(effect)
        reissued = {_key(e) for e in effects if isinstance(e, RunAttempt)}
        if recovered.status in ACTIVE:
            assert reissued == {(a.phase, a.step, a.attempt) for a in recovered.in_flight}
        else:
            assert effects == ()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def replay_equals_live_state(self) -> None:
        assert fold(self.saga_id, self.history) == self.state
        assert self.state.sequence == len(self.history)

    @invariant()
    def history_is_well_formed(self) -> None:
        history, state = self.history, self.state
        first = history[0]
        assert first == ev.SagaStarted(
            saga=self.definition.name,
            version=self.definition.version,
            input=first.input,
        )
        assert not any(isinstance(e, ev.SagaStarted) for e in history[1:])
        ends = [i for i, _ in self._events(*TERMINAL_EVENTS)]
        assert ends in ([], [len(history) - 1]), "one terminal event at most, and it is last"
        # Suspended and Resumed alternate, and nothing else is recorded in between.
        suspended = False
        for event in history:
            if isinstance(event, ev.SagaSuspended):
                assert not suspended
                suspended = True
            elif isinstance(event, ev.SagaResumed):
                assert suspended
                suspended = False
            else:
                assert not suspended, f"{event!r} recorded while suspended"
        assert suspended is (state.status is Status.SUSPENDED)
        cancels = [i for i, _ in self._events(ev.CancelRequested)]
        triggers = list(self._events(ev.CompensationTriggered))
        assert len(cancels) <= 1 and len(triggers) <= 1
        for i, trigger in triggers:
            assert isinstance(trigger, ev.CompensationTriggered)
            # Triggered by the outcome recorded just before it; by the cancel, if any.
            assert isinstance(history[i - 1], ev.StepCompleted | ev.StepFailed)
            assert trigger.cancelled is bool(cancels)
            assert not any(isinstance(e, FORWARD_EVENTS) for e in history[i:])
        # Forward steps complete in definition order, each once.
        names = [step.name for step in self.definition.steps]
        assert list(state.completed) == names[: len(state.completed)]
        if state.status is Status.COMPLETED:
            assert list(state.completed) == names
        if state.status is Status.CANCELLED:
            assert cancels
        if state.status is Status.COMPENSATED:
            assert not cancels

    @invariant()
    def attempts_are_numbered_and_issued(self) -> None:
        """Attempts of one (phase, step) are 1, 2, 3...; each was handed to a runner."""
        numbers: dict[tuple[Phase, str], int] = {}
        for i, event in self._events(*SCHEDULED_EVENTS):
            assert isinstance(event, SCHEDULED_EVENTS)
            phase, step, n = _event_key(event)
            assert n == numbers.get((phase, step), 0) + 1
            numbers[phase, step] = n
            issued = self.emitted.get((phase, step, n))
            assert issued is not None, f"{event!r} recorded, but no runner was handed it"
            assert issued.run_after == event.run_after
            if n > 1:  # a retry follows the failure that asked for it
                failed = self.history[i - 1]
                assert isinstance(failed, ev.StepFailed | ev.CompensationFailed)
                assert _event_key(failed) == (phase, step, n - 1) and failed.will_retry
        for i, event in self._events(ev.StepFailed, ev.CompensationFailed):
            assert isinstance(event, ev.StepFailed | ev.CompensationFailed)
            if event.will_retry:
                phase, step, n = _event_key(event)
                assert _event_key(self.history[i + 1]) == (phase, step, n + 1)

    @invariant()
    def outcomes_match_attempts_in_flight(self) -> None:
        """Each outcome recorded is of the attempt then in flight, and recorded once."""
        recorded: set[Key] = set()
        for before, event in self.trace:
            if not isinstance(event, OUTCOME_EVENTS):
                continue
            phase, step, n = key = _event_key(event)
            current = before.attempt(phase, step)
            assert current is not None and current.attempt == n, f"{event!r} not in flight"
            assert before.status in ACTIVE
            assert key in self.emitted
            assert key not in recorded, f"outcome of {key} recorded twice"
            recorded.add(key)

    @invariant()
    def compensations_undo_completed_steps_newest_first(self) -> None:
        state, definition = self.state, self.definition
        undone = [e.step for e in self.history if isinstance(e, ev.CompensationCompleted)]
        assert tuple(undone) == state.compensated
        for before, event in self.trace:
            if isinstance(event, ev.CompensationScheduled):
                # Only completed steps with a compensation, newest first, one at a time.
                todo = _to_undo(definition, before)
                assert todo and event.step == todo[0], (event, todo)
                assert before.status is Status.COMPENSATING
        expected = _compensable(definition, state.completed)
        assert undone == expected[: len(undone)]
        if state.status in (Status.COMPENSATED, Status.CANCELLED):
            assert undone == expected and state.pending == ()
        if state.status is Status.FAILED and any(self._events(ev.CompensationTriggered)):
            assert state.pending and undone + list(state.pending) == expected

    @invariant()
    def nothing_is_undone_past_the_pivot(self) -> None:
        """Past the point of no return a saga only goes forward: it completes or fails."""
        definition, state = self.definition, self.state
        past = False
        for event in self.history:
            assert not (past and isinstance(event, BACKWARD_EVENTS)), event
            match event:
                case ev.StepCompleted(step=name) if (
                    definition.step(name).kind is not StepKind.COMPENSATABLE
                ):
                    past = True
                case ev.StepScheduled(step=name) if (
                    definition.step(name).kind is StepKind.RETRIABLE
                ):
                    past = True
        if state.status is Status.FAILED and not any(self._events(ev.CompensationTriggered)):
            assert past, "only a step past the point of no return fails a saga outright"
        if past and state.status.terminal:
            assert state.status in (Status.COMPLETED, Status.FAILED)
            assert state.compensated == () and state.pending == ()

    @invariant()
    def status_path_is_legal(self) -> None:
        path = [before.status for before, _ in self.trace] + [self.state.status]
        resume_to: Status | None = None
        for old, new in itertools.pairwise(path):
            if old is new:
                continue
            assert not old.terminal, f"{old.value} -> {new.value}"
            if new is Status.SUSPENDED:
                resume_to = old
            elif old is Status.SUSPENDED:
                assert new is resume_to, f"suspended in {resume_to}, resumed to {new.value}"
            else:
                assert new in NEXT_STATUS[old], f"{old.value} -> {new.value}"
        if Status.COMPENSATING in path:
            assert Status.RUNNING not in path[path.index(Status.COMPENSATING) :]

    @invariant()
    def a_finished_saga_stays_finished(self) -> None:
        state = self.state
        if not state.status.terminal:
            assert len(state.in_flight) == 1, state.in_flight
            assert self.finishes == []
            return
        assert state.in_flight == ()
        assert self.finishes == [Finish(status=state.status)]
        if self.finished is None:
            self.finished = (state, len(self.history))
        assert (state, len(self.history)) == self.finished

    @invariant()
    def idempotency_keys_are_stable(self) -> None:
        """One key per (step, phase), across retries, resumes and crash re-runs."""
        for keys in self.keys.values():
            assert len(keys) == 1, keys
        distinct = {key for keys in self.keys.values() for key in keys}
        assert len(distinct) == len(self.keys)

    @invariant()
    def every_attempt_in_flight_has_a_runner(self) -> None:
        """Nothing is stuck: an active saga's attempt in flight is in some runner's hands."""
        if self.state.status not in ACTIVE:
            return
        for a in self.state.in_flight:
            runner = self.running.get((a.phase, a.step, a.attempt))
            assert runner is not None, f"{a!r} has no runner"
            assert runner.run_after == a.run_after

    # -- what-if probes: asked at every step, never committed ------------------------

    @invariant()
    def what_if_the_attempt_in_flight_ended_now(self) -> None:
        """Probe, without committing: had the attempt in flight returned, or failed for good.

        Most runs end before a compensation with much to undo; every state they pass
        through could have led to one, so each is asked what it would do next.
        """
        state = self.state
        if state.status not in ACTIVE:
            return
        for a in state.in_flight:
            for message in (
                msg.CompleteAttempt(phase=a.phase, step=a.step, attempt=a.attempt),
                msg.FailAttempt(
                    phase=a.phase,
                    step=a.step,
                    attempt=a.attempt,
                    error=ERROR,
                    retryable=False,
                ),
            ):
                decision = decide(self.definition, state, message, self.now)
                self._check_transition(state, decision.events)

    @invariant()
    def what_if_the_process_crashed_now(self) -> None:
        """Recovery from history alone would re-issue exactly the attempts in flight."""
        state = fold(self.saga_id, self.history)
        effects = outstanding(self.definition, state, self.now)
        if state.status not in ACTIVE:
            assert effects == ()
            return
        reissued = [e for e in effects if isinstance(e, RunAttempt)]
        assert {_key(e) for e in reissued} == {
            (a.phase, a.step, a.attempt) for a in state.in_flight
        }
        for e in reissued:
            assert self.keys.get((e.step, e.phase)) == {e.idempotency_key}

    @invariant()
    def what_if_an_operator_suspended_and_resumed_now(self) -> None:
        """A suspension and a resumption leave the instance as it was, its attempts re-issued."""
        state = self.state
        if state.status not in ACTIVE:
            return
        suspended = decide(self.definition, state, msg.SuspendSaga(reason="probe"), self.now)
        resumed = decide(self.definition, suspended.state, msg.ResumeSaga(), self.now)
        assert resumed.state == attrs.evolve(state, sequence=state.sequence + 2)
        reissued = {_key(e) for e in resumed.effects if isinstance(e, RunAttempt)}
        assert reissued == {(a.phase, a.step, a.attempt) for a in state.in_flight}

    def _check_transition(self, state: SagaState, events: tuple[ev.Event, ...]) -> None:
        """Undo newest first, only what completed and has a compensation; never past the pivot."""
        for event in events:
            if isinstance(event, ev.CompensationScheduled):
                todo = _to_undo(self.definition, state)
                assert todo and event.step == todo[0], (event, todo)
            if isinstance(event, BACKWARD_EVENTS):
                assert not any(
                    self.definition.step(name).kind is not StepKind.COMPENSATABLE
                    for name in state.completed
                ), event
            if isinstance(event, ev.SagaCompensated | ev.SagaCancelled):
                assert _to_undo(self.definition, state) == []
            state = evolve(state, event)


def _names(events: tuple[ev.Event, ...]) -> list[str]:
    return [type(e).__name__ for e in events]


DeciderMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    print_blob=True,
    # Explaining a stateful failure replays it hundreds of times: too slow to be worth it.
    phases=[
        HypothesisPhase.explicit,
        HypothesisPhase.reuse,
        HypothesisPhase.generate,
        HypothesisPhase.target,
        HypothesisPhase.shrink,
    ],
)
TestDecider = DeciderMachine.TestCase
