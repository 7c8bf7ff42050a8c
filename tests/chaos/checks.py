"""What a store and a ledger must satisfy after any crash, kill or takeover.

Shared by the chaos runner, the crash tests and the fencing tests. A ``Snapshot`` is every
row, history and work item of a store, read through the ``Store`` protocol (``snapshot``)
or, for a SQLite file a killed process left behind, directly and read-only
(``sqlite_snapshot``: no checkpoint, so the next process finds the file as the kill left
it). Each ``*_violations`` function returns what does not hold, one string each, naming
the saga: empty when all holds.

* ``history_violations``: gap-free from 1; replay gives the row; started once, first;
  a terminal event once, last, iff the row is terminal; no attempt scheduled twice or
  given two outcomes; no step done twice; no outcome never scheduled; nothing in flight
  and no lease held once terminal.
* ``compensation_violations``: the history undid the steps it completed (those with a
  compensation), newest first, and only when it turned back.
* ``ledger_violations``: every side effect carries its step's one idempotency key and
  belongs to an attempt the history scheduled (commit before emit); every recorded outcome
  has its side effect, with that outcome.
* ``undo_violations``: in the outside world, the compensations ran on exactly the steps
  whose effect may have happened (an ``ok`` line of their action), in reverse order.
* ``task_violations``: no work item outlives its saga.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saga import Phase, idempotency_key
from saga._core import events as ev
from saga._core.codec import decode_event
from saga._runtime.history import replay
from saga._store.port import EventRecord, InstanceRecord, TaskRecord
from saga.errors import CorruptHistoryError

TERMINAL_STATUSES = ("completed", "compensated", "failed", "cancelled")
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

Attempt = tuple[str, str, str, int]  # saga_id, phase, step, attempt


def attempt_of(line: dict[str, Any]) -> Attempt:
    return (line["saga_id"], line["phase"], line["step"], line["attempt"])


@dataclass
class Snapshot:
    """Every row, history and work item of a store, read at one moment."""

    rows: dict[str, InstanceRecord]
    records: dict[str, list[EventRecord]]
    tasks: list[TaskRecord]
    _decoded: dict[str, list[Any]] = field(default_factory=dict, repr=False)

    def events(self, saga_id: str) -> list[Any]:
        """The decoded events of ``saga_id``'s history, in stored order."""
        if saga_id not in self._decoded:
            self._decoded[saga_id] = [
                decode_event(r.type, r.schema, r.data) for r in self.records.get(saga_id, [])
            ]
        return self._decoded[saga_id]

    def _has(self, line: dict[str, Any], kinds: type[Any] | tuple[type[Any], ...]) -> bool:
        return any(
            isinstance(e, kinds) and (e.step, e.attempt) == (line["step"], line["attempt"])
            for e in self.events(line["saga_id"])
        )

    def scheduled(self, line: dict[str, Any]) -> bool:
        """Whether the history holds the scheduling of the attempt that wrote ``line``."""
        return self._has(line, SCHEDULED[Phase(line["phase"])])

    def outcome_recorded(self, line: dict[str, Any]) -> bool:
        """Whether the history holds the outcome of the attempt that wrote ``line``."""
        return self._has(line, OUTCOMES[Phase(line["phase"])])

    def outcomes(self, phase: Phase | None = None) -> int:
        """How many attempt outcomes (of ``phase``, or of both) are recorded in all."""
        kinds = OUTCOMES[phase] if phase else OUTCOME_EVENTS
        return sum(isinstance(e, kinds) for saga_id in self.records for e in self.events(saga_id))


async def snapshot(store: Any) -> Snapshot:
    """Everything in ``store`` (open), through the Store protocol."""
    rows = {row.saga_id: row for row in await store.instances()}
    records = {}
    for saga_id in rows:
        loaded = await store.load(saga_id)
        assert loaded is not None, saga_id
        row, events = loaded
        rows[saga_id] = row  # the row of the same snapshot as its events
        records[saga_id] = list(events)
    return Snapshot(rows=rows, records=records, tasks=list(await store.tasks()))


def sqlite_snapshot(db: Path) -> Snapshot:
    """Everything in the SQLite file ``db``, read-only: no checkpoint on close, so the next
    process finds the file (and its WAL) as a kill left it. Empty if there is no file."""
    if not db.exists():
        return Snapshot(rows={}, records={}, tasks=[])
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = {
            r[0]: InstanceRecord(
                saga_id=r[0],
                saga=r[1],
                version=r[2],
                status=r[3],
                sequence=r[4],
                input=r[5],
                created_at=r[6],
                updated_at=r[7],
                owner=r[8],
                epoch=r[9],
                lease_until=r[10],
            )
            for r in conn.execute(
                "SELECT saga_id, saga, version, status, sequence, input, created_at, "
                "updated_at, owner, epoch, lease_until FROM saga_instances"
            )
        }
        records: dict[str, list[EventRecord]] = defaultdict(list)
        for saga_id, seq, type_, schema, data, at in conn.execute(
            "SELECT saga_id, sequence, type, schema, data, recorded_at FROM saga_events "
            "ORDER BY saga_id, sequence"
        ):
            records[saga_id].append(
                EventRecord(
                    saga_id=saga_id,
                    sequence=seq,
                    type=type_,
                    schema=schema,
                    data=data,
                    recorded_at=at,
                )
            )
        tasks = [
            TaskRecord(
                task_id=r[0], saga_id=r[1], kind=r[2], step=r[3], attempt=r[4], run_after=r[5]
            )
            for r in conn.execute(
                "SELECT task_id, saga_id, kind, step, attempt, run_after FROM saga_tasks "
                "ORDER BY task_id"
            )
        ]
    finally:
        conn.close()
    return Snapshot(rows=rows, records=dict(records), tasks=tasks)


# -- histories ----------------------------------------------------------------------------


def history_violations(snap: Snapshot, saga_id: str) -> list[str]:
    """The history of ``saga_id`` against its row, and against itself."""
    out: list[str] = []
    row, records = snap.rows[saga_id], snap.records.get(saga_id, [])
    sequences = [r.sequence for r in records]
    if sequences != list(range(1, len(records) + 1)):
        out.append(f"{saga_id}: history is not gap-free from 1: sequences {sequences}")
    terminal_row = row.status in TERMINAL_STATUSES
    try:
        state = replay(saga_id, records, row)
    except CorruptHistoryError as exc:
        out.append(f"{saga_id}: replay does not give the stored row: {exc}")
    else:
        if terminal_row and state.in_flight:
            out.append(f"{saga_id}: {row.status} with attempts in flight: {state.in_flight}")
    if terminal_row and (row.owner is not None or row.lease_until is not None):
        out.append(f"{saga_id}: {row.status} but leased to {row.owner} until {row.lease_until}")
    events = snap.events(saga_id)
    starts = [i for i, e in enumerate(events) if isinstance(e, ev.SagaStarted)]
    if starts != [0]:
        out.append(f"{saga_id}: SagaStarted at positions {starts}, not once and first")
    terminal = [i for i, e in enumerate(events) if isinstance(e, TERMINAL_EVENTS)]
    if terminal != ([len(events) - 1] if terminal_row else []):
        out.append(f"{saga_id}: row {row.status}, terminal events at positions {terminal}")
    for phase in Phase:
        scheduled = Counter((e.step, e.attempt) for e in events if isinstance(e, SCHEDULED[phase]))
        outcomes = Counter((e.step, e.attempt) for e in events if isinstance(e, OUTCOMES[phase]))
        successes = Counter(e.step for e in events if isinstance(e, OUTCOMES[phase][0]))
        for what, counts in (
            ("scheduled", scheduled),
            ("given an outcome", outcomes),
            ("completed", successes),
        ):
            twice = sorted(key for key, n in counts.items() if n > 1)
            if twice:
                out.append(f"{saga_id}: {phase.value} {what} twice (recorded twice): {twice}")
        never = sorted(set(outcomes) - set(scheduled))
        if never:
            out.append(f"{saga_id}: {phase.value} outcomes of attempts never scheduled: {never}")
    return out


def _prefix_of(runs: list[str], expected: list[str]) -> bool:
    return runs == expected[: len(runs)]


def compensation_violations(
    snap: Snapshot, saga_id: str, compensable: Collection[str]
) -> list[str]:
    """The history undid what it completed (of ``compensable``), newest first, and only
    when it turned back: all of it unless a compensation failed for good (``failed``)."""
    status, events = snap.rows[saga_id].status, snap.events(saga_id)
    completed = [e.step for e in events if isinstance(e, ev.StepCompleted)]
    expected = [s for s in reversed(completed) if s in compensable]
    undone = [e.step for e in events if isinstance(e, ev.CompensationCompleted)]
    scheduled: list[str] = []
    for e in events:
        if isinstance(e, ev.CompensationScheduled) and scheduled[-1:] != [e.step]:
            scheduled.append(e.step)
    turned = any(isinstance(e, ev.CompensationTriggered) for e in events)
    where = f"{saga_id} ({status}): completed {completed}"
    if status == "completed":
        if turned or scheduled:
            return [f"{where}: completed, yet it compensated {scheduled}"]
        return []
    if not _prefix_of(scheduled, expected):
        return [f"{where}: compensations scheduled {scheduled}, expected (in order) {expected}"]
    if status in ("compensated", "cancelled") and undone != expected:
        return [f"{where}: undid {undone}, expected {expected}"]
    if not _prefix_of(undone, expected):
        return [f"{where}: undid {undone}, expected a prefix of {expected}"]
    return []


# -- the outside world --------------------------------------------------------------------


def by_saga(ledger: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in ledger:
        grouped[line["saga_id"]].append(line)
    return dict(grouped)


def ledger_violations(snap: Snapshot, ledger: list[dict[str, Any]]) -> list[str]:
    """Keys, commit before emit, and recorded outcomes against their side effects."""
    out: list[str] = []
    keys: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    lines = by_saga(ledger)
    for saga_id, mine in sorted(lines.items()):
        if saga_id not in snap.rows:
            out.append(f"{saga_id}: side effects of a saga the store does not hold: {mine[0]}")
            continue
        for line in mine:
            keys[(saga_id, line["step"], line["phase"])].add(line["idempotency_key"])
            if not snap.scheduled(line):
                out.append(f"{saga_id}: a side effect of an attempt never scheduled: {line}")
    for (saga_id, step, phase), seen in sorted(keys.items()):
        if seen != {idempotency_key(saga_id, step, Phase(phase))}:
            out.append(f"{saga_id}: {phase} of {step} ran with idempotency keys {sorted(seen)}")
    for saga_id in sorted(snap.rows):
        effects = {(attempt_of(line), line["outcome"]) for line in lines.get(saga_id, [])}
        for e in snap.events(saga_id):
            if not isinstance(e, OUTCOME_EVENTS):
                continue
            phase = Phase.ACTION if isinstance(e, OUTCOMES[Phase.ACTION]) else Phase.COMPENSATION
            if isinstance(e, ev.StepFailed | ev.CompensationFailed) and e.error.type == ABORTED:
                continue
            outcome = "ok" if isinstance(e, OUTCOMES[phase][0]) else "error"
            if ((saga_id, phase.value, e.step, e.attempt), outcome) not in effects:
                out.append(f"{saga_id}: {e} recorded, but no such side effect in the ledger")
    return out


def undo_violations(
    snap: Snapshot,
    ledger: list[dict[str, Any]],
    compensable: Callable[[str], Collection[str]],
    *,
    interleaved: bool = False,
) -> list[str]:
    """In the ledger: every saga that turned back undid exactly the steps (of
    ``compensable(saga_id)``) whose action has a successful side effect, newest first.

    A compensation's lines must form one run (re-runs after a crash follow each other);
    with ``interleaved`` (several processes, a stale one finishing late) only the order of
    each compensation's first line counts.
    """
    out: list[str] = []
    lines = by_saga(ledger)
    for saga_id, row in sorted(snap.rows.items()):
        mine = lines.get(saga_id, [])
        done: list[str] = []  # steps whose action had its effect, in order of the first
        runs: list[str] = []
        for line in mine:
            if line["phase"] == Phase.ACTION.value:
                if line["outcome"] == "ok" and line["step"] not in done:
                    done.append(line["step"])
            elif (line["step"] not in runs) if interleaved else (runs[-1:] != [line["step"]]):
                runs.append(line["step"])
        keep = compensable(saga_id)
        expected = [s for s in reversed(done) if s in keep]
        where = f"{saga_id} ({row.status}): effects of {done}"
        if row.status == "completed" and runs:
            out.append(f"{where}: completed, yet compensations ran: {runs}")
        elif row.status in ("compensated", "cancelled") and runs != expected:
            out.append(f"{where}: compensations ran {runs}, expected {expected}")
        elif not _prefix_of(runs, expected):
            out.append(f"{where}: compensations ran {runs}, expected a prefix of {expected}")
    return out


def task_violations(snap: Snapshot) -> list[str]:
    """Work items of terminal sagas (they are settled in the transaction that ends one)."""
    return [
        f"{t.saga_id}: work item {t.task_id} outlives its saga ({snap.rows[t.saga_id].status})"
        for t in snap.tasks
        if t.saga_id not in snap.rows or snap.rows[t.saga_id].status in TERMINAL_STATUSES
    ]


def all_violations(
    snap: Snapshot,
    ledger: list[dict[str, Any]],
    compensable: Callable[[str], Collection[str]],
    *,
    interleaved: bool = False,
) -> list[str]:
    """Every check above, on every saga of ``snap``; a saga that cannot even be checked
    (an undecodable event) is a violation too."""
    out: list[str] = []
    for saga_id in sorted(snap.rows):
        try:
            out += history_violations(snap, saga_id)
            out += compensation_violations(snap, saga_id, compensable(saga_id))
        except Exception as exc:
            out.append(f"{saga_id}: cannot be checked: {type(exc).__name__}: {exc}")
    try:
        out += ledger_violations(snap, ledger)
        out += undo_violations(snap, ledger, compensable, interleaved=interleaved)
    except Exception as exc:
        out.append(f"the ledger cannot be checked: {type(exc).__name__}: {exc}")
    out += task_violations(snap)
    return out
