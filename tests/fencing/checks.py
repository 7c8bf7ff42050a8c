"""What every fencing scenario leaves behind must satisfy, read through the Store protocol.

The same ideas as ``tests/crash``: every instance terminal as planned, gap-free
histories that replay to their row, no transition recorded twice, compensations in reverse
completion order, and a ledger of side effects consistent with the histories. With several
processes, one more: every recorded outcome names the process whose attempt it was
(``worker.py`` puts the node in every result and error), and that process has the side
effect in its ledger.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from saga import Phase, idempotency_key
from saga._core import events as ev
from saga._runtime.history import decode_history, replay
from saga._store.port import EventRecord, InstanceRecord, TaskRecord
from tests.fencing import worker

TERMINAL_EVENTS = (ev.SagaCompleted, ev.SagaCompensated, ev.SagaCancelled, ev.SagaFailed)
SCHEDULED: dict[Phase, type[Any]] = {
    Phase.ACTION: ev.StepScheduled,
    Phase.COMPENSATION: ev.CompensationScheduled,
}
#: Per phase: the event recording a success, and the one recording a failure.
OUTCOMES: dict[Phase, tuple[type[Any], type[Any]]] = {
    Phase.ACTION: (ev.StepCompleted, ev.StepFailed),
    Phase.COMPENSATION: (ev.CompensationCompleted, ev.CompensationFailed),
}
OUTCOME_EVENTS = tuple(kind for kinds in OUTCOMES.values() for kind in kinds)
#: The failure recorded for an attempt dropped before it began: it has no side effect.
ABORTED = "saga.Aborted"
_NODE = re.compile(r"\(node (\S+)\)")

Attempt = tuple[str, str, str, int]  # saga_id, phase, step, attempt


@dataclass
class Snapshot:
    """Every row, history and work item of the store, read after the scenario."""

    rows: dict[str, InstanceRecord]
    records: dict[str, list[EventRecord]]
    tasks: list[TaskRecord]

    def events(self, saga_id: str) -> list[Any]:
        return [r.event for r in decode_history(saga_id, self.records[saga_id])]

    def outcomes(self) -> dict[Attempt, tuple[Any, str | None]]:
        """Every recorded attempt outcome, with the node whose attempt it was."""
        found = {}
        for saga_id in self.rows:
            for e in self.events(saga_id):
                for phase, kinds in OUTCOMES.items():
                    if isinstance(e, kinds):
                        found[(saga_id, phase.value, e.step, e.attempt)] = (e, recorded_by(e))
        return found


async def snapshot(store: Any) -> Snapshot:
    rows = {row.saga_id: row for row in await store.instances()}
    records = {}
    for saga_id in rows:
        loaded = await store.load(saga_id)
        assert loaded is not None, saga_id
        row, events = loaded
        rows[saga_id] = row  # the row of the same snapshot as its events
        records[saga_id] = list(events)
    return Snapshot(rows=rows, records=records, tasks=list(await store.tasks()))


def recorded_by(event: Any) -> str | None:
    """The node whose attempt produced ``event`` (None for an attempt that never began)."""
    if isinstance(event, ev.StepCompleted | ev.CompensationCompleted):
        return str(event.result["node"])
    if event.error.type == ABORTED:
        return None
    found = _NODE.search(event.error.message)
    assert found is not None, f"an outcome that names no node: {event}"
    return found.group(1)


def attempt_of(line: dict[str, Any]) -> Attempt:
    return (line["saga_id"], line["phase"], line["step"], line["attempt"])


def check_all(
    snap: Snapshot, ledger: list[dict[str, Any]], expected: dict[str, str], where: str
) -> None:
    """Every guarantee that must hold whatever was done to the processes.

    ``expected`` maps every saga id the store must hold to its terminal status.
    """
    assert sorted(snap.rows) == sorted(expected), where
    for saga_id, status in sorted(expected.items()):
        _check_history(snap, saga_id, status, f"{saga_id}: {where}")
    _check_ledger(snap, ledger, where)
    assert snap.tasks == [], f"work items outlive their sagas: {snap.tasks}: {where}"


def _check_history(snap: Snapshot, saga_id: str, status: str, where: str) -> None:
    row, records = snap.rows[saga_id], snap.records[saga_id]
    assert row.status == status, where
    assert (row.saga, row.version) == (worker.SAGA, 1), where
    # Gap-free from 1, and replay gives the row.
    assert [r.sequence for r in records] == list(range(1, len(records) + 1)), where
    state = replay(saga_id, records, row)
    assert (state.status.value, state.sequence) == (row.status, row.sequence), where
    assert state.in_flight == (), where
    # A terminal instance needs no driver: its lease ended with its last commit.
    assert row.owner is None and row.lease_until is None, f"{row}: {where}"
    events = snap.events(saga_id)
    assert isinstance(events[0], ev.SagaStarted), where
    assert sum(isinstance(e, ev.SagaStarted) for e in events) == 1, where
    terminal = [i for i, e in enumerate(events) if isinstance(e, TERMINAL_EVENTS)]
    assert terminal == [len(events) - 1], f"terminal events at {terminal}: {where}"
    # No transition twice: per attempt scheduled once and one outcome; per step one success.
    for phase in Phase:
        scheduled = Counter((e.step, e.attempt) for e in events if isinstance(e, SCHEDULED[phase]))
        assert max(scheduled.values(), default=1) == 1, f"scheduled twice {scheduled}: {where}"
        outcomes = Counter((e.step, e.attempt) for e in events if isinstance(e, OUTCOMES[phase]))
        assert max(outcomes.values(), default=1) == 1, f"two outcomes {outcomes}: {where}"
        assert set(outcomes) <= set(scheduled), f"an outcome never scheduled: {where}"
        successes = Counter(e.step for e in events if isinstance(e, OUTCOMES[phase][0]))
        assert max(successes.values(), default=1) == 1, f"done twice {successes}: {where}"
    # The plan: what ran, and the undoing in reverse completion order.
    completed = [e.step for e in events if isinstance(e, ev.StepCompleted)]
    undone = [e.step for e in events if isinstance(e, ev.CompensationCompleted)]
    if status == "completed":
        assert completed == list(worker.STEPS), where
        assert undone == [], where
    else:
        assert status in ("compensated", "cancelled"), where
        assert completed == list(worker.STEPS[: len(completed)]), where
        expected_undo = [s for s in reversed(completed) if s in worker.COMPENSATED_STEPS]
        assert undone == expected_undo, f"compensated {undone}, expected {expected_undo}: {where}"
    if status == "compensated":
        failed = [e for e in events if isinstance(e, ev.StepFailed)]
        assert [(e.step, e.attempt) for e in failed] == [("ship", 1), ("ship", 2)], where
    if status == "cancelled":
        assert any(isinstance(e, ev.CancelRequested) for e in events), where


def _check_ledger(snap: Snapshot, ledger: list[dict[str, Any]], where: str) -> None:
    by_attempt: dict[Attempt, list[dict[str, Any]]] = defaultdict(list)
    for line in ledger:
        saga_id = line["saga_id"]
        phase = Phase(line["phase"])
        at = f"{line}: {where}"
        assert line["idempotency_key"] == idempotency_key(saga_id, line["step"], phase), at
        assert saga_id in snap.rows, f"a side effect of an unknown saga: {at}"
        # Commit before emit: no side effect of an attempt that was never scheduled.
        assert any(
            isinstance(e, SCHEDULED[phase])
            and (e.step, e.attempt) == (line["step"], line["attempt"])
            for e in snap.events(saga_id)
        ), f"a side effect of an attempt never scheduled: {at}"
        by_attempt[attempt_of(line)].append(line)
    # Every recorded outcome is the side effect of the process it names, with that outcome.
    for attempt, (event, node) in snap.outcomes().items():
        if node is None:
            continue
        outcome = "ok" if isinstance(event, OUTCOMES[Phase(attempt[1])][0]) else "error"
        assert any(
            (line["node"], line["outcome"]) == (node, outcome) for line in by_attempt[attempt]
        ), f"{event} (by {node}) has no side effect in the ledger: {attempt}: {where}"
    # In the outside world the undoing runs in reverse too: the first run of each
    # compensation follows the first run of the one before it.
    first: dict[tuple[str, str], float] = {}
    for line in ledger:
        if line["phase"] == Phase.COMPENSATION.value:
            first.setdefault((line["saga_id"], line["step"]), line["t"])
    for saga_id in snap.rows:
        runs = sorted(
            (t, step) for (s, step), t in first.items() if s == saga_id
        )  # by time of the first side effect
        order = [step for _, step in runs]
        undone = [e.step for e in snap.events(saga_id) if isinstance(e, ev.CompensationCompleted)]
        assert order == undone, f"{saga_id}: compensations ran {order}, recorded {undone}: {where}"
