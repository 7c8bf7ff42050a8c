"""What every fencing scenario leaves behind must satisfy, read through the Store protocol.

The shared checks of ``tests.chaos.checks`` (those of the crash tests and the chaos
runner): gap-free histories that replay to their row, no transition recorded twice,
compensations in reverse completion order (in the histories and in the ledger, where a
stale process may finish late: ``interleaved``), and a ledger of side effects consistent
with the histories. Then what this scenario's plan says (``worker.plan``): every instance
ended as expected, having run what it should. With several processes, one more: every
recorded outcome names the process whose attempt it was (``worker.py`` puts the node in
every result and error), and that process has the side effect in its ledger.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from saga import Phase
from saga._core import events as ev
from tests.chaos.checks import (
    ABORTED,
    OUTCOME_EVENTS,
    OUTCOMES,
    Attempt,
    Snapshot,
    all_violations,
    attempt_of,
    snapshot,
)
from tests.fencing import worker

__all__ = [
    "OUTCOME_EVENTS",
    "Snapshot",
    "attempt_of",
    "check_all",
    "recorded_by",
    "recorded_outcomes",
    "snapshot",
]

_NODE = re.compile(r"\(node (\S+)\)")


def recorded_by(event: Any) -> str | None:
    """The node whose attempt produced ``event`` (None for an attempt that never began)."""
    if isinstance(event, ev.StepCompleted | ev.CompensationCompleted):
        return str(event.result["node"])
    if event.error.type == ABORTED:
        return None
    found = _NODE.search(event.error.message)
    assert found is not None, f"an outcome that names no node: {event}"
    return found.group(1)


def recorded_outcomes(snap: Snapshot) -> dict[Attempt, tuple[Any, str | None]]:
    """Every recorded attempt outcome, with the node whose attempt it was."""
    found = {}
    for saga_id in snap.rows:
        for e in snap.events(saga_id):
            for phase, kinds in OUTCOMES.items():
                if isinstance(e, kinds):
                    found[(saga_id, phase.value, e.step, e.attempt)] = (e, recorded_by(e))
    return found


def check_all(
    snap: Snapshot, ledger: list[dict[str, Any]], expected: dict[str, str], where: str
) -> None:
    """Every guarantee that must hold whatever was done to the processes.

    ``expected`` maps every saga id the store must hold to its terminal status.
    """
    assert sorted(snap.rows) == sorted(expected), where
    violations = all_violations(snap, ledger, lambda _: worker.COMPENSATED_STEPS, interleaved=True)
    assert violations == [], "\n".join([*violations, where])
    for saga_id, status in sorted(expected.items()):
        _check_plan(snap, saga_id, status, f"{saga_id}: {where}")
    _check_nodes(snap, ledger, where)
    assert snap.tasks == [], f"work items outlive their sagas: {snap.tasks}: {where}"


def _check_plan(snap: Snapshot, saga_id: str, status: str, where: str) -> None:
    """The saga ended as planned, having run what its plan says."""
    row = snap.rows[saga_id]
    assert row.status == status, where
    assert (row.saga, row.version) == (worker.SAGA, 1), where
    events = snap.events(saga_id)
    completed = [e.step for e in events if isinstance(e, ev.StepCompleted)]
    if status == "completed":
        assert completed == list(worker.STEPS), where
    else:
        assert status in ("compensated", "cancelled"), where
        assert completed == list(worker.STEPS[: len(completed)]), where
    if status == "compensated":
        failed = [e for e in events if isinstance(e, ev.StepFailed)]
        assert [(e.step, e.attempt) for e in failed] == [("ship", 1), ("ship", 2)], where
    if status == "cancelled":
        assert any(isinstance(e, ev.CancelRequested) for e in events), where


def _check_nodes(snap: Snapshot, ledger: list[dict[str, Any]], where: str) -> None:
    """Every recorded outcome is the side effect of the process it names, with that
    outcome."""
    by_attempt: dict[Attempt, list[dict[str, Any]]] = defaultdict(list)
    for line in ledger:
        by_attempt[attempt_of(line)].append(line)
    for attempt, (event, node) in recorded_outcomes(snap).items():
        if node is None:
            continue
        outcome = "ok" if isinstance(event, OUTCOMES[Phase(attempt[1])][0]) else "error"
        assert any(
            (line["node"], line["outcome"]) == (node, outcome) for line in by_attempt[attempt]
        ), f"{event} (by {node}) has no side effect in the ledger: {attempt}: {where}"
