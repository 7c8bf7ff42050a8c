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
from saga._core.definition import (
    ChildSaga,
    ContinueAsNew,
    OnTimeout,
    ParentClose,
    SagaDefinition,
    Sleep,
    Step,
    StepKind,
    WaitForSignal,
)
from saga._core.effects import (
    AbortAttempt,
    ArmTimer,
    CancelChild,
    Effect,
    Finish,
    RunAttempt,
    StartChild,
    StartNext,
)
from saga._core.events import Phase
from saga._core.state import SagaState, Status, evolve
from saga.errors import CommandRejected

__all__ = [
    "Decision",
    "child_id",
    "decide",
    "idempotency_key",
    "next_run_id",
    "outstanding",
    "start",
    "wake_at",
]


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


def child_id(saga_id: str, step: str) -> str:
    """The id of the child saga that step ``step`` of instance ``saga_id`` starts: the same
    after every crash, so that a rebuilt parent finds its child rather than starting one."""
    return f"{saga_id}/{step}"


def next_run_id(saga_id: str) -> str:
    """The id of the run that follows run ``saga_id`` of a saga that continues as new:
    ``order-1`` -> ``order-1#2`` -> ``order-1#3``..."""
    base, sep, n = saga_id.rpartition("#")
    if sep and n.isdigit() and not n.startswith("0"):
        return f"{base}#{int(n) + 1}"
    return f"{saga_id}#2"


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
    started = ev.SagaStarted(
        saga=definition.name,
        version=definition.version,
        input=message.input,
        parent=message.parent,
    )
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
        case msg.ChildFinished():
            _on_child(b, message, now)
        case msg.NextStarted(step=name, next_id=next_id):
            attempt = state.attempt(Phase.ACTION, name)
            step = definition.step(name)
            if (
                state.status is Status.RUNNING
                and attempt is not None
                and isinstance(step.wait, ContinueAsNew)
                and next_id == next_run_id(state.saga_id)
            ):
                b.record(ev.SagaContinued(next_id=next_id))
                _completed(b, step, attempt.attempt, {"continued_as": next_id}, now)
        case msg.ChildCancelDelivered(child_id=child):
            if child in state.cancelling:
                b.record(ev.ChildCancelDelivered(child_id=child))
                if b.state.status is Status.COMPENSATING:
                    _next_compensation(b)
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

    Given ``now``, a forward attempt of a saga whose cancellation was requested (or that
    turned back while members of a parallel group ran) is dropped again if it is still
    waiting out its backoff: it cannot have begun, and the abort emitted then died with
    the process. A waiting step gets its timer again
    (an overdue one fires at once); a signal wait without a timeout needs nothing.
    """
    if state.status not in (Status.RUNNING, Status.COMPENSATING):
        return ()
    effects: list[Effect] = []
    # Children whose cancel did not reach them yet (the process died first).
    effects.extend(CancelChild(child_id=c, reason="its parent stopped") for c in state.cancelling)
    for a in state.in_flight:
        wait = definition.step(a.step).wait if a.phase is Phase.ACTION else None
        if isinstance(wait, ChildSaga):  # a no-op if it was started: the parent hears of it
            child = child_id(state.saga_id, a.step)
            effects.append(StartChild(step=a.step, attempt=a.attempt, child_id=child))
            continue
        if isinstance(wait, ContinueAsNew):  # a no-op if the next run was started
            next_id = next_run_id(state.saga_id)
            effects.append(StartNext(step=a.step, attempt=a.attempt, next_id=next_id))
            continue
        if wait is not None:
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
            and (state.cancel_reason is not None or state.status is Status.COMPENSATING)
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
    A child saga's parent waits for a message (the child's end). The store keeps it, so
    that an instance nobody holds in memory is woken on time.
    """
    if state.status not in (Status.RUNNING, Status.COMPENSATING):
        return None
    times: list[float] = [now] if state.cancelling else []
    for a in state.in_flight:
        wait = definition.step(a.step).wait if a.phase is Phase.ACTION else None
        if isinstance(wait, ContinueAsNew):
            times.append(now)  # it has work to do: start the next run
        elif wait is not None:
            if a.run_after is not None:
                times.append(a.run_after)
        elif a.run_after is None or (
            a.phase is Phase.ACTION
            and (state.cancel_reason is not None or state.status is Status.COMPENSATING)
        ):
            times.append(now)  # due now (a saga turning back drops a forward backoff at once)
        else:
            times.append(a.run_after)
    return min(times, default=None)


def _rejected(state: SagaState, command: str, reason: str) -> CommandRejected:
    return CommandRejected(state.saga_id, command=command, status=state.status.value, reason=reason)


def _begin(b: _Builder, index: int, now: float) -> None:
    """Schedule step ``index`` (its group's first members, for a parallel group), or
    complete the saga past the last step."""
    definition = b.definition
    if index >= len(definition.steps):
        b.finish(ev.SagaCompleted())
        return
    step = definition.steps[index]
    if step.group is not None:
        _fill_group(b, step, now)
    else:
        _schedule_step(b, step, now)


def _fill_group(b: _Builder, member: Step, now: float) -> None:
    """Schedule the members of ``member``'s group that have not started, in order, while
    fewer than its limit run."""
    members = b.definition.group(member.name)
    limit = member.group_limit or len(members)
    while b.state.status is Status.RUNNING:
        # Looked at afresh each time: a member may complete at once (a signal it waits
        # for came already) and move the saga on.
        state = b.state
        running = {a.step for a in state.in_flight if a.phase is Phase.ACTION}
        todo = [m for m in members if m.name not in running and m.name not in state.completed]
        if not todo or sum(m.name in running for m in members) >= limit:
            return
        _schedule_step(b, todo[0], now)


def _schedule_step(b: _Builder, step: Step, now: float) -> None:
    """Schedule a step's first attempt.

    A waiting step records its timer's time as ``run_after``; a signal wait whose signal
    came already takes it at once and the saga goes on.
    """
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
        case ChildSaga():
            b.record(ev.StepScheduled(step=step.name, attempt=1))
            child = child_id(b.state.saga_id, step.name)
            b.effects.append(StartChild(step=step.name, attempt=1, child_id=child))
        case ContinueAsNew():
            b.record(ev.StepScheduled(step=step.name, attempt=1))
            next_id = next_run_id(b.state.saga_id)
            b.effects.append(StartNext(step=step.name, attempt=1, next_id=next_id))


def _completed(b: _Builder, step: Step, attempt: int, result: object, now: float) -> None:
    """A forward attempt completed: go on, or turn back if a cancellation waits for it."""
    b.record(ev.StepCompleted(step=step.name, attempt=attempt, result=result))
    state = b.state
    if state.status is Status.COMPENSATING:  # a group member that ran on: undo it too
        _next_compensation(b)
        return
    if state.cancel_reason is not None and step.kind is StepKind.COMPENSATABLE:
        _compensate(b, state.cancel_reason, cancelled=True)
        return
    members = b.definition.group(step.name)
    if members and not all(m.name in state.completed for m in members):
        _fill_group(b, step, now)
        return
    last = members[-1] if members else step
    _begin(b, b.definition.index(last.name) + 1, now)


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
    if attempt.run_after is not None and now < attempt.run_after:
        # Early (a clock that runs ahead of the one that armed it): arm it again.
        b.effects.append(ArmTimer(step=message.step, attempt=attempt.attempt, at=attempt.run_after))
        return
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


def _on_child(b: _Builder, message: msg.ChildFinished, now: float) -> None:
    state = b.state
    attempt = state.attempt(Phase.ACTION, message.step)
    step = b.definition.step(message.step) if attempt is not None else None
    if (
        state.status is not Status.RUNNING  # (suspended: the inbox keeps it until resumed)
        or step is None
        or attempt is None
        or not isinstance(step.wait, ChildSaga)
        or message.child_id != child_id(state.saga_id, step.name)
    ):
        return  # the parent stopped waiting for it (cancelled, turned back) or a repeat
    if message.status == Status.COMPLETED.value:
        _completed(b, step, attempt.attempt, message.results, now)
        return
    why = f"child {message.child_id!r} ended {message.status}"
    error = ev.ErrorInfo("saga.ChildFailed", f"{why}: {message.reason}" if message.reason else why)
    failed = msg.FailAttempt(
        phase=Phase.ACTION, step=step.name, attempt=attempt.attempt, error=error, retryable=False
    )
    _on_action(b, failed, now)


def _on_action(b: _Builder, message: msg.CompleteAttempt | msg.FailAttempt, now: float) -> None:
    state, definition = b.state, b.definition
    step = definition.step(message.step)
    if isinstance(message, msg.CompleteAttempt):
        _completed(b, step, message.attempt, message.result, now)
        return

    if state.status is Status.COMPENSATING:  # a group member that ran on: nothing to undo
        b.record(
            ev.StepFailed(
                step=step.name, attempt=message.attempt, error=message.error, will_retry=False
            )
        )
        _next_compensation(b)
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
    # Running, the saga has forward attempts in flight (several in a parallel group). If
    # one is the pivot, it may complete and leave no way back; if one is a retriable step,
    # the pivot is behind us.
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
    _end_waits(b, reason)
    if not any(a.phase is Phase.ACTION for a in b.state.in_flight):  # they were all waits
        _compensate(b, reason, cancelled=True)


def _end_waits(b: _Builder, reason: str) -> None:
    """End the waits in flight: a waiting step has done nothing that needs undoing. A
    child saga is cancelled too, unless its step abandons it."""
    for a in b.state.in_flight:
        wait = b.definition.step(a.step).wait if a.phase is Phase.ACTION else None
        if wait is None:
            continue
        error = ev.ErrorInfo("saga.Cancelled", f"the wait ended: {reason}")
        b.record(ev.StepFailed(step=a.step, attempt=a.attempt, error=error, will_retry=False))
        # A next run that may have been started (the start and this cancel take turns) is
        # cancelled too: the loop stops.
        if isinstance(wait, ContinueAsNew) or (
            isinstance(wait, ChildSaga) and wait.on_parent_close is ParentClose.CANCEL
        ):
            child = (
                next_run_id(b.state.saga_id)
                if isinstance(wait, ContinueAsNew)
                else child_id(b.state.saga_id, a.step)
            )
            b.record(ev.ChildCancelRequested(step=a.step, child_id=child))
            b.effects.append(CancelChild(child_id=child, reason=f"its parent stopped: {reason}"))


def _compensate(b: _Builder, reason: str, *, cancelled: bool) -> None:
    b.record(ev.CompensationTriggered(reason=reason, cancelled=cancelled))
    # Members of a parallel group still in flight: those not begun are dropped, those
    # running finish (what they did must be known before it is undone), waits end here.
    forward = [a for a in b.state.in_flight if a.phase is Phase.ACTION]
    b.effects.extend(AbortAttempt(phase=a.phase, step=a.step, attempt=a.attempt) for a in forward)
    _end_waits(b, reason)
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
    """Schedule what is to be undone next, newest first; a parallel group's members are
    undone at the same time (at most its limit at once), before the steps before it."""
    state = b.state
    if any(a.phase is Phase.ACTION for a in state.in_flight):
        return  # group members still running: what they did decides what to undo
    flying = [a.step for a in state.in_flight if a.phase is Phase.COMPENSATION]
    todo = [name for name in _to_undo(b) if name not in flying]
    if not flying and not todo:
        if state.cancelling:
            return  # it ends once its children heard they are cancelled
        if state.cancelled:
            b.finish(ev.SagaCancelled(reason=state.reason or "cancelled"))
        else:
            b.finish(ev.SagaCompensated())
        return
    head = flying[0] if flying else todo[0]
    members = b.definition.group(head)
    if not members:
        if not flying:
            b.schedule(Phase.COMPENSATION, head, 1, None)
        return
    names = {m.name for m in members}
    room = (members[0].group_limit or len(members)) - len(flying)
    for name in [n for n in todo if n in names][: max(room, 0)]:
        b.schedule(Phase.COMPENSATION, name, 1, None)


def _describe(step: str, error: ev.ErrorInfo) -> str:
    return f"step {step!r} failed: {error.type}: {error.message}"
