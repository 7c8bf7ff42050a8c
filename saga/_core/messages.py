"""Messages an instance's decider takes in, in the imperative."""

from __future__ import annotations

from typing import Any

import attrs

from saga._core.events import ErrorInfo, ParentRef, Phase

__all__ = [
    "CancelSaga",
    "ChildCancelDelivered",
    "ChildFinished",
    "NextStarted",
    "CompleteAttempt",
    "FailAttempt",
    "FireTimer",
    "Message",
    "ResumeSaga",
    "SignalSaga",
    "StartSaga",
    "SuspendSaga",
    "command_name",
]


@attrs.frozen(kw_only=True)
class StartSaga:
    input: Any
    parent: ParentRef | None = None


@attrs.frozen(kw_only=True)
class CompleteAttempt:
    """An attempt returned; ``result`` is its (already JSON-checked) return value."""

    phase: Phase
    step: str
    attempt: int
    result: Any = None


@attrs.frozen(kw_only=True)
class FailAttempt:
    """An attempt raised, timed out or was aborted before it began."""

    phase: Phase
    step: str
    attempt: int
    error: ErrorInfo
    retryable: bool = True


@attrs.frozen(kw_only=True)
class FireTimer:
    """The timer of a waiting step's attempt (a sleep's end, a signal wait's timeout) ran out."""

    step: str
    attempt: int


@attrs.frozen(kw_only=True)
class SignalSaga:
    """Deliver signal ``name``; ``message_id`` makes a repeated delivery a no-op."""

    name: str
    payload: Any
    message_id: str


@attrs.frozen(kw_only=True)
class ChildFinished:
    """Child ``child_id`` of step ``step`` ended ``status`` with ``results`` (and why)."""

    step: str
    child_id: str
    status: str
    results: Any = None
    reason: str | None = None


@attrs.frozen(kw_only=True)
class NextStarted:
    """The next run ``next_id`` of a saga that continues as new was started."""

    step: str
    next_id: str


@attrs.frozen(kw_only=True)
class ChildCancelDelivered:
    """The cancel of child ``child_id`` was recorded (or could not be: it had ended)."""

    child_id: str


@attrs.frozen(kw_only=True)
class CancelSaga:
    reason: str


@attrs.frozen(kw_only=True)
class SuspendSaga:
    reason: str


@attrs.frozen(kw_only=True)
class ResumeSaga:
    pass


Message = (
    StartSaga
    | CompleteAttempt
    | FailAttempt
    | FireTimer
    | SignalSaga
    | ChildFinished
    | NextStarted
    | ChildCancelDelivered
    | CancelSaga
    | SuspendSaga
    | ResumeSaga
)

_COMMANDS = {
    StartSaga: "start",
    SignalSaga: "signal",
    CancelSaga: "cancel",
    SuspendSaga: "suspend",
    ResumeSaga: "resume",
}


def command_name(message: Message) -> str:
    """How ``CommandRejected.command`` names the command ``message`` carries."""
    return _COMMANDS.get(type(message), type(message).__name__)
