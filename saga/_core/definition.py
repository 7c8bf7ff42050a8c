"""Saga definitions: pure data, validated when built."""

from __future__ import annotations

import enum
import inspect
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from saga._core.codec import check_payload
from saga.errors import DefinitionError, PayloadError

if TYPE_CHECKING:
    from saga._core.context import StepContext

__all__ = [
    "ChildSaga",
    "ContinueAsNew",
    "OnTimeout",
    "ParentClose",
    "Parallel",
    "RetryPolicy",
    "SagaDefinition",
    "Sleep",
    "Step",
    "StepKind",
    "Wait",
    "WaitForSignal",
]

StepFn = Callable[["StepContext"], Awaitable[Any]]

# Names end up in ids, idempotency keys, logs and the CLI: keep them boring.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")


class StepKind(enum.Enum):
    """Where a step stands relative to the point of no return.

    A valid saga is ``compensatable* pivot? retriable*``: compensatable steps can be undone;
    the pivot is the go/no-go step (it cannot be undone; once it completes the saga only goes
    forward); retriable steps come after it and are retried until they succeed.
    """

    COMPENSATABLE = "compensatable"
    PIVOT = "pivot"
    RETRIABLE = "retriable"


def _check_positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not _is_number(value) or not (math.isfinite(value) and value > 0):
        raise DefinitionError(
            f"RetryPolicy.{attribute.name} must be a finite number > 0, got {value!r}"
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Typed converters, so that a list passed by the user type-checks as the tuple stored.
def _exception_types(
    types: Iterable[type[BaseException]],
) -> tuple[type[BaseException], ...]:
    return tuple(types)


def _steps(steps: Iterable[Step | Parallel]) -> tuple[Step, ...]:
    """The flat list of steps: a ``Parallel`` gives its members, marked with its name."""
    flat: list[Step] = []
    for item in steps:
        flat.extend(item.members() if isinstance(item, Parallel) else (item,))
    return tuple(flat)


def _members(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(steps)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often, and how far apart, a step's attempts are made.

    Attributes:
        max_attempts: attempts in all, the first try included; ``None`` retries forever.
        initial_interval: seconds before the first retry.
        multiplier: each later interval is the previous one times this.
        max_interval: the interval never exceeds this many seconds, jitter included.
        jitter: each interval is moved by up to this fraction of itself, deterministically
            per (saga, step, attempt), so that replay gives the same schedule.
        non_retryable: exception types that fail the step at once.
    """

    max_attempts: int | None = 3
    initial_interval: float = attrs.field(default=1.0, validator=_check_positive)
    multiplier: float = attrs.field(default=2.0, validator=_check_positive)
    max_interval: float = attrs.field(default=60.0, validator=_check_positive)
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException], ...] = attrs.field(
        default=(), converter=_exception_types
    )

    def __attrs_post_init__(self) -> None:
        if self.max_attempts is not None and (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise DefinitionError(
                f"RetryPolicy.max_attempts must be an int >= 1 or None, got {self.max_attempts!r}"
            )
        if not (_is_number(self.jitter) and 0 <= self.jitter <= 1):
            raise DefinitionError(f"RetryPolicy.jitter must be within [0, 1], got {self.jitter!r}")
        for exc_type in self.non_retryable:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise DefinitionError(
                    f"RetryPolicy.non_retryable must hold exception types, got {exc_type!r}"
                )

    def interval(self, failed_attempt: int, *, spread: float) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed.

        ``spread`` in [-1, 1] picks where in the jitter band the interval lands.
        """
        try:
            base = self.initial_interval * self.multiplier ** (failed_attempt - 1)
        except OverflowError:  # a step retried forever gets there after ~1000 attempts
            base = self.max_interval
        jittered = min(base, self.max_interval) * (1 + self.jitter * spread)
        return min(max(0.0, jittered), self.max_interval)

    def allows(self, next_attempt: int) -> bool:
        return self.max_attempts is None or next_attempt <= self.max_attempts


def _check_seconds(what: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not (_is_number(value) and math.isfinite(value) and value > 0):  # type: ignore[arg-type, operator]
        raise DefinitionError(f"{what} must be a number of seconds > 0, got {value!r}")


@attrs.frozen
class Sleep:
    """A durable sleep: the step completes ``seconds`` after it is scheduled.

    The instance holds no task and no memory meanwhile (see ``Coordinator``'s
    ``passivate_after``); the wake-up time is in the store and survives restarts.
    """

    seconds: float

    def __attrs_post_init__(self) -> None:
        _check_seconds("Sleep.seconds", self.seconds, optional=False)


class OnTimeout(enum.Enum):
    """What a signal wait does when its timeout passes first."""

    #: The step fails for good: the saga compensates what it completed.
    COMPENSATE = "compensate"
    #: The step completes with ``timeout_result``; later steps read it in ``ctx.results``.
    CONTINUE = "continue"


@attrs.frozen
class WaitForSignal:
    """Wait for the named signal (``Coordinator.signal``); its payload is the step's result.

    A signal sent before the saga reaches the wait is kept for it. Several waits for one
    name take its signals in the order they arrived.

    Attributes:
        signal: the signal's name.
        timeout: seconds to wait (from when the step is scheduled); ``None`` waits forever.
        on_timeout: what happens when the timeout passes first.
        timeout_result: the step's result when it times out with ``OnTimeout.CONTINUE``.
    """

    signal: str
    timeout: float | None = attrs.field(default=None, kw_only=True)
    on_timeout: OnTimeout = attrs.field(default=OnTimeout.COMPENSATE, kw_only=True)
    timeout_result: Any = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.signal, str) or not NAME.fullmatch(self.signal):
            raise DefinitionError(
                f"WaitForSignal.signal must match {NAME.pattern}, got {self.signal!r}"
            )
        _check_seconds("WaitForSignal.timeout", self.timeout, optional=True)
        if not isinstance(self.on_timeout, OnTimeout):
            raise DefinitionError(
                f"WaitForSignal.on_timeout must be an OnTimeout, got {self.on_timeout!r}"
            )
        try:
            check_payload(self.timeout_result, "WaitForSignal.timeout_result")
        except PayloadError as exc:
            raise DefinitionError(str(exc)) from exc


class ParentClose(enum.Enum):
    """What happens to a child saga when its parent stops waiting for it (the parent is
    cancelled, or its parallel group turns back)."""

    #: The child is cancelled (and so, in turn, are its own children): the default.
    CANCEL = "cancel"
    #: The child runs on by itself; its outcome no longer matters to the parent.
    ABANDON = "abandon"


@attrs.frozen
class ChildSaga:
    """Start saga ``saga`` (the newest registered version) as a child and wait for it.

    The child's id is ``<parent id>/<step name>``: a parent rebuilt after a crash finds
    its child rather than starting another. The step completes with the child's results
    when it completes, and fails for good (the parent compensates) when it ends otherwise.
    The child's own end is written with a message for the parent in one transaction, so
    the parent hears of it after any crash. A completed child is not undone by the
    parent's compensation: give the child's work its own steps to undo inside the child.

    Attributes:
        saga: the child saga's name; it must be registered with the coordinator too.
        input: ``fn(ctx) -> input`` for the child, from the parent's ``StepContext``
            (``ctx.input``, ``ctx.results``); a pure function, as it may be called again
            after a crash. ``None``: the parent's own input.
        on_parent_close: what happens to the child when the parent stops waiting for it.
    """

    saga: str
    input: Callable[[StepContext], Any] | None = attrs.field(default=None, kw_only=True)
    on_parent_close: ParentClose = attrs.field(default=ParentClose.CANCEL, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.saga, str) or not NAME.fullmatch(self.saga):
            raise DefinitionError(f"ChildSaga.saga must match {NAME.pattern}, got {self.saga!r}")
        if self.input is not None and not callable(self.input):
            raise DefinitionError(f"ChildSaga.input must be a function or None, got {self.input!r}")
        if not isinstance(self.on_parent_close, ParentClose):
            raise DefinitionError(
                f"ChildSaga.on_parent_close must be a ParentClose, got {self.on_parent_close!r}"
            )


@attrs.frozen(kw_only=True)
class ContinueAsNew:
    """The last step of a saga that loops: end this run and start the saga again, afresh.

    The next run has the id ``<id>#2`` (then ``#3``...), an empty history, the newest
    registered version of the saga, and the input ``input(ctx)`` gives (default: this
    run's input). ``until(ctx)``, when given and true, ends the loop instead: the step
    completes and the saga with it. Both are pure functions of the ``StepContext``
    (``ctx.input``, ``ctx.results``): they may be called again after a crash. This run
    completes with ``SagaContinued`` in its history; ``SagaHandle.outcome()`` follows the
    runs to the last one.
    """

    input: Callable[[StepContext], Any] | None = None
    until: Callable[[StepContext], bool] | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("input", "until"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise DefinitionError(
                    f"ContinueAsNew.{name} must be a function or None, got {fn!r}"
                )


#: What a step without an action waits for.
Wait = Sleep | WaitForSignal | ChildSaga | ContinueAsNew


@attrs.frozen(kw_only=True)
class Step:
    """One step of a saga: a forward action and, optionally, its compensation.

    Both are ``async def f(ctx: StepContext) -> result``. The action's result is recorded
    and handed to later steps (``ctx.results``) and to this step's compensation
    (``ctx.result``). A step may instead wait (``wait=Sleep(...)`` or
    ``wait=WaitForSignal(...)``): it has no action and nothing to undo.

    Attributes:
        name: unique within the saga.
        action: the forward action (``None`` for a waiting step).
        compensation: undoes the action; only compensatable steps may have one.
        kind: compensatable (default), pivot or retriable.
        retry: retry policy of the action. Retriable steps retry forever whatever it says
            of ``max_attempts``.
        compensation_retry: retry policy of the compensation.
        timeout: seconds one attempt may take (action or compensation); ``None`` is no limit.
        wait: instead of an action, what the step waits for.
        group: the ``Parallel`` group the step belongs to (set by ``Parallel``).
        group_limit: how many of its group's steps run at once (set by ``Parallel``).
    """

    name: str
    action: StepFn | None = None
    compensation: StepFn | None = None
    kind: StepKind = StepKind.COMPENSATABLE
    retry: RetryPolicy = RetryPolicy()
    compensation_retry: RetryPolicy = RetryPolicy(max_attempts=10)
    timeout: float | None = None
    wait: Wait | None = None
    group: str | None = None
    group_limit: int | None = None

    @property
    def action_policy(self) -> RetryPolicy:
        if self.kind is StepKind.RETRIABLE:
            return attrs.evolve(self.retry, max_attempts=None)
        return self.retry


@attrs.frozen
class Parallel:
    """Steps that run at the same time, at most ``limit`` at once (``None``: all).

    Put it among a saga's steps: the saga goes on past it once every member completed.
    When a member fails for good (or the saga is cancelled), the members not begun yet are
    dropped, those running finish, and every member that completed is compensated, the
    group's compensations again at the same time (at most ``limit`` at once), before the
    steps that came before the group. Members are all compensatable or all retriable.
    """

    name: str
    steps: tuple[Step, ...] = attrs.field(converter=_members)
    limit: int | None = attrs.field(default=None, kw_only=True)

    def members(self) -> tuple[Step, ...]:
        """The member steps, marked with the group's name and limit."""
        return tuple(
            attrs.evolve(step, group=self.name, group_limit=self.limit)
            if isinstance(step, Step)
            else step
            for step in self.steps
        )


def _check_fn(saga: str, step: str, what: str, fn: object) -> None:
    if not callable(fn):
        raise DefinitionError(f"{what} must be an async function, got {fn!r}", saga=saga, step=step)
    target = getattr(fn, "func", fn)  # functools.partial
    if not (
        inspect.iscoroutinefunction(target)
        or inspect.iscoroutinefunction(type(target).__call__)  # an object with async __call__
    ):
        raise DefinitionError(
            f"{what} must be an async function (async def), got {fn!r}", saga=saga, step=step
        )


@attrs.frozen
class SagaDefinition:
    """A named, versioned saga: an ordered list of steps.

    Raises:
        DefinitionError: at construction, if the name, version or steps are invalid.
    """

    name: str
    steps: tuple[Step, ...] = attrs.field(converter=_steps)
    version: int = attrs.field(default=1, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise DefinitionError(
                f"saga name must match {NAME.pattern}, got {self.name!r}", saga=str(self.name)
            )
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise DefinitionError(
                f"version must be an int >= 1, got {self.version!r}", saga=self.name
            )
        if not self.steps:
            raise DefinitionError("a saga needs at least one step", saga=self.name)
        seen: set[str] = set()
        phase = 0  # 0: compensatable, 1: pivot seen, 2: retriable
        for step in self.steps:
            self._check_step(step, seen)
            rank = {StepKind.COMPENSATABLE: 0, StepKind.PIVOT: 1, StepKind.RETRIABLE: 2}[step.kind]
            if rank < phase or (rank == 1 and phase == 1):
                raise DefinitionError(
                    f"step {step.name!r} is {step.kind.value} but follows a "
                    f"{'pivot' if phase == 1 else 'retriable'} step: steps must be "
                    "compensatable*, at most one pivot, then retriable*",
                    saga=self.name,
                    step=step.name,
                )
            phase = rank
        self._check_groups()

    def _check_groups(self) -> None:
        names = {step.name for step in self.steps}
        closed: set[str] = set()
        previous: Step | None = None
        for step in self.steps:
            group = step.group
            if previous is not None and previous.group not in (None, group):
                closed.add(previous.group)
            previous = step
            if group is None:
                if step.group_limit is not None:
                    raise DefinitionError(
                        "group_limit needs a group: use Parallel(...)",
                        saga=self.name,
                        step=step.name,
                    )
                continue

            def refuse(why: str, step: Step = step, group: str = group) -> DefinitionError:
                return DefinitionError(f"group {group!r}: {why}", saga=self.name, step=step.name)

            if not NAME.fullmatch(group):
                raise refuse(f"a group name must match {NAME.pattern}")
            if group in names:
                raise refuse("a group may not share its name with a step")
            if group in closed:
                raise refuse("its steps must be consecutive (one Parallel)")
            members = self.group(step.name)
            limit = step.group_limit
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
            ):
                raise refuse(f"limit must be an int >= 1 or None, got {limit!r}")
            if any(m.group_limit != limit for m in members):
                raise refuse("its steps disagree on the group's limit")
            if any(m.kind is StepKind.PIVOT for m in members):
                raise refuse("a pivot cannot run in parallel with other steps")
            if any(m.kind is not step.kind for m in members):
                raise refuse("its steps must be all compensatable or all retriable")

    def group(self, name: str) -> tuple[Step, ...]:
        """The steps of the parallel group of step ``name`` (empty if it is in none)."""
        step = self.step(name)
        if step.group is None:
            return ()
        return tuple(s for s in self.steps if s.group == step.group)

    def _check_step(self, step: object, seen: set[str]) -> None:
        if not isinstance(step, Step):
            raise DefinitionError(
                f"steps must be Step or Parallel objects, got {step!r}", saga=self.name
            )
        if not isinstance(step.name, str) or not NAME.fullmatch(step.name):
            raise DefinitionError(
                f"step name must match {NAME.pattern}, got {step.name!r}", saga=self.name
            )
        if step.name in seen:
            raise DefinitionError(
                f"duplicate step name {step.name!r}", saga=self.name, step=step.name
            )
        seen.add(step.name)
        if not isinstance(step.kind, StepKind):
            raise DefinitionError(
                f"kind must be a StepKind, got {step.kind!r}", saga=self.name, step=step.name
            )
        if step.wait is not None:
            self._check_wait(step)
        else:
            _check_fn(self.name, step.name, "action", step.action)
        if step.compensation is not None:
            if step.kind is not StepKind.COMPENSATABLE:
                raise DefinitionError(
                    f"a {step.kind.value} step cannot have a compensation: it is never undone",
                    saga=self.name,
                    step=step.name,
                )
            _check_fn(self.name, step.name, "compensation", step.compensation)
        for policy in (step.retry, step.compensation_retry):
            if not isinstance(policy, RetryPolicy):
                raise DefinitionError(
                    f"retry policies must be RetryPolicy objects, got {policy!r}",
                    saga=self.name,
                    step=step.name,
                )
        if step.timeout is not None and not (
            _is_number(step.timeout) and math.isfinite(step.timeout) and step.timeout > 0
        ):
            raise DefinitionError(
                f"timeout must be a number of seconds > 0 or None, got {step.timeout!r}",
                saga=self.name,
                step=step.name,
            )

    def _check_wait(self, step: Step) -> None:
        def refuse(why: str) -> DefinitionError:
            return DefinitionError(why, saga=self.name, step=step.name)

        if not isinstance(step.wait, Sleep | WaitForSignal | ChildSaga | ContinueAsNew):
            raise refuse(
                "wait must be Sleep(...), WaitForSignal(...), ChildSaga(...) or "
                f"ContinueAsNew(...), got {step.wait!r}"
            )
        if isinstance(step.wait, ContinueAsNew) and (
            step is not self.steps[-1] or step.group is not None
        ):
            raise refuse("ContinueAsNew ends a run: it is the last step, and in no group")
        if step.action is not None:
            raise refuse("a step has an action or a wait, not both")
        if step.compensation is not None:
            raise refuse("a waiting step has nothing to undo: it takes no compensation")
        if step.timeout is not None:
            raise refuse("a waiting step takes no timeout: give WaitForSignal(timeout=...)")
        if (
            isinstance(step.wait, WaitForSignal)
            and step.wait.timeout is not None
            and step.wait.on_timeout is OnTimeout.COMPENSATE
            and step.kind is not StepKind.COMPENSATABLE
        ):
            raise refuse(
                f"a {step.kind.value} step cannot compensate on timeout: after the pivot a "
                "saga only goes forward (use OnTimeout.CONTINUE, or no timeout)"
            )

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def index(self, name: str) -> int:
        for i, step in enumerate(self.steps):
            if step.name == name:
                return i
        raise KeyError(name)


def by_version(definitions: Iterable[SagaDefinition]) -> dict[tuple[str, int], SagaDefinition]:
    """The definitions by ``(name, version)``.

    Raises:
        DefinitionError: an item is not a ``SagaDefinition``, or two different definitions
            share a name and version.
    """
    known: dict[tuple[str, int], SagaDefinition] = {}
    for definition in definitions:
        if not isinstance(definition, SagaDefinition):
            raise DefinitionError(f"expected SagaDefinition objects, got {definition!r}")
        key = (definition.name, definition.version)
        if known.setdefault(key, definition) is not definition:
            raise DefinitionError(
                f"two different definitions of {definition.name!r} v{definition.version}",
                saga=definition.name,
            )
    return known
