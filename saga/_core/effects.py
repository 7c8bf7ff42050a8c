"""Effects: what the decider asks the runtime to do once its events are committed."""

from __future__ import annotations

import attrs

from saga._core.events import Phase
from saga._core.state import Status

__all__ = [
    "AbortAttempt",
    "ArmTimer",
    "CancelChild",
    "Effect",
    "Finish",
    "RunAttempt",
    "StartChild",
    "StartNext",
]


@attrs.frozen(kw_only=True)
class RunAttempt:
    """Run one attempt of a step's action or compensation, not before ``run_after``."""

    phase: Phase
    step: str
    attempt: int
    idempotency_key: str
    run_after: float | None = None


@attrs.frozen(kw_only=True)
class ArmTimer:
    """Report ``FireTimer`` for a waiting step's attempt at ``at`` (the clock's time).

    The timer is also in the store (the instance's wake-up time), so an instance that
    holds no timer in memory (passivated, or its process died) is woken for it.
    """

    step: str
    attempt: int
    at: float


@attrs.frozen(kw_only=True)
class StartChild:
    """Start the child saga of a step's attempt as ``child_id`` (a no-op if it exists)."""

    step: str
    attempt: int
    child_id: str


@attrs.frozen(kw_only=True)
class StartNext:
    """Start run ``next_id`` of this saga (a no-op if it exists), or end the loop."""

    step: str
    attempt: int
    next_id: str


@attrs.frozen(kw_only=True)
class CancelChild:
    """Cancel child ``child_id``, then report ``ChildCancelDelivered``."""

    child_id: str
    reason: str


@attrs.frozen(kw_only=True)
class AbortAttempt:
    """Drop an attempt that has not begun yet (it is waiting out its backoff).

    An attempt that has begun runs on and reports as usual; one that is dropped reports a
    non-retryable failure, so that every scheduled attempt gets exactly one outcome.
    """

    phase: Phase
    step: str
    attempt: int


@attrs.frozen(kw_only=True)
class Finish:
    """The instance reached a terminal status: resolve whoever waits for it."""

    status: Status


Effect = RunAttempt | ArmTimer | StartChild | StartNext | CancelChild | AbortAttempt | Finish
