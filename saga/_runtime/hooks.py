"""A hook around every step call: how the test kit injects faults into a real runtime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from saga._core.context import StepContext
from saga._core.definition import SagaDefinition, Step

__all__ = ["SimulatedCrash", "StepFn", "StepHook"]

StepFn = Callable[[StepContext], Awaitable[Any]]


class StepHook(Protocol):
    """Wraps the function of one attempt of a step's action or compensation."""

    def wrap(self, definition: SagaDefinition, step: Step, ctx: StepContext, fn: StepFn) -> StepFn:
        """The function to call instead of ``fn`` for this attempt (``ctx`` says which)."""
        ...


class SimulatedCrash(Exception):
    """Raised by a step hook to end the actor as a process crash would: the attempt's
    outcome is never reported, and the supervisor rebuilds the instance from history,
    which re-issues the attempt (with the same idempotency key)."""
