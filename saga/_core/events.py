"""History events: what happened to an instance, in the past tense.

Every event is stored with its type name and a schema version (see ``codec``). Payloads
(``input``, ``result``) are JSON values.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

__all__ = [
    "EVENT_TYPES",
    "CancelRequested",
    "ChildCancelDelivered",
    "ChildCancelRequested",
    "CompensationCompleted",
    "CompensationFailed",
    "CompensationScheduled",
    "CompensationTriggered",
    "ErrorInfo",
    "Event",
    "ParentRef",
    "Phase",
    "SagaCancelled",
    "SagaCompensated",
    "SagaCompleted",
    "SagaContinued",
    "SagaFailed",
    "SagaResumed",
    "SagaStarted",
    "SagaSuspended",
    "SignalConsumed",
    "SignalReceived",
    "StepCompleted",
    "StepFailed",
    "StepScheduled",
]


class Phase(enum.Enum):
    """Which of a step's two functions an attempt runs."""

    ACTION = "action"
    COMPENSATION = "compensation"


@attrs.frozen
class ErrorInfo:
    """An exception, as history keeps it: its qualified type name and its message."""

    type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        kind = type(exc)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        return cls(name, str(exc))


@attrs.frozen(kw_only=True)
class ParentRef:
    """The parent of a child saga: the instance, and its step that waits for the child."""

    saga_id: str
    step: str


@attrs.frozen(kw_only=True)
class SagaStarted:
    saga: str
    version: int
    input: Any
    parent: ParentRef | None = None


@attrs.frozen(kw_only=True)
class StepScheduled:
    """The intent to run attempt ``attempt`` of a step's action, not before ``run_after``."""

    step: str
    attempt: int
    run_after: float | None = None


@attrs.frozen(kw_only=True)
class StepCompleted:
    step: str
    attempt: int
    result: Any


@attrs.frozen(kw_only=True)
class StepFailed:
    step: str
    attempt: int
    error: ErrorInfo
    will_retry: bool


@attrs.frozen(kw_only=True)
class SignalReceived:
    """A signal arrived; it waits in the instance until a step waiting for ``name`` takes it."""

    name: str
    payload: Any
    message_id: str


@attrs.frozen(kw_only=True)
class SignalConsumed:
    """The waiting step ``step`` took signal ``message_id`` (its payload is the result)."""

    step: str
    message_id: str


@attrs.frozen(kw_only=True)
class ChildCancelRequested:
    """The child ``child_id`` (of step ``step``) is to be cancelled: the parent stopped
    waiting for it. The parent ends only once the cancel is delivered."""

    step: str
    child_id: str


@attrs.frozen(kw_only=True)
class ChildCancelDelivered:
    """The child's cancel was recorded (or the child had finished, or could not be)."""

    child_id: str


@attrs.frozen(kw_only=True)
class CancelRequested:
    reason: str


@attrs.frozen(kw_only=True)
class CompensationTriggered:
    """Forward work stopped; what completed is undone from here on, newest first."""

    reason: str
    cancelled: bool = False


@attrs.frozen(kw_only=True)
class CompensationScheduled:
    """The intent to run a step's compensation, recorded before it runs."""

    step: str
    attempt: int
    run_after: float | None = None


@attrs.frozen(kw_only=True)
class CompensationCompleted:
    step: str
    attempt: int
    result: Any


@attrs.frozen(kw_only=True)
class CompensationFailed:
    step: str
    attempt: int
    error: ErrorInfo
    will_retry: bool


@attrs.frozen(kw_only=True)
class SagaContinued:
    """This run's last step started the next run, ``next_id``: the saga goes on there."""

    next_id: str


@attrs.frozen(kw_only=True)
class SagaCompleted:
    pass


@attrs.frozen(kw_only=True)
class SagaCompensated:
    pass


@attrs.frozen(kw_only=True)
class SagaCancelled:
    reason: str


@attrs.frozen(kw_only=True)
class SagaFailed:
    """The saga cannot finish without an operator; ``pending`` names the steps still to undo."""

    reason: str
    pending: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class SagaSuspended:
    """Parked by a supervisor; nothing runs until an operator resumes it."""

    reason: str


@attrs.frozen(kw_only=True)
class SagaResumed:
    pass


Event = (
    SagaStarted
    | StepScheduled
    | StepCompleted
    | StepFailed
    | SignalReceived
    | SignalConsumed
    | ChildCancelRequested
    | ChildCancelDelivered
    | CancelRequested
    | CompensationTriggered
    | CompensationScheduled
    | CompensationCompleted
    | CompensationFailed
    | SagaContinued
    | SagaCompleted
    | SagaCompensated
    | SagaCancelled
    | SagaFailed
    | SagaSuspended
    | SagaResumed
)

#: Stored type name -> class. Names are part of the on-disk format: never rename one.
EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        SagaStarted,
        StepScheduled,
        StepCompleted,
        StepFailed,
        SignalReceived,
        SignalConsumed,
        ChildCancelRequested,
        ChildCancelDelivered,
        CancelRequested,
        CompensationTriggered,
        CompensationScheduled,
        CompensationCompleted,
        CompensationFailed,
        SagaContinued,
        SagaCompleted,
        SagaCompensated,
        SagaCancelled,
        SagaFailed,
        SagaSuspended,
        SagaResumed,
    )
}
