"""Does a recorded history fit a definition? Pure: a definition and events in, a verdict out.

State is folded from events, never re-decided, so a history does not commit to every choice
its definition made: it commits to the decisions it recorded. A history fits a definition
when the definition, told the same outcomes (results, failures for good, cancels), makes
those same recorded decisions. The rules, checked in history order; the first event that
breaks one is reported:

1. ``saga``: its ``SagaStarted`` names the definition's saga and version.
2. ``unknown step``: every step the history names (scheduled, completed, failed or
   compensated) is a step of the definition. A step renamed or removed breaks this.
3. ``step order``: the steps whose actions the history ran are, in the order it first ran
   them, the definition's first steps in order (the n-th is the definition's n-th). Steps
   reordered, or a step inserted before one the history ran, break this.
4. ``no compensation``: every step whose compensation the history ran has one in the
   definition (so it is still a compensatable step).
5. ``compensation order``: the compensations the history ran are, in order, those the
   definition runs: of the steps completed, those with a compensation, newest first.
6. ``compensated past the pivot``: when the history started compensating, every step it had
   completed is compensatable in the definition, and the step whose failure started it is
   not retriable. Past the pivot a saga only goes forward.
7. ``cancelled past the pivot``: when the history accepted a cancel, the step running then
   is compensatable in the definition (the definition refuses to cancel at its pivot or
   past it).
8. ``failed forward``: when the history failed the saga because a step failed for good,
   that step is retriable in the definition (the definition compensates after any other).
9. ``wait kind``: a step that took a signal in the history waits for that signal in the
   definition; a step whose child the history asked to cancel starts a child saga in the
   definition. (A sleep turned into an action, or back, leaves no such trace: ship it as
   a new version.)

Not checked, because the history recorded the outcome instead of leaving it to be
re-decided: retry policies (whether a failure was retried, how many attempts, when),
timeouts, function bodies and results. Nor is what the definition would do after the
history's last decision: steps appended after the last one it ran; while compensating, a
compensation added to (or dropped from) a step older than the last one it undid; an
ending (``SagaCompleted``, ``SagaCompensated``, ``SagaCancelled``) past which the definition
would now go on. A finished instance never decides again; a live one decides with the
definition from its last event on.

The check assumes a history that replays (``fold`` accepts it): it judges the definition,
not the history's own consistency, which ``replay`` checks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

import attrs

from saga._core import events as ev
from saga._core.definition import (
    ChildSaga,
    ContinueAsNew,
    SagaDefinition,
    Sleep,
    Step,
    StepKind,
    WaitForSignal,
)
from saga.errors import NonDeterminismError

__all__ = ["Divergence", "Rule", "check_fits", "divergence"]


class Rule(enum.Enum):
    """The rule of this module's docstring that a history breaks."""

    SAGA = "saga"
    UNKNOWN_STEP = "unknown step"
    STEP_ORDER = "step order"
    NO_COMPENSATION = "no compensation"
    COMPENSATION_ORDER = "compensation order"
    COMPENSATED_PAST_PIVOT = "compensated past the pivot"
    CANCELLED_PAST_PIVOT = "cancelled past the pivot"
    FAILED_FORWARD = "failed forward"
    WAIT_KIND = "wait kind"


@attrs.frozen(kw_only=True)
class Divergence:
    """The first event of a history that its definition does not allow, and why.

    Attributes:
        sequence: the event's sequence number (1 is ``SagaStarted``).
        event: its type name, e.g. ``"StepScheduled"``.
        step: the step it names, or None.
        rule: the rule it breaks.
        reason: one line: what the history has there, and what the definition expects.
        expected: what the definition allows, on one line (e.g. its steps, in order).
        actual: what the history recorded, in the same form.
        column: where ``expected`` and ``actual`` part (for a caret under them), or None.
    """

    sequence: int
    event: str
    step: str | None
    rule: Rule
    reason: str
    expected: str
    actual: str
    column: int | None = None

    @property
    def summary(self) -> str:
        """``event N (Type 'step'): reason``, on one line."""
        named = "" if self.step is None else f" {self.step!r}"
        return f"event {self.sequence} ({self.event}{named}): {self.reason}"

    @property
    def diff(self) -> str:
        """The definition's line above the history's, with a caret where they part."""
        lines = [f"  definition: {self.expected}", f"  history:    {self.actual}"]
        if self.column is not None:
            lines.append(" " * (len("  history:    ") + self.column) + "^")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.summary}\n{self.diff}"


def divergence(definition: SagaDefinition, history: Sequence[ev.Event]) -> Divergence | None:
    """The first event of ``history`` that ``definition`` does not allow, or None if it fits.

    See the module docstring for the rules.
    """
    if not history or not isinstance(history[0], ev.SagaStarted):
        return Divergence(
            sequence=1,
            event=type(history[0]).__name__ if history else "nothing",
            step=None,
            rule=Rule.SAGA,
            reason="a history starts with SagaStarted",
            expected="SagaStarted",
            actual=type(history[0]).__name__ if history else "an empty history",
        )
    walk = _Walk(definition)
    for sequence, event in enumerate(history, 1):
        found = walk.visit(sequence, event)
        if found is not None:
            return found
    return None


def check_fits(definition: SagaDefinition, saga_id: str, history: Sequence[ev.Event]) -> None:
    """Check that instance ``saga_id``'s ``history`` fits ``definition``.

    Raises:
        NonDeterminismError: it does not; its ``detail`` and ``diff`` say where and how.
    """
    found = divergence(definition, history)
    if found is not None:
        raise NonDeterminismError(
            saga_id,
            step=found.step,
            saga=definition.name,
            version=definition.version,
            sequence=found.sequence,
            detail=found.summary,
            diff=found.diff,
        )


def _names(names: Iterable[str], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{name}" for name in names) or (
        "(nothing to undo)" if prefix else "(no step)"
    )


def _column(names: Sequence[str], index: int, prefix: str = "") -> int:
    """Where item ``index`` begins in ``_names(names, prefix)``."""
    return sum(len(prefix) + len(name) + 2 for name in names[:index])


def _waiting(step: Step) -> str:
    match step.wait:
        case None:
            return "a step with an action"
        case Sleep():
            return "a sleep"
        case WaitForSignal(signal=signal):
            return f"a wait for signal {signal!r}"
        case ChildSaga(saga=saga):
            return f"a wait for child saga {saga!r}"
        case ContinueAsNew():
            return "a continue-as-new"
    return repr(step.wait)  # pragma: no cover


def _kind(step: Step) -> str:
    return "a pivot step" if step.kind is StepKind.PIVOT else f"a {step.kind.value} step"


class _Walk:
    """Follows a history event by event, keeping what the rules need to know."""

    def __init__(self, definition: SagaDefinition) -> None:
        self.definition = definition
        self.steps = {step.name: step for step in definition.steps}
        self.ran: list[str] = []  # forward steps, in the order first scheduled
        self.completed: list[str] = []
        self.running: list[str] = []  # forward attempts scheduled and not reported
        self.undone: list[str] = []  # steps whose compensation was scheduled, in order
        self.failed: str | None = None  # the step the previous event failed for good
        self.signals: dict[str, str] = {}  # signal name by message id

    def visit(self, sequence: int, event: ev.Event) -> Divergence | None:
        failed, self.failed = self.failed, None
        match event:
            case ev.SagaStarted(saga=saga, version=version):
                return self._started(sequence, saga, version)
            case ev.StepScheduled(step=step):
                return self._scheduled(sequence, step)
            case ev.StepCompleted(step=step) | ev.StepFailed(step=step):
                if step in self.running:
                    self.running.remove(step)
                if isinstance(event, ev.StepCompleted):
                    self.completed.append(step)
                elif not event.will_retry:
                    self.failed = step
                return self._known(sequence, type(event).__name__, step)
            case ev.CancelRequested():
                return self._cancel(sequence)
            case ev.CompensationTriggered():
                return self._triggered(sequence, failed)
            case ev.CompensationScheduled(step=step):
                return self._compensation(sequence, step)
            case ev.CompensationCompleted(step=step) | ev.CompensationFailed(step=step):
                name = type(event).__name__
                return self._known(sequence, name, step) or self._undoable(sequence, name, step)
            case ev.SagaFailed() if failed is not None:
                return self._failed(sequence, failed)
            case ev.SignalReceived(name=name, message_id=message_id):
                self.signals[message_id] = name
            case ev.SignalConsumed(step=step, message_id=message_id):
                name = self.signals.get(message_id, "?")
                wanted = WaitForSignal(name)
                return self._known(sequence, "SignalConsumed", step) or self._waits(
                    sequence, "SignalConsumed", step, wanted, f"took signal {name!r}"
                )
            case ev.ChildCancelRequested(step=step):
                return self._known(sequence, "ChildCancelRequested", step) or self._waits(
                    sequence, "ChildCancelRequested", step, None, "cancelled its child"
                )
        return None

    # -- the rules -------------------------------------------------------------------------

    def _started(self, sequence: int, saga: str, version: int) -> Divergence | None:
        d = self.definition
        if sequence != 1 or (saga, version) == (d.name, d.version):
            return None
        return Divergence(
            sequence=sequence,
            event="SagaStarted",
            step=None,
            rule=Rule.SAGA,
            reason=f"the history is of {saga!r} v{version}, the definition is {d.name!r} "
            f"v{d.version}",
            expected=f"{d.name} v{d.version}",
            actual=f"{saga} v{version}",
        )

    def _scheduled(self, sequence: int, step: str) -> Divergence | None:
        if step in self.ran:  # a retry
            self.running.append(step)
            return None
        n = len(self.ran)
        self.ran.append(step)
        self.running.append(step)
        names = [s.name for s in self.definition.steps]
        nth = names[n] if n < len(names) else None
        if step not in self.steps:
            rule = Rule.UNKNOWN_STEP
            reason = f"step {n + 1}: the history ran {step!r}, which the definition does not have"
            if nth is not None:
                reason += f" (its step {n + 1} is {nth!r})"
        elif step != nth:
            rule = Rule.STEP_ORDER
            reason = (
                f"step {n + 1}: the history ran {step!r}, the definition's next step is {nth!r}"
            )
        else:
            return None
        return Divergence(
            sequence=sequence,
            event="StepScheduled",
            step=step,
            rule=rule,
            reason=reason,
            expected=_names(names),
            actual=_names(self.ran),
            column=_column(self.ran, n),
        )

    def _known(self, sequence: int, event: str, step: str) -> Divergence | None:
        """Rule 2 for events that follow a scheduling (which is checked in full)."""
        if step in self.steps:
            return None
        return Divergence(
            sequence=sequence,
            event=event,
            step=step,
            rule=Rule.UNKNOWN_STEP,
            reason=f"the history names {step!r}, which the definition does not have",
            expected=_names(s.name for s in self.definition.steps),
            actual=_names(self.ran),
        )

    def _cancel(self, sequence: int) -> Divergence | None:
        for name in self.running:
            step = self.steps.get(name)
            if step is not None and step.kind is not StepKind.COMPENSATABLE:
                return self._kinds(
                    sequence,
                    "CancelRequested",
                    step=name,
                    rule=Rule.CANCELLED_PAST_PIVOT,
                    reason=f"the history accepted a cancel while {name!r} ran, but the "
                    f"definition makes {name!r} {_kind(step)}: it refuses to cancel at or "
                    "past its pivot",
                    actual=f"{_names([*self.completed, name])} (running), cancel",
                )
        return None

    def _triggered(self, sequence: int, failed: str | None) -> Divergence | None:
        for name in self.completed:
            step = self.steps.get(name)
            if step is not None and step.kind is not StepKind.COMPENSATABLE:
                return self._kinds(
                    sequence,
                    "CompensationTriggered",
                    step=name,
                    rule=Rule.COMPENSATED_PAST_PIVOT,
                    reason=f"the history started compensating after {name!r} completed, but "
                    f"the definition makes {name!r} {_kind(step)}: past the pivot a saga only "
                    "goes forward",
                    actual=self._path(failed, "compensate"),
                )
        step = None if failed is None else self.steps.get(failed)
        if failed is not None and step is not None and step.kind is StepKind.RETRIABLE:
            return self._kinds(
                sequence,
                "CompensationTriggered",
                step=failed,
                rule=Rule.COMPENSATED_PAST_PIVOT,
                reason=f"the history started compensating when {failed!r} failed, but the "
                f"definition makes {failed!r} a retriable step: past the pivot a saga only "
                "goes forward (it fails instead)",
                actual=self._path(failed, "compensate"),
            )
        return None

    def _failed(self, sequence: int, failed: str) -> Divergence | None:
        step = self.steps.get(failed)
        if step is None or step.kind is StepKind.RETRIABLE:
            return None
        return self._kinds(
            sequence,
            "SagaFailed",
            step=failed,
            rule=Rule.FAILED_FORWARD,
            reason=f"the history failed the saga when {failed!r} failed, but the definition "
            f"makes {failed!r} {_kind(step)}: it compensates instead",
            actual=self._path(failed, "saga failed"),
        )

    def _compensation(self, sequence: int, step: str) -> Divergence | None:
        if step in self.undone:  # a retry
            return None
        n = len(self.undone)
        self.undone.append(step)
        unknown = self._known(sequence, "CompensationScheduled", step)
        if unknown is not None:
            return attrs.evolve(unknown, reason=f"compensation {n + 1}: {unknown.reason}")
        wrong = self._undoable(sequence, "CompensationScheduled", step)
        if wrong is not None:
            return wrong
        plan = self._plan()
        nth = plan[n] if n < len(plan) else None
        if step == nth:
            return None
        expects = (
            "the definition has nothing left to undo"
            if nth is None
            else f"the definition's next compensation is {nth!r}"
        )
        return Divergence(
            sequence=sequence,
            event="CompensationScheduled",
            step=step,
            rule=Rule.COMPENSATION_ORDER,
            reason=f"compensation {n + 1}: the history undid {step!r}, {expects}",
            expected=_names(plan, "undo "),
            actual=_names(self.undone, "undo "),
            column=_column(self.undone, n, "undo "),
        )

    def _undoable(self, sequence: int, event: str, name: str) -> Divergence | None:
        """Rule 4: a step the history compensated has a compensation."""
        step = self.steps.get(name)
        if step is None or step.compensation is not None:
            return None
        if step.kind is StepKind.COMPENSATABLE:
            why = "which has no compensation in the definition"
        else:
            why = f"which the definition makes {_kind(step)}: it is never undone"
        undone = self.undone if name in self.undone else [*self.undone, name]
        n = undone.index(name)
        return Divergence(
            sequence=sequence,
            event=event,
            step=name,
            rule=Rule.NO_COMPENSATION,
            reason=f"compensation {n + 1}: the history undid {name!r}, {why}",
            expected=_names(self._plan(), "undo "),
            actual=_names(undone, "undo "),
            column=_column(undone, n, "undo "),
        )

    def _waits(
        self, sequence: int, event: str, name: str, signal: WaitForSignal | None, did: str
    ) -> Divergence | None:
        """Rule 9: the step waits as the history shows (for ``signal``, or for a child)."""
        step = self.steps[name]
        wait = step.wait
        if signal is None and isinstance(wait, ChildSaga | ContinueAsNew):
            return None
        if signal is not None and isinstance(wait, WaitForSignal) and wait.signal == signal.signal:
            return None
        return Divergence(
            sequence=sequence,
            event=event,
            step=name,
            rule=Rule.WAIT_KIND,
            reason=f"the history's step {name!r} {did}, but the definition makes it "
            f"{_waiting(step)}",
            expected=f"{name}: {_waiting(step)}",
            actual=f"{name}: {did}",
        )

    # -- helpers ---------------------------------------------------------------------------

    def _plan(self) -> list[str]:
        """What the definition undoes after the history's completed steps, in order."""
        return [
            name
            for name in reversed(self.completed)
            if name in self.steps and self.steps[name].compensation is not None
        ]

    def _path(self, failed: str | None, then: str) -> str:
        """The forward path the history took, and what it did next."""
        done = _names(self.completed)
        if failed is not None:
            done = f"{done}, {failed} (failed)" if self.completed else f"{failed} (failed)"
        return f"{done}, {then}"

    def _kinds(
        self, sequence: int, event: str, *, step: str, rule: Rule, reason: str, actual: str
    ) -> Divergence:
        """A divergence about kinds: the definition's steps are shown with theirs."""
        expected = ", ".join(
            s.name if s.kind is StepKind.COMPENSATABLE else f"{s.name} ({s.kind.value})"
            for s in self.definition.steps
        )
        return Divergence(
            sequence=sequence,
            event=event,
            step=step,
            rule=rule,
            reason=reason,
            expected=expected,
            actual=actual,
        )
