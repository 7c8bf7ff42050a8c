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
from saga._core.definition import OnTimeout, SagaDefinition, Sleep, Step, StepKind, WaitForSignal
from saga._core.effects import AbortAttempt, ArmTimer, Effect, Finish, RunAttempt
from saga._core.events import Phase
from saga._core.state import SagaState, Status, evolve
from saga.errors import CommandRejected

__all__ = ["Decision", "decide", "idempotency_key", "outstanding", "start", "wake_at"]


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


def start(
    definition: SagaDefinition, saga_id: str, message: msg.StartSaga, *, now: float
) -> Decision:
    """The first transition of a new instance, started at ``now``."""
    started = ev.SagaStarted(saga=definition.name, version=definition.version, input=message.input)
    b = _Builder(definition, SagaState.started(saga_id, started))
    b.events.append(started)
    _begin(b, 0, now)
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
        case msg.FireTimer():
            _on_timer(b, message, now)
        case msg.SignalSaga(name=name, payload=payload, message_id=message_id):
            if state.status.terminal:
                raise _rejected(state, "signal", "it has finished")
            if message_id in state.signal_ids:
                return b.decision()  # delivered before
            b.record(ev.SignalReceived(name=name, payload=payload, message_id=message_id))
            if state.status is Status.RUNNING:  # suspended: kept until it resumes
                _deliver(b, now)
        case msg.CancelSaga(reason=reason):
            _on_cancel(b, reason, now)
        case msg.SuspendSaga(reason=reason):
            if state.status.terminal:
                raise _rejected(state, "suspend", "it has finished")
            if state.status is not Status.SUSPENDED:
                b.record(ev.SagaSuspended(reason=reason))
        case msg.ResumeSaga():
            if state.status is not Status.SUSPENDED:
                raise _rejected(state, "resume", "only a suspended saga can be resumed")
            b.record(ev.SagaResumed())
            b.effects.extend(outstanding(definition, b.state, now))
            if b.state.status is Status.RUNNING:
                _deliver(b, now)  # signals that came while it was suspended
        case msg.StartSaga():
            raise _rejected(state, "start", "it has started already")
    return b.decision()


def outstanding(
    definition: SagaDefinition, state: SagaState, now: float | None = None
) -> tuple[Effect, ...]:
    """The effects to re-issue for an instance rebuilt from history (at least once).

    Given ``now``, a forward attempt of a saga whose cancellation was requested is dropped
    again if it is still waiting out its backoff: it cannot have begun, and the abort that
    the cancellation emitted died with the process. A waiting step gets its timer again
    (an overdue one fires at once); a signal wait without a timeout needs nothing.
    """
    if state.status not in (Status.RUNNING, Status.COMPENSATING):
        return ()
    effects: list[Effect] = []
    for a in state.in_flight:
        if a.phase is Phase.ACTION and definition.step(a.step).wait is not None:
            if a.run_after is not None:
                effects.append(ArmTimer(step=a.step, attempt=a.attempt, at=a.run_after))
            continue
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


def wake_at(definition: SagaDefinition, state: SagaState, now: float) -> float | None:
    """When the instance next needs a driver if no message comes for it.

    ``now`` while an attempt is due or running; the time of the earliest timer (a sleep,
    a signal wait's timeout, a retry's backoff) while it only waits for time; ``None``
    while it waits for a message only (a signal without a timeout), or needs no driver.
    The store keeps it, so that an instance nobody holds in memory is woken on time.
    """
    if state.status not in (Status.RUNNING, Status.COMPENSATING):
        return None
    times: list[float] = []
    for a in state.in_flight:
        if a.phase is Phase.ACTION and definition.step(a.step).wait is not None:
            if a.run_after is not None:
                times.append(a.run_after)
        elif a.run_after is None or state.cancel_reason is not None:
            times.append(now)  # due now (a cancelled saga drops its backoff at once)
        else:
            times.append(a.run_after)
    return min(times, default=None)


def _rejected(state: SagaState, command: str, reason: str) -> CommandRejected:
    return CommandRejected(state.saga_id, command=command, status=state.status.value, reason=reason)


def _begin(b: _Builder, index: int, now: float) -> None:
    """Schedule step ``index`` (or complete the saga past the last step).

    A waiting step records its timer's time as ``run_after``; a signal wait whose signal
    came already takes it at once and the saga goes on.
    """
    definition = b.definition
    if index >= len(definition.steps):
        b.finish(ev.SagaCompleted())
        return
    step = definition.steps[index]
    match step.wait:
        case None:
            b.schedule(Phase.ACTION, step.name, 1, None)
        case Sleep(seconds=seconds):
            b.record(ev.StepScheduled(step=step.name, attempt=1, run_after=now + seconds))
            b.effects.append(ArmTimer(step=step.name, attempt=1, at=now + seconds))
        case WaitForSignal(timeout=timeout):
            deadline = None if timeout is None else now + timeout
            b.record(ev.StepScheduled(step=step.name, attempt=1, run_after=deadline))
            if not _deliver(b, now) and deadline is not None:
                b.effects.append(ArmTimer(step=step.name, attempt=1, at=deadline))


def _completed(b: _Builder, step: Step, attempt: int, result: object, now: float) -> None:
    """A forward attempt completed: go on, or turn back if a cancellation waits for it."""
    b.record(ev.StepCompleted(step=step.name, attempt=attempt, result=result))
    cancel_reason = b.state.cancel_reason
    if cancel_reason is not None and step.kind is StepKind.COMPENSATABLE:
        _compensate(b, cancel_reason, cancelled=True)
        return
    _begin(b, b.definition.index(step.name) + 1, now)


def _deliver(b: _Builder, now: float) -> bool:
    """Hand a waiting step the oldest signal it waits for, if one came; True if it took one."""
    for a in b.state.in_flight:
        if a.phase is not Phase.ACTION:
            continue
        step = b.definition.step(a.step)
        if isinstance(step.wait, WaitForSignal):
            signal = b.state.signal(step.wait.signal)
            if signal is not None:
                b.record(ev.SignalConsumed(step=step.name, message_id=signal.message_id))
                _completed(b, step, a.attempt, signal.payload, now)
                return True
    return False


def _on_timer(b: _Builder, message: msg.FireTimer, now: float) -> None:
    state = b.state
    attempt = state.attempt(Phase.ACTION, message.step)
    if state.status is not Status.RUNNING or attempt is None or attempt.attempt != message.attempt:
        return  # stale: the wait ended otherwise (or the saga is suspended: resume re-arms)
    step = b.definition.step(message.step)
    match step.wait:
        case Sleep():
            _completed(b, step, message.attempt, None, now)
        case WaitForSignal(on_timeout=OnTimeout.CONTINUE, timeout_result=result):
            _completed(b, step, message.attempt, result, now)
        case WaitForSignal(signal=name, timeout=timeout):
            error = ev.ErrorInfo("saga.SignalTimeout", f"no signal {name!r} within {timeout}s")
            _on_action(
                b,
                msg.FailAttempt(
                    phase=Phase.ACTION,
                    step=step.name,
                    attempt=message.attempt,
                    error=error,
                    retryable=False,
                ),
                now,
            )


def _on_action(b: _Builder, message: msg.CompleteAttempt | msg.FailAttempt, now: float) -> None:
    state, definition = b.state, b.definition
    step = definition.step(message.step)
    if isinstance(message, msg.CompleteAttempt):
        _completed(b, step, message.attempt, message.result, now)
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


def _on_cancel(b: _Builder, reason: str, now: float) -> None:
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
    # A waiting step has done nothing that needs undoing: its wait ends here.
    for a in state.in_flight:
        if a.phase is Phase.ACTION and definition.step(a.step).wait is not None:
            error = ev.ErrorInfo("saga.Cancelled", f"the wait ended: {reason}")
            failed = msg.FailAttempt(
                phase=a.phase, step=a.step, attempt=a.attempt, error=error, retryable=False
            )
            _on_action(b, failed, now)


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
