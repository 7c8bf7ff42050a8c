"""The decider: ``decide(definition, state, message, now) -> Decision``.

Pure and synchronous: no I/O, no clock, no randomness. Everything a saga does is decided
here; the runtime commits the events and only then carries out the effects.
"""

from __future__ import annotations

import hashlib
import zlib

import attrs

from saga._core import events as ev
from saga._core import messages as msg
from saga._core.definition import SagaDefinition, StepKind
from saga._core.effects import AbortAttempt, Effect, Finish, RunAttempt
from saga._core.events import Phase
from saga._core.state import SagaState, Status, evolve
from saga.errors import CommandRejected

__all__ = ["Decision", "decide", "idempotency_key", "outstanding", "start"]


@attrs.frozen
class Decision:
    """The events to commit, the state they lead to, and the effects to carry out after."""

    events: tuple[ev.Event, ...]
    effects: tuple[Effect, ...]
    state: SagaState


def idempotency_key(saga_id: str, step: str, phase: Phase) -> str:
    """The key handed to every attempt of one step's action (or compensation).

    The same for every retry and every re-run after a crash; different for different
    (saga, step, phase). 32 hex digits, so it fits any service's key field.
    """
    raw = "\x00".join((saga_id, step, phase.value)).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _spread(saga_id: str, step: str, phase: Phase, attempt: int) -> float:
    """A number in [-1, 1], fixed per attempt: jitter without randomness."""
    raw = "\x00".join((saga_id, step, phase.value, str(attempt))).encode()
    return zlib.crc32(raw) / 0xFFFFFFFF * 2.0 - 1.0


class _Builder:
    """Collects events (applying each to the state at once) and effects."""

    def __init__(self, definition: SagaDefinition, state: SagaState) -> None:
        self.definition = definition
        self.state = state
        self.events: list[ev.Event] = []
        self.effects: list[Effect] = []

    def record(self, event: ev.Event) -> None:
        self.events.append(event)
        self.state = evolve(self.state, event)

    def schedule(self, phase: Phase, step: str, attempt: int, run_after: float | None) -> None:
        if phase is Phase.ACTION:
            self.record(ev.StepScheduled(step=step, attempt=attempt, run_after=run_after))
        else:
            self.record(ev.CompensationScheduled(step=step, attempt=attempt, run_after=run_after))
        self.effects.append(
            RunAttempt(
                phase=phase,
                step=step,
                attempt=attempt,
                idempotency_key=idempotency_key(self.state.saga_id, step, phase),
                run_after=run_after,
            )
        )

    def finish(self, event: ev.Event) -> None:
        self.record(event)
        self.effects.append(Finish(status=self.state.status))

    def decision(self) -> Decision:
        return Decision(tuple(self.events), tuple(self.effects), self.state)


def start(definition: SagaDefinition, saga_id: str, message: msg.StartSaga) -> Decision:
    """The first transition of a new instance."""
    started = ev.SagaStarted(saga=definition.name, version=definition.version, input=message.input)
    b = _Builder(definition, SagaState.started(saga_id, started))
    b.events.append(started)
    b.schedule(Phase.ACTION, definition.steps[0].name, 1, None)
    return b.decision()


def decide(
    definition: SagaDefinition, state: SagaState, message: msg.Message, now: float
) -> Decision:
    """Decide what ``message`` means for an instance in ``state`` at wall-clock time ``now``.

    Outcomes of attempts that are not in flight (duplicates, stale re-runs) decide nothing.

    Raises:
        CommandRejected: a cancel, suspend or resume that does not apply to ``state``.
    """
    b = _Builder(definition, state)
    match message:
        case msg.CompleteAttempt() | msg.FailAttempt():
            attempt = state.attempt(message.phase, message.step)
            if (
                state.status.terminal
                or state.status is Status.SUSPENDED  # resume re-issues the attempt
                or attempt is None
                or attempt.attempt != message.attempt
            ):
                return b.decision()
            if message.phase is Phase.ACTION:
                _on_action(b, message, now)
            else:
                _on_compensation(b, message, now)
        case msg.CancelSaga(reason=reason):
            _on_cancel(b, reason)
        case msg.SuspendSaga(reason=reason):
            if state.status.terminal:
                raise _rejected(state, "suspend", "it has finished")
            if state.status is not Status.SUSPENDED:
                b.record(ev.SagaSuspended(reason=reason))
        case msg.ResumeSaga():
            if state.status is not Status.SUSPENDED:
                raise _rejected(state, "resume", "only a suspended saga can be resumed")
            b.record(ev.SagaResumed())
            b.effects.extend(outstanding(b.state, now))
        case msg.StartSaga():
            raise _rejected(state, "start", "it has started already")
    return b.decision()


def outstanding(state: SagaState, now: float | None = None) -> tuple[Effect, ...]:
    """The effects to re-issue for an instance rebuilt from history (at least once).

    Given ``now``, a forward attempt of a saga whose cancellation was requested is dropped
    again if it is still waiting out its backoff: it cannot have begun, and the abort that
    the cancellation emitted died with the process.
    """
    if state.status not in (Status.RUNNING, Status.COMPENSATING):
        return ()
    effects: list[Effect] = []
    for a in state.in_flight:
        effects.append(
            RunAttempt(
                phase=a.phase,
                step=a.step,
                attempt=a.attempt,
                idempotency_key=idempotency_key(state.saga_id, a.step, a.phase),
                run_after=a.run_after,
            )
        )
        if (
            now is not None
            and state.cancel_reason is not None
            and a.phase is Phase.ACTION
            and a.run_after is not None
            and a.run_after > now
        ):
            effects.append(AbortAttempt(phase=a.phase, step=a.step, attempt=a.attempt))
    return tuple(effects)


def _rejected(state: SagaState, command: str, reason: str) -> CommandRejected:
    return CommandRejected(state.saga_id, command=command, status=state.status.value, reason=reason)


def _on_action(b: _Builder, message: msg.CompleteAttempt | msg.FailAttempt, now: float) -> None:
    state, definition = b.state, b.definition
    step = definition.step(message.step)
    if isinstance(message, msg.CompleteAttempt):
        b.record(ev.StepCompleted(step=step.name, attempt=message.attempt, result=message.result))
        if state.cancel_reason is not None and step.kind is StepKind.COMPENSATABLE:
            _compensate(b, state.cancel_reason, cancelled=True)
            return
        index = definition.index(step.name) + 1
        if index < len(definition.steps):
            b.schedule(Phase.ACTION, definition.steps[index].name, 1, None)
        else:
            b.finish(ev.SagaCompleted())
        return

    policy = step.action_policy
    retry = (
        message.retryable
        and policy.allows(message.attempt + 1)
        and (state.cancel_reason is None or step.kind is StepKind.RETRIABLE)
    )
    b.record(
        ev.StepFailed(
            step=step.name, attempt=message.attempt, error=message.error, will_retry=retry
        )
    )
    if retry:
        spread = _spread(state.saga_id, step.name, Phase.ACTION, message.attempt)
        delay = policy.interval(message.attempt, spread=spread)
        b.schedule(Phase.ACTION, step.name, message.attempt + 1, now + delay)
    elif step.kind is StepKind.RETRIABLE:
        # Past the pivot there is no way back and this error says there is no way forward.
        b.finish(ev.SagaFailed(reason=_describe(step.name, message.error)))
    elif state.cancel_reason is not None:
        _compensate(b, state.cancel_reason, cancelled=True)
    else:
        _compensate(b, _describe(step.name, message.error), cancelled=False)


def _on_compensation(
    b: _Builder, message: msg.CompleteAttempt | msg.FailAttempt, now: float
) -> None:
    state = b.state
    step = b.definition.step(message.step)
    if isinstance(message, msg.CompleteAttempt):
        b.record(
            ev.CompensationCompleted(step=step.name, attempt=message.attempt, result=message.result)
        )
        _next_compensation(b)
        return
    policy = step.compensation_retry
    retry = message.retryable and policy.allows(message.attempt + 1)
    b.record(
        ev.CompensationFailed(
            step=step.name, attempt=message.attempt, error=message.error, will_retry=retry
        )
    )
    if retry:
        spread = _spread(state.saga_id, step.name, Phase.COMPENSATION, message.attempt)
        delay = policy.interval(message.attempt, spread=spread)
        b.schedule(Phase.COMPENSATION, step.name, message.attempt + 1, now + delay)
    else:
        b.finish(
            ev.SagaFailed(
                reason=f"compensation of {_describe(step.name, message.error)}",
                pending=_to_undo(b),
            )
        )


def _on_cancel(b: _Builder, reason: str) -> None:
    state, definition = b.state, b.definition
    if state.status.terminal:
        raise _rejected(state, "cancel", "it has finished")
    if state.status is Status.SUSPENDED:
        raise _rejected(state, "cancel", "resume it first")
    if state.status is Status.COMPENSATING or state.cancel_reason is not None:
        return  # already on its way back: nothing more to do
    # Running, the saga has one forward attempt in flight. If it is the pivot, it may
    # complete and leave no way back; if it is a retriable step, the pivot is behind us.
    at_pivot = any(
        a.phase is Phase.ACTION and definition.step(a.step).kind is not StepKind.COMPENSATABLE
        for a in state.in_flight
    )
    if at_pivot:
        raise _rejected(state, "cancel", "it is at or past its pivot step and only goes forward")
    b.record(ev.CancelRequested(reason=reason))
    # The attempt in flight finishes (or is dropped before it begins): we must know whether
    # its effect happened before we can undo it.
    b.effects.extend(
        AbortAttempt(phase=a.phase, step=a.step, attempt=a.attempt) for a in state.in_flight
    )


def _compensate(b: _Builder, reason: str, *, cancelled: bool) -> None:
    b.record(ev.CompensationTriggered(reason=reason, cancelled=cancelled))
    _next_compensation(b)


def _to_undo(b: _Builder) -> tuple[str, ...]:
    """Completed steps with a compensation not yet done, newest first."""
    state = b.state
    return tuple(
        name
        for name in reversed(state.completed)
        if b.definition.step(name).compensation is not None and name not in state.compensated
    )


def _next_compensation(b: _Builder) -> None:
    todo = _to_undo(b)
    if todo:
        b.schedule(Phase.COMPENSATION, todo[0], 1, None)
    elif b.state.cancelled:
        b.finish(ev.SagaCancelled(reason=b.state.reason or "cancelled"))
    else:
        b.finish(ev.SagaCompensated())


def _describe(step: str, error: ev.ErrorInfo) -> str:
    return f"step {step!r} failed: {error.type}: {error.message}"
