"""The state of one instance, and how each event changes it.

``evolve`` is the only place state changes; replay is ``fold`` of the history.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from saga._core import events as ev
from saga._core.events import Phase

__all__ = ["Attempt", "SagaState", "Status", "evolve", "fold"]


class Status(enum.Enum):
    """Where an instance is. The last four are terminal."""

    RUNNING = "running"
    COMPENSATING = "compensating"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({Status.COMPLETED, Status.COMPENSATED, Status.FAILED, Status.CANCELLED})


@attrs.frozen(kw_only=True)
class Attempt:
    """An attempt that was scheduled and whose outcome is not recorded yet."""

    phase: Phase
    step: str
    attempt: int
    run_after: float | None = None


@attrs.frozen(kw_only=True)
class SagaState:
    """Everything the decider knows about one instance; rebuilt from history alone.

    Attributes:
        sequence: how many events have been applied; the next event gets ``sequence + 1``.
        results: recorded result of every completed step, by step name.
        completed: steps whose action completed, in completion order.
        compensated: steps whose compensation completed, in compensation order.
        in_flight: attempts scheduled and not yet reported.
        cancel_reason: set once a cancellation was requested.
        cancelled: the compensation under way (or done) was caused by a cancellation.
        reason: why the saga is compensating, failed or cancelled.
        pending: for a failed saga, the steps that are still to be undone.
        resume_to: while suspended, the status to go back to.
        suspension: while suspended, why.
        signals: signals received and not taken by a waiting step yet, oldest first.
        signal_ids: the message id of every signal received (a repeat is dropped).
        parent: for a child saga, its parent.
        cancelling: children whose cancel is to be delivered before the saga may end.
        continued_as: the next run, once this one continued as new.
    """

    saga_id: str
    saga: str
    version: int
    input: Any
    status: Status = Status.RUNNING
    sequence: int = 1
    results: Mapping[str, Any] = attrs.field(factory=dict)
    completed: tuple[str, ...] = ()
    compensated: tuple[str, ...] = ()
    in_flight: tuple[Attempt, ...] = ()
    cancel_reason: str | None = None
    cancelled: bool = False
    reason: str | None = None
    pending: tuple[str, ...] = ()
    resume_to: Status | None = None
    suspension: str | None = None
    signals: tuple[ev.SignalReceived, ...] = ()
    signal_ids: frozenset[str] = frozenset()
    parent: ev.ParentRef | None = None
    cancelling: tuple[str, ...] = ()
    continued_as: str | None = None

    def signal(self, name: str) -> ev.SignalReceived | None:
        """The oldest signal ``name`` waiting to be taken, if any."""
        for signal in self.signals:
            if signal.name == name:
                return signal
        return None

    def attempt(self, phase: Phase, step: str) -> Attempt | None:
        for attempt in self.in_flight:
            if attempt.phase is phase and attempt.step == step:
                return attempt
        return None

    @classmethod
    def started(cls, saga_id: str, event: ev.SagaStarted) -> SagaState:
        return cls(
            saga_id=saga_id,
            saga=event.saga,
            version=event.version,
            input=event.input,
            parent=event.parent,
        )


def _without(state: SagaState, phase: Phase, step: str) -> tuple[Attempt, ...]:
    return tuple(a for a in state.in_flight if not (a.phase is phase and a.step == step))


def _changes(state: SagaState, event: ev.Event) -> dict[str, Any]:
    """The fields ``event`` changes, and their new values."""
    match event:
        case ev.StepScheduled(step=step, attempt=n, run_after=t):
            flight = (
                *_without(state, Phase.ACTION, step),
                Attempt(phase=Phase.ACTION, step=step, attempt=n, run_after=t),
            )
            return dict(in_flight=flight)
        case ev.StepCompleted(step=step, result=result):
            return dict(
                in_flight=_without(state, Phase.ACTION, step),
                completed=(*state.completed, step),
                results={**state.results, step: result},
            )
        case ev.StepFailed(step=step):
            return dict(in_flight=_without(state, Phase.ACTION, step))
        case ev.SignalReceived(message_id=message_id):
            return dict(signals=(*state.signals, event), signal_ids=state.signal_ids | {message_id})
        case ev.SignalConsumed(message_id=message_id):
            return dict(signals=tuple(s for s in state.signals if s.message_id != message_id))
        case ev.ChildCancelRequested(child_id=child_id):
            return dict(cancelling=(*state.cancelling, child_id))
        case ev.ChildCancelDelivered(child_id=child_id):
            return dict(cancelling=tuple(c for c in state.cancelling if c != child_id))
        case ev.CancelRequested(reason=reason):
            return dict(cancel_reason=reason)
        case ev.CompensationTriggered(reason=reason, cancelled=cancelled):
            return dict(status=Status.COMPENSATING, reason=reason, cancelled=cancelled)
        case ev.CompensationScheduled(step=step, attempt=n, run_after=t):
            flight = (
                *_without(state, Phase.COMPENSATION, step),
                Attempt(phase=Phase.COMPENSATION, step=step, attempt=n, run_after=t),
            )
            return dict(in_flight=flight)
        case ev.CompensationCompleted(step=step):
            return dict(
                in_flight=_without(state, Phase.COMPENSATION, step),
                compensated=(*state.compensated, step),
            )
        case ev.CompensationFailed(step=step):
            return dict(in_flight=_without(state, Phase.COMPENSATION, step))
        case ev.SagaContinued(next_id=next_id):
            return dict(continued_as=next_id)
        case ev.SagaCompleted():
            return dict(status=Status.COMPLETED)
        case ev.SagaCompensated():
            return dict(status=Status.COMPENSATED)
        case ev.SagaCancelled(reason=reason):
            return dict(status=Status.CANCELLED, reason=reason)
        case ev.SagaFailed(reason=reason, pending=pending):
            return dict(status=Status.FAILED, reason=reason, pending=pending)
        case ev.SagaSuspended(reason=reason):
            return dict(status=Status.SUSPENDED, resume_to=state.status, suspension=reason)
        case ev.SagaResumed():
            assert state.resume_to is not None, "SagaResumed without SagaSuspended"
            return dict(status=state.resume_to, resume_to=None, suspension=None)
        case ev.SagaStarted():
            raise ValueError("SagaStarted can only be the first event of a history")
    raise TypeError(f"not an event: {event!r}")  # pragma: no cover


def evolve(state: SagaState, event: ev.Event) -> SagaState:
    """The state after ``event``; ``state.sequence`` counts it."""
    return attrs.evolve(state, sequence=state.sequence + 1, **_changes(state, event))


def fold(saga_id: str, history: Iterable[ev.Event]) -> SagaState:
    """Replay: the state after every event of ``history``, the first being ``SagaStarted``."""
    events = iter(history)
    first = next(events, None)
    if not isinstance(first, ev.SagaStarted):
        raise ValueError(f"saga {saga_id!r}: a history starts with SagaStarted, got {first!r}")
    state = SagaState.started(saga_id, first)
    for event in events:
        state = evolve(state, event)
    return state
