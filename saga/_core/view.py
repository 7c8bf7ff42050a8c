"""What a query shows of an instance: a read model of its state, without its actor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from saga._core.decide import child_id
from saga._core.definition import ChildSaga, SagaDefinition, Sleep, WaitForSignal
from saga._core.events import Phase
from saga._core.state import Attempt, SagaState, Status

__all__ = ["PendingWait", "SagaView"]


@attrs.frozen(kw_only=True)
class PendingWait:
    """A step waiting for time or for a signal.

    Attributes:
        step: the waiting step.
        signal: the signal it waits for; ``None`` for a sleep or a child.
        child: the id of the child saga it waits for; ``None`` for a sleep or a signal.
        until: when its timer fires (a sleep's end, a signal wait's timeout), on the
            coordinator's clock; ``None`` for a signal wait without a timeout.
    """

    step: str
    signal: str | None
    until: float | None
    child: str | None = None


@attrs.frozen(kw_only=True)
class SagaView:
    """An instance as a query sees it.

    Attributes:
        saga_id, saga, version: which instance, of which definition.
        status: where it is.
        sequence: how many events its history holds.
        in_progress: the steps with an attempt scheduled or running (action or
            compensation), waiting steps included.
        attempts: those attempts, with their phase, number and ``run_after``.
        waits: the steps waiting for time or a signal.
        results: the recorded result of every completed step.
        completed: steps whose action completed, in order.
        compensated: steps whose compensation completed, in order.
        signals: names of the signals received that no step has taken yet, oldest first.
        cancel_requested: a cancellation was asked for and is under way or done.
        reason: why it is compensating, failed or cancelled; for a suspended instance, why
            it was suspended.
        definition_registered: this coordinator has the instance's definition version.
            Without it, ``waits`` cannot be told apart from other attempts and is empty.
    """

    saga_id: str
    saga: str
    version: int
    status: Status
    sequence: int
    in_progress: tuple[str, ...]
    attempts: tuple[Attempt, ...]
    waits: tuple[PendingWait, ...]
    results: Mapping[str, Any]
    completed: tuple[str, ...]
    compensated: tuple[str, ...]
    signals: tuple[str, ...]
    cancel_requested: bool
    reason: str | None
    definition_registered: bool

    @classmethod
    def of(cls, state: SagaState, definition: SagaDefinition | None) -> SagaView:
        waits = []
        if definition is not None:
            for a in state.in_flight:
                wait = definition.step(a.step).wait if a.phase is Phase.ACTION else None
                if isinstance(wait, Sleep):
                    waits.append(PendingWait(step=a.step, signal=None, until=a.run_after))
                elif isinstance(wait, WaitForSignal):
                    waits.append(PendingWait(step=a.step, signal=wait.signal, until=a.run_after))
                elif isinstance(wait, ChildSaga):
                    child = child_id(state.saga_id, a.step)
                    waits.append(PendingWait(step=a.step, signal=None, until=None, child=child))
        return cls(
            saga_id=state.saga_id,
            saga=state.saga,
            version=state.version,
            status=state.status,
            sequence=state.sequence,
            in_progress=tuple(a.step for a in state.in_flight),
            attempts=state.in_flight,
            waits=tuple(waits),
            results=dict(state.results),
            completed=state.completed,
            compensated=state.compensated,
            signals=tuple(s.name for s in state.signals),
            cancel_requested=state.cancel_reason is not None,
            reason=state.suspension if state.status is Status.SUSPENDED else state.reason,
            definition_registered=definition is not None,
        )
