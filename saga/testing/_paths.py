"""Every compensation path of a saga: fail each step in turn, check how the saga ends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from saga._core.definition import OnTimeout, SagaDefinition, StepKind, WaitForSignal
from saga._core.events import CompensationCompleted, StepCompleted
from saga._core.state import Status
from saga._runtime.coordinator import Coordinator
from saga._runtime.handle import SagaOutcome
from saga._runtime.history import RecordedEvent

if TYPE_CHECKING:
    from saga.testing._kit import SagaTestKit

__all__ = ["CompensationPath", "compensation_paths", "compensations", "completed_steps"]


def completed_steps(history: Sequence[RecordedEvent]) -> list[str]:
    """The steps whose action completed, in the order they did."""
    return [e.event.step for e in history if isinstance(e.event, StepCompleted)]


def compensations(history: Sequence[RecordedEvent]) -> list[str]:
    """The steps whose compensation completed, in the order they did."""
    return [e.event.step for e in history if isinstance(e.event, CompensationCompleted)]


@attrs.frozen(kw_only=True)
class CompensationPath:
    """What must happen when one step of a saga fails for good.

    Attributes:
        saga: the definition.
        step: the step that fails (its action, permanently, on its first attempt; or, for
            a signal wait that compensates on timeout, its timeout).
        status: the terminal status the saga must end in.
        completed: the steps that complete before it, in order.
        compensations: the compensations that must run, in this exact order.
        times_out: the step is a signal wait, and it fails by timing out.
        siblings: for a member of a parallel group, the other members: each may complete
            (it ran alongside) or not (dropped before it began); those that completed must
            be undone, in any order, before the steps before the group.
    """

    saga: SagaDefinition = attrs.field(repr=False)
    step: str
    status: Status
    completed: tuple[str, ...]
    compensations: tuple[str, ...]
    times_out: bool = False
    siblings: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.step}-times-out" if self.times_out else f"{self.step}-fails"

    def describe(self) -> str:
        undo = ", ".join(self.compensations) or "nothing"
        how = "times out" if self.times_out else "fails"
        return f"{self.step} {how} -> {self.status.value}, undoing {undo}"

    async def check(
        self,
        kit: SagaTestKit,
        input: Any = None,
        *,
        saga_id: str | None = None,
        coordinator: Coordinator | None = None,
        signals: Mapping[str, Any] | None = None,
    ) -> SagaOutcome:
        """Run the saga with ``input``, its step failing for good, and check the path.

        Every signal wait before the step is sent its signal as soon as the saga starts,
        with the payload ``signals`` gives its name (default ``None``). Uses
        ``coordinator`` (one of the kit's) or a fresh one of the kit's. Returns the
        outcome.

        Raises:
            AssertionError: the saga ended otherwise, saying expected versus actual.
        """
        saga_id = saga_id or f"{self.saga.name}-{self}"
        if not self.times_out:
            kit.faults.fail_permanently(self.step, saga=self.saga.name, saga_id=saga_id)
        if coordinator is None:
            async with kit.coordinator([self.saga]) as fresh:
                return await self._check(fresh, saga_id, input, signals or {})
        return await self._check(coordinator, saga_id, input, signals or {})

    async def _check(
        self, coordinator: Coordinator, saga_id: str, input: Any, signals: Mapping[str, Any]
    ) -> SagaOutcome:
        handle = await coordinator.start(self.saga, saga_id, input)
        for step in self.saga.steps[: self.saga.index(self.step)]:
            if isinstance(step.wait, WaitForSignal):  # kept until the saga waits for it
                name = step.wait.signal
                await handle.signal(name, signals.get(name), message_id=f"path:{step.name}")
        outcome = await handle.outcome()
        history = await handle.history()
        actual = (outcome.status, tuple(completed_steps(history)), tuple(compensations(history)))
        if not (actual[0] is self.status and self._fits(actual[1], actual[2])):
            raise AssertionError(
                f"{self.saga.name} v{self.saga.version}, instance {saga_id!r}: "
                f"when {self.step!r} fails\n"
                f"  expected: {_show(self.status, self.completed, self.compensations)}"
                + (
                    f" (and any of [{', '.join(self.siblings)}] completed, then undone first)"
                    if self.siblings
                    else ""
                )
                + "\n"
                f"  actual:   {_show(*actual)}"
                + (f"\n  reason:   {outcome.reason}" if outcome.reason else "")
            )
        return outcome

    def _fits(self, completed: tuple[str, ...], undone: tuple[str, ...]) -> bool:
        """Whether the steps that completed and were undone are what the path allows."""
        head, ran = completed[: len(self.completed)], completed[len(self.completed) :]
        if self._norm(head) != self._norm(self.completed) or not set(ran) <= set(self.siblings):
            return False
        # Siblings that ran alongside are undone together, in any order, before the rest.
        together = {s for s in ran if self.saga.step(s).compensation is not None}
        return set(undone[: len(together)]) == together and self._norm(
            undone[len(together) :]
        ) == self._norm(self.compensations)

    def _norm(self, names: Sequence[str]) -> tuple[str, ...]:
        """``names`` with each run of one parallel group's members sorted: they complete,
        and are undone, in any order among themselves."""

        group = {s.name: s.group for s in self.saga.steps}.get
        out: list[str] = []
        i = 0
        while i < len(names):
            j = i + 1
            if group(names[i]) is not None:
                while j < len(names) and group(names[j]) == group(names[i]):
                    j += 1
            out.extend(sorted(names[i:j]))
            i = j
        return tuple(out)


def _show(status: Status, completed: tuple[str, ...], undone: tuple[str, ...]) -> str:
    return f"{status.value}; completed [{', '.join(completed)}]; compensated [{', '.join(undone)}]"


def compensation_paths(saga: SagaDefinition) -> list[CompensationPath]:
    """One path per step: that step fails for good, after every step before it completed.

    Before the pivot (and at it), the saga must compensate every completed step that has a
    compensation, newest first, and end ``compensated``. Past the pivot there is no way
    back: the saga must end ``failed`` and undo nothing. A waiting step runs no code that
    could fail: a signal wait that compensates on timeout gets a path in which it times
    out; other waits get none.

    Use it as a pytest parametrization::

        @pytest.mark.parametrize("path", compensation_paths(checkout), ids=str)
        async def test_compensation(saga_kit, path):
            await path.check(saga_kit, {"sku": "book"})
    """
    if not isinstance(saga, SagaDefinition):
        raise TypeError(f"compensation_paths takes a SagaDefinition, got {saga!r}")
    paths = []
    for index, step in enumerate(saga.steps):
        times_out = (
            isinstance(step.wait, WaitForSignal)
            and step.wait.timeout is not None
            and step.wait.on_timeout is OnTimeout.COMPENSATE
        )
        if step.wait is not None and not times_out:
            continue
        before = saga.steps[:index]
        members = saga.group(step.name)
        if members:  # the members before it in the group may or may not have run
            before = saga.steps[: saga.index(members[0].name)]
        undone: tuple[str, ...] = ()
        if step.kind is StepKind.RETRIABLE:
            status = Status.FAILED
        else:
            status = Status.COMPENSATED
            undone = tuple(s.name for s in reversed(before) if s.compensation is not None)
        paths.append(
            CompensationPath(
                saga=saga,
                step=step.name,
                status=status,
                completed=tuple(s.name for s in before),
                compensations=undone,
                times_out=times_out,
                siblings=tuple(m.name for m in members if m.name != step.name),
            )
        )
    return paths
