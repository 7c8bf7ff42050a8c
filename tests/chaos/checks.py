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
* ``wait_violations``: each waiting step (a durable sleep, a wait for a signal) was
  scheduled once and ended at most once (exactly once if the saga went past it); a sleep
  never ended before its ``run_after``, in the history or in the outside world (no side
  effect of a later step before it, for ledger lines that say when they happened); a wait
  ended by a signal took one that was received, once, with its payload as its result;
  one ended by its timeout did so no earlier than its deadline; no signal received twice.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
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


def wait_violations(
    snap: Snapshot,
    saga_id: str,
    waits: Mapping[str, str],
    lines: Iterable[dict[str, Any]] = (),
) -> list[str]:
    """The waiting steps of ``saga_id`` (``waits``: ``{step: "sleep" | "signal"}``) and
    its signals, in its history; and, given its ledger ``lines`` that carry ``at`` (when the
    side effect happened, on the coordinator's clock), that no later step ran during a
    sleep. See the module docstring."""
    out: list[str] = []
    events = snap.events(saga_id)
    received = Counter(e.message_id for e in events if isinstance(e, ev.SignalReceived))
    taken = Counter(e.message_id for e in events if isinstance(e, ev.SignalConsumed))
    for what, counts in (("received", received), ("taken", taken)):
        out += [
            f"{saga_id}: signal {message_id!r} {what} {n} times"
            for message_id, n in sorted(counts.items())
            if n > 1
        ]
    for step, kind in sorted(waits.items()):
        out += _wait_violations(snap, saga_id, step, kind, list(lines))
    return out


#: The failures a waiting step may record: a cancel ended it; its signal did not come.
WAIT_FAILURES = {"sleep": ("saga.Cancelled",), "signal": ("saga.Cancelled", "saga.SignalTimeout")}


def _wait_violations(
    snap: Snapshot, saga_id: str, step: str, kind: str, lines: list[dict[str, Any]]
) -> list[str]:
    where = f"{saga_id}: {kind} {step!r}"
    records, events = snap.records.get(saga_id, []), snap.events(saga_id)
    planned = [
        i for i, e in enumerate(events) if isinstance(e, ev.StepScheduled) and e.step == step
    ]
    ended = [
        i
        for i, e in enumerate(events)
        if isinstance(e, ev.StepCompleted | ev.StepFailed) and e.step == step
    ]
    if not planned:
        return [f"{where} ended without being scheduled"] if ended else []
    scheduled = events[planned[0]]
    if len(planned) > 1 or scheduled.attempt != 1:
        return [f"{where} scheduled {[events[i] for i in planned]}: a wait is never retried"]
    if len(ended) > 1:
        return [f"{where} ended {len(ended)} times: {[events[i] for i in ended]}"]
    if not ended:
        went_on = snap.rows[saga_id].status == "completed" or any(
            isinstance(e, ev.StepScheduled) and e.step != step for e in events[planned[0] :]
        )
        return [f"{where} never ended, yet the saga went on past it"] if went_on else []
    at = ended[0]
    outcome, recorded_at, run_after = events[at], records[at].recorded_at, scheduled.run_after
    if isinstance(outcome, ev.StepFailed):
        if outcome.error.type not in WAIT_FAILURES[kind]:
            return [f"{where} failed as no wait may: {outcome}"]
        if outcome.error.type == "saga.SignalTimeout" and (
            run_after is None or recorded_at < run_after
        ):
            return [f"{where} timed out at {recorded_at}, before its deadline {run_after}"]
        return []
    if kind == "sleep":
        if run_after is None:
            return [f"{where} was scheduled without its end (run_after)"]
        out = []
        if recorded_at < run_after:
            out.append(
                f"{where} completed at {recorded_at}, {run_after - recorded_at:.6f}s before "
                f"its end {run_after}"
            )
        later = {e.step for e in events[at:] if isinstance(e, ev.StepScheduled)}
        early = [
            line
            for line in lines
            if line["phase"] == Phase.ACTION.value
            and line["step"] in later
            and line.get("at", run_after) < run_after
        ]
        if early:
            out.append(f"{where} ends at {run_after}; a later step ran before: {early[0]}")
        return out
    # A signal wait completed: with the signal it took just before, or by its timeout.
    consumed = [e for e in events[:at] if isinstance(e, ev.SignalConsumed) and e.step == step]
    if not consumed:
        if run_after is None or recorded_at < run_after:
            return [f"{where} completed with no signal, before its timeout ({run_after})"]
        return []
    message_id = consumed[-1].message_id
    signals = [
        e for e in events[:at] if isinstance(e, ev.SignalReceived) and e.message_id == message_id
    ]
    if not signals:
        return [f"{where} took signal {message_id!r}, never received before"]
    if outcome.result != signals[0].payload:
        return [
            f"{where} completed with {outcome.result!r}, its signal said {signals[0].payload!r}"
        ]
    return []


# -- the outside world --------------------------------------------------------------------


def by_saga(ledger: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in ledger:
        grouped[line["saga_id"]].append(line)
    return dict(grouped)


def ledger_violations(
    snap: Snapshot,
    ledger: list[dict[str, Any]],
    waiting: Callable[[str], Collection[str]] = lambda _: (),
) -> list[str]:
    """Keys, commit before emit, and recorded outcomes against their side effects (but
    of the steps ``waiting(saga_id)`` names: waits have no side effect)."""
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
    for (saga_id, step, phase_name), seen in sorted(keys.items()):
        if seen != {idempotency_key(saga_id, step, Phase(phase_name))}:
            out.append(
                f"{saga_id}: {phase_name} of {step} ran with idempotency keys {sorted(seen)}"
            )
    for saga_id in sorted(snap.rows):
        effects = {(attempt_of(line), line["outcome"]) for line in lines.get(saga_id, [])}
        waits = waiting(saga_id)
        for e in snap.events(saga_id):
            if not isinstance(e, OUTCOME_EVENTS) or e.step in waits:
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
    waiting: Callable[[str], Mapping[str, str]] = lambda _: {},
) -> list[str]:
    """Every check above, on every saga of ``snap``; a saga that cannot even be checked
    (an undecodable event) is a violation too. ``waiting(saga_id)``: its waiting steps
    (see ``wait_violations``)."""
    out: list[str] = []
    lines = by_saga(ledger)
    for saga_id in sorted(snap.rows):
        try:
            out += history_violations(snap, saga_id)
            out += compensation_violations(snap, saga_id, compensable(saga_id))
            out += wait_violations(snap, saga_id, waiting(saga_id), lines.get(saga_id, []))
        except Exception as exc:
            out.append(f"{saga_id}: cannot be checked: {type(exc).__name__}: {exc}")
    try:
        out += ledger_violations(snap, ledger, waiting)
        out += undo_violations(snap, ledger, compensable, interleaved=interleaved)
    except Exception as exc:
        out.append(f"the ledger cannot be checked: {type(exc).__name__}: {exc}")
    out += task_violations(snap)
    return out
