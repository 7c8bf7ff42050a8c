"""Fault injection by declaration: steps that fail, hang or crash; stores that misbehave."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any, Literal

import anyio
import attrs

from saga._core.context import StepContext
from saga._core.definition import SagaDefinition, Step
from saga._core.events import Phase
from saga._runtime.hooks import SimulatedCrash, StepFn
from saga.errors import NonRetryableError, SagaError

__all__ = ["FaultError", "Faults", "InjectedFault", "PermanentInjectedFault"]

StepFault = Literal["fail", "fail_permanently", "time_out", "crash_after"]
StoreFault = Literal["unavailable", "outcome_unknown", "conflict", "latency"]

#: Store operations a fault can name.
STORE_OPERATIONS = frozenset(
    {
        "create",
        "commit",
        "instance",
        "load",
        "load_recent",
        "instances",
        "tasks",
        "acquire",
        "claim",
        "next_wake",
        "renew",
        "release",
        "send",
        "inbox",
        "answer",
        "take_reply",
    }
)


class FaultError(SagaError, ValueError):
    """A fault declaration names something that does not exist or cannot happen
    (an unknown step, a time-out for a step without a timeout...)."""


class InjectedFault(Exception):
    """The failure an injected step fault raises (retryable, like any exception)."""


class PermanentInjectedFault(InjectedFault, NonRetryableError):
    """The failure ``fail_permanently`` raises: never retried, whatever the policy."""


@attrs.define(eq=False, kw_only=True)
class _StepRule:
    kind: StepFault
    step: str
    phase: Phase
    times: int | None  # per instance; None: every attempt
    saga: str | None
    saga_id: str | None
    error: Exception | None = None
    hits: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def matches(self, definition: SagaDefinition, step: Step, ctx: StepContext) -> bool:
        return (
            self.step == step.name
            and self.phase is ctx.phase
            and self.saga in (None, definition.name)
            and self.saga_id in (None, ctx.saga_id)
            and (self.times is None or self.hits[ctx.saga_id] < self.times)
        )


@attrs.define(eq=False, kw_only=True)
class _StoreRule:
    kind: StoreFault
    operations: frozenset[str]
    times: int | None  # in all; None: every call
    seconds: float = 0.0
    hits: int = 0

    def take(self, operation: str) -> bool:
        if operation not in self.operations or (self.times is not None and self.hits >= self.times):
            return False
        self.hits += 1
        return True


@attrs.frozen(kw_only=True)
class Injected:
    """One fault that happened: which, where, and at which attempt."""

    kind: str
    saga_id: str | None = None
    step: str | None = None
    phase: Phase | None = None
    attempt: int | None = None
    operation: str | None = None


class Faults:
    """The faults to inject, declared before or while the code under test runs.

    Step faults count per instance: ``fail("charge", times=2)`` fails the first two attempts
    of ``charge`` in every instance (or only in ``saga_id``). Faults declared for one step
    apply in the order they were declared: ``fail(times=2)`` then ``crash_after()`` fails
    attempts 1 and 2, then lets attempt 3 run and crashes before its outcome is recorded.
    Store faults count in all.

    ``injected`` lists every fault that happened, in order.
    """

    def __init__(self) -> None:
        self._steps: list[_StepRule] = []
        self._store: list[_StoreRule] = []
        self._checked: list[SagaDefinition] = []
        self.injected: list[Injected] = []

    # -- step faults ----------------------------------------------------------------------

    def fail(
        self,
        step: str,
        *,
        times: int | None = 1,
        phase: Phase | str = Phase.ACTION,
        error: Exception | None = None,
        saga: str | None = None,
        saga_id: str | None = None,
    ) -> None:
        """Fail ``times`` attempts of the step (``None``: every one) with ``error`` (default
        :class:`InjectedFault`), without calling it. The step's retry policy decides what
        follows, as for a real failure."""
        if error is not None and not isinstance(error, Exception):
            raise FaultError(f"error must be an exception instance, got {error!r}")
        self._add_step(
            "fail", step, times=times, phase=phase, saga=saga, saga_id=saga_id, error=error
        )

    def fail_permanently(
        self,
        step: str,
        *,
        phase: Phase | str = Phase.ACTION,
        saga: str | None = None,
        saga_id: str | None = None,
    ) -> None:
        """Fail the step's next attempt with an error that is never retried
        (:class:`PermanentInjectedFault`), without calling it."""
        self._add_step("fail_permanently", step, times=1, phase=phase, saga=saga, saga_id=saga_id)

    def time_out(
        self,
        step: str,
        *,
        times: int | None = 1,
        phase: Phase | str = Phase.ACTION,
        saga: str | None = None,
        saga_id: str | None = None,
    ) -> None:
        """Make ``times`` attempts hang, without calling the step, until the step's timeout
        ends them (in virtual time, at once). The step must have a timeout."""
        self._add_step("time_out", step, times=times, phase=phase, saga=saga, saga_id=saga_id)

    def crash_after(
        self,
        step: str,
        *,
        times: int | None = 1,
        phase: Phase | str = Phase.ACTION,
        saga: str | None = None,
        saga_id: str | None = None,
    ) -> None:
        """Run the step (its side effect happens), then "crash" before its outcome is
        recorded: the instance is rebuilt from history, as after a process crash, and the
        attempt runs again with the same idempotency key."""
        self._add_step("crash_after", step, times=times, phase=phase, saga=saga, saga_id=saga_id)

    # -- store faults ---------------------------------------------------------------------

    def store_unavailable(
        self, operation: str | Iterable[str] = "commit", *, times: int = 1
    ) -> None:
        """The next ``times`` calls of ``operation`` raise ``StoreUnavailableError`` without
        reaching the store."""
        self._add_store("unavailable", operation, times)

    def commit_outcome_unknown(
        self, *, times: int = 1, operation: Literal["commit", "create"] = "commit"
    ) -> None:
        """The next ``times`` commits (or creates: a ``start``) are written, then raise
        ``StoreUnavailableError``: the caller cannot tell that they landed."""
        if operation not in ("commit", "create"):
            raise FaultError(f"operation must be 'commit' or 'create', got {operation!r}")
        self._add_store("outcome_unknown", operation, times)

    def store_conflict(self, *, times: int = 1) -> None:
        """The next ``times`` commits raise ``ConflictError`` without being written, as if
        another writer had got there first."""
        self._add_store("conflict", "commit", times)

    def store_latency(
        self,
        seconds: float,
        operation: str | Iterable[str] | None = None,
        *,
        times: int | None = None,
    ) -> None:
        """Delay calls of ``operation`` (default: every operation) by ``seconds`` of the
        kit's clock, ``times`` times (default: every call)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise FaultError(f"seconds must be a number >= 0, got {seconds!r}")
        self._add_store(
            "latency", STORE_OPERATIONS if operation is None else operation, times, seconds=seconds
        )

    def clear(self) -> None:
        """Forget every fault declared (what was injected stays in ``injected``)."""
        self._steps.clear()
        self._store.clear()

    # -- checking declarations against definitions ------------------------------------------

    def check(self, definitions: Iterable[SagaDefinition]) -> None:
        """Check every step fault against the definitions it will run with.

        Raises:
            FaultError: a fault names no step of these definitions, a compensation the
                step does not have, or a time-out for a step without a timeout.
        """
        self._checked = list(definitions)
        for rule in self._steps:
            self._check_rule(rule)

    def _check_rule(self, rule: _StepRule) -> None:
        if not self._checked:
            return
        candidates = [
            d.step(rule.step)
            for d in self._checked
            if rule.saga in (None, d.name) and rule.step in {s.name for s in d.steps}
        ]
        where = f"saga {rule.saga!r}" if rule.saga else "any registered saga"
        if not candidates:
            raise FaultError(f"{rule.kind}: {where} has no step {rule.step!r}")
        if all(s.wait is not None for s in candidates):
            raise FaultError(
                f"{rule.kind}: step {rule.step!r} waits (for time or a signal): it runs no "
                "code to fail; let a signal wait time out, or cancel the saga"
            )
        if rule.phase is Phase.COMPENSATION and all(s.compensation is None for s in candidates):
            raise FaultError(f"{rule.kind}: step {rule.step!r} has no compensation")
        if rule.kind == "time_out" and all(s.timeout is None for s in candidates):
            raise FaultError(
                f"time_out: step {rule.step!r} has no timeout, so it would hang forever; "
                "give it one (Step(timeout=...)) or use fail()"
            )

    # -- the step hook --------------------------------------------------------------------

    def wrap(self, definition: SagaDefinition, step: Step, ctx: StepContext, fn: StepFn) -> StepFn:
        rule = next((r for r in self._steps if r.matches(definition, step, ctx)), None)
        if rule is None:
            return fn
        rule.hits[ctx.saga_id] += 1
        self.injected.append(
            Injected(
                kind=rule.kind,
                saga_id=ctx.saga_id,
                step=step.name,
                phase=ctx.phase,
                attempt=ctx.attempt,
            )
        )
        where = f"{ctx.phase.value} of {step.name!r}, attempt {ctx.attempt}"
        match rule.kind:
            case "fail":
                error = rule.error or InjectedFault(f"injected failure: {where}")

                async def failing(ctx: StepContext) -> Any:
                    raise error

                return failing
            case "fail_permanently":

                async def failing_for_good(ctx: StepContext) -> Any:
                    raise PermanentInjectedFault(f"injected permanent failure: {where}")

                return failing_for_good
            case "time_out":

                async def hanging(ctx: StepContext) -> Any:
                    await anyio.sleep_forever()

                return hanging
            case "crash_after":

                async def crashing(ctx: StepContext) -> Any:
                    await fn(ctx)
                    raise SimulatedCrash(f"injected crash after the {where}")

                return crashing

    # -- the store's side -----------------------------------------------------------------

    def store_faults(self, operation: str) -> list[_StoreRule]:
        """The store faults that apply to this call of ``operation`` (each counted)."""
        taken = [rule for rule in self._store if rule.take(operation)]
        self.injected.extend(Injected(kind=rule.kind, operation=operation) for rule in taken)
        return taken

    # -- internals ------------------------------------------------------------------------

    def _add_step(
        self,
        kind: StepFault,
        step: str,
        *,
        times: int | None,
        phase: Phase | str,
        saga: str | None,
        saga_id: str | None,
        error: Exception | None = None,
    ) -> None:
        if not isinstance(step, str):
            raise FaultError(f"step must be a step name (str), got {step!r}")
        _check_times(times)
        try:
            phase = Phase(phase)
        except ValueError:
            raise FaultError(f"phase must be 'action' or 'compensation', got {phase!r}") from None
        rule = _StepRule(
            kind=kind,
            step=step,
            phase=phase,
            times=times,
            saga=saga,
            saga_id=saga_id,
            error=error,
        )
        self._check_rule(rule)
        self._steps.append(rule)

    def _add_store(
        self,
        kind: StoreFault,
        operation: str | Iterable[str],
        times: int | None,
        *,
        seconds: float = 0.0,
    ) -> None:
        operations = frozenset((operation,) if isinstance(operation, str) else operation)
        unknown = operations - STORE_OPERATIONS
        if unknown or not operations:
            raise FaultError(
                f"unknown store operation(s) {sorted(unknown)}; "
                f"known: {', '.join(sorted(STORE_OPERATIONS))}"
            )
        _check_times(times)
        self._store.append(
            _StoreRule(kind=kind, operations=operations, times=times, seconds=seconds)
        )


def _check_times(times: int | None) -> None:
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise FaultError(f"times must be an int >= 1 or None (every time), got {times!r}")
