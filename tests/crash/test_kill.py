"""Kill real coordinator processes with SIGKILL, then check the store and the ledger.

One campaign (a module fixture) runs ``workload.py`` on one SQLite file again and again:
each run is killed from outside after a random number of new ledger lines (see
``ROUNDS``), or kills itself right after a side effect (``--crash-probability``), before
the coordinator has recorded the attempt's outcome. After every kill the file is read to
see which side effects of the dead process have no recorded outcome, and that each one's
scheduling was recorded before it happened. A last run without crashes must
finish every saga and exit 0. The tests then check the history of every instance against
the guarantees: terminal status, gap-free sequences, no transition twice, replay equals
the row, stable idempotency keys, compensation in reverse completion order, and every
side effect scheduled before it happened.

The seed is random unless ``SAGA_CRASH_SEED`` is set; it is in every failure message.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from saga import Phase, idempotency_key
from saga._core import events as ev
from saga._core.codec import decode_event
from saga._runtime.history import replay
from saga._store.port import EventRecord, InstanceRecord
from tests.crash import workload

pytestmark = pytest.mark.crash

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = Path(__file__).with_name("workload.py")

SAGAS = 60
#: The campaign goes on until it has this many kills of each kind (or runs out of rounds).
MIN_EXTERNAL_KILLS = 5
MIN_SELF_KILLS = 1
MIN_COMPENSATION_KILLS = 1
MAX_ROUNDS = 30


@dataclass(frozen=True)
class Round:
    """One kind of round: when the outside kill lands, and the workload's own crash odds."""

    after: tuple[int, int]  # kill after this many new ledger lines (at least 1: mid-run)...
    compensations: bool  # ...counting only compensations' lines
    crash_probability: float  # of a kill right after each side effect, in the workload


#: Rounds take turns. A restart re-runs the attempts in flight before its commits catch up
#: with its side effects, so "early" kills land there and make little progress; "deep" ones
#: land among retries and later steps; "compensation" ones run on (no self-kills) until
#: instances compensate, and kill there.
ROUNDS = (
    Round(after=(1, 30), compensations=False, crash_probability=0.2),
    Round(after=(40, 150), compensations=False, crash_probability=0.0),
    Round(after=(1, 2), compensations=True, crash_probability=0.0),
)
#: Bounds on waiting for one process, not synchronisation: runs take well under a second.
RUN_DEADLINE = 30.0

TERMINAL_EVENTS = (ev.SagaCompleted, ev.SagaCompensated, ev.SagaCancelled, ev.SagaFailed)
#: Per phase: the event recording a success, and the one recording a failure.
OUTCOME_EVENTS: dict[Phase, tuple[type[Any], type[Any]]] = {
    Phase.ACTION: (ev.StepCompleted, ev.StepFailed),
    Phase.COMPENSATION: (ev.CompensationCompleted, ev.CompensationFailed),
}
SCHEDULE_EVENTS: dict[Phase, type[Any]] = {
    Phase.ACTION: ev.StepScheduled,
    Phase.COMPENSATION: ev.CompensationScheduled,
}


def _backends() -> list[str]:
    try:
        import trio  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "trio"]


# -- reading what the processes left behind -------------------------------------------


@dataclass
class Stored:
    """The SQLite file, read directly: rows, decoded histories, outstanding work items."""

    rows: dict[str, InstanceRecord]
    records: dict[str, list[EventRecord]]
    tasks: list[tuple[str, str]]

    def events(self, saga_id: str) -> list[Any]:
        return [decode_event(r.type, r.schema, r.data) for r in self.records.get(saga_id, [])]

    def scheduled(self, line: dict[str, Any]) -> bool:
        """Whether the history holds the scheduling of the attempt that wrote ``line``."""
        kind = SCHEDULE_EVENTS[Phase(line["phase"])]
        return any(
            isinstance(e, kind) and (e.step, e.attempt) == (line["step"], line["attempt"])
            for e in self.events(line["saga_id"])
        )

    def outcomes(self, phase: Phase | None = None) -> int:
        """How many attempt outcomes (of ``phase``, or of both) are recorded in all."""
        kinds: tuple[type[Any], ...] = (
            OUTCOME_EVENTS[phase] if phase else sum(OUTCOME_EVENTS.values(), start=())
        )
        return sum(isinstance(e, kinds) for saga_id in self.records for e in self.events(saga_id))

    def outcome_recorded(self, line: dict[str, Any]) -> bool:
        """Whether the history holds the outcome of the attempt that wrote ``line``."""
        kinds = OUTCOME_EVENTS[Phase(line["phase"])]
        return any(
            isinstance(e, kinds) and (e.step, e.attempt) == (line["step"], line["attempt"])
            for e in self.events(line["saga_id"])
        )


def read_store(db: Path) -> Stored:
    if not db.exists():
        return Stored(rows={}, records={}, tasks=[])
    # Read-only: no checkpoint on close, so the next run finds the file as the kill left it.
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
            )
            for r in conn.execute(
                "SELECT saga_id, saga, version, status, sequence, input, created_at, updated_at "
                "FROM saga_instances"
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
        tasks = list(conn.execute("SELECT saga_id, task_id FROM saga_tasks ORDER BY task_id"))
    finally:
        conn.close()
    return Stored(rows=rows, records=dict(records), tasks=tasks)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


COMPENSATION_MARK = b'"phase": "compensation"'


def count_lines(path: Path, *, compensations: bool = False) -> int:
    """Ledger lines so far (only compensations' if asked); cheap enough to poll."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    return data.count(COMPENSATION_MARK if compensations else b"\n")


def poll(condition: Callable[[], bool], *, deadline: float) -> bool:
    """Check ``condition`` every millisecond until it holds or ``deadline`` passes."""
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


# -- the campaign -------------------------------------------------------------------


@dataclass
class Kill:
    pid: int
    how: str  # "outside": SIGKILL from the test; "self": the workload's own, after a side effect
    backend: str
    lines: int  # ledger lines the process wrote
    unrecorded: list[dict[str, Any]]  # its side effects whose outcome the store does not have
    unscheduled: list[dict[str, Any]]  # its side effects whose scheduling it does not have


@dataclass
class Campaign:
    seed: int
    db: Path
    ledger: Path
    workdir: Path
    kills: list[Kill] = field(default_factory=list)
    finished_early: bool = False
    failed_runs: list[str] = field(default_factory=list)
    final: subprocess.CompletedProcess[str] | None = None
    seconds: float = 0.0

    @property
    def compensation_kills(self) -> int:
        """Kills that left a compensation's side effect without a recorded outcome."""
        return sum(
            any(line["phase"] == Phase.COMPENSATION.value for line in k.unrecorded)
            for k in self.kills
        )

    def describe(self) -> str:
        kinds = Counter(k.how for k in self.kills)
        unrecorded = sum(len(k.unrecorded) for k in self.kills)
        return (
            f"seed={self.seed} (SAGA_CRASH_SEED to repeat), kills={dict(kinds)}, "
            f"side effects without a recorded outcome at a kill={unrecorded} "
            f"(kills during compensation: {self.compensation_kills}), "
            f"workdir={self.workdir}"
        )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "adapters")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _command(c: Campaign, *, crash_probability: float, backend: str) -> list[str]:
    return [
        sys.executable,
        str(WORKLOAD),
        "--db",
        str(c.db),
        "--ledger",
        str(c.ledger),
        "--sagas",
        str(SAGAS),
        "--seed",
        str(c.seed),
        "--crash-probability",
        str(crash_probability),
        "--backend",
        backend,
    ]


def _launch(
    c: Campaign, n: int, *, crash_probability: float, backend: str
) -> subprocess.Popen[str]:
    with (
        open(c.workdir / f"run-{n}.out", "w") as out,
        open(c.workdir / f"run-{n}.err", "w") as err,
    ):
        return subprocess.Popen(
            _command(c, crash_probability=crash_probability, backend=backend),
            cwd=REPO,
            env=_env(),
            stdout=out,
            stderr=err,
            text=True,
        )


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""


def run_campaign(workdir: Path, seed: int) -> Campaign:
    c = Campaign(
        seed=seed, db=workdir / "saga.db", ledger=workdir / "ledger.jsonl", workdir=workdir
    )
    rng = random.Random(seed)
    ids = workload.saga_ids(SAGAS)
    started = time.monotonic()
    for n in range(MAX_ROUNDS):
        outside = sum(k.how == "outside" for k in c.kills)
        itself = sum(k.how == "self" for k in c.kills)
        if (
            outside >= MIN_EXTERNAL_KILLS
            and itself >= MIN_SELF_KILLS
            and c.compensation_kills >= MIN_COMPENSATION_KILLS
        ):
            break
        backend = rng.choice(_backends())
        kind = ROUNDS[n % len(ROUNDS)]
        # Never more than half the side effects still to come, so that no crash round runs
        # the campaign out of work (each recorded outcome takes one line, and re-runs only
        # add lines, so the kill lands before half the rest is done).
        stored = read_store(c.db)
        left = {
            phase: sum(workload.expected_side_effects(i, seed)[phase.value] for i in ids)
            - stored.outcomes(phase)
            for phase in Phase
        }
        if kind.compensations and left[Phase.COMPENSATION] < 2:
            kind = ROUNDS[0]
        room = left[Phase.COMPENSATION] if kind.compensations else sum(left.values())
        lines = min(rng.randint(*kind.after), max(1, room // 2))
        target = count_lines(c.ledger, compensations=kind.compensations) + lines

        def due(proc: subprocess.Popen[str], target: int, compensations: bool) -> bool:
            return (
                proc.poll() is not None
                or count_lines(c.ledger, compensations=compensations) >= target
            )

        proc = _launch(c, n, crash_probability=kind.crash_probability, backend=backend)
        try:
            reached = poll(
                lambda: due(proc, target, kind.compensations),  # noqa: B023 - called in this round
                deadline=time.monotonic() + RUN_DEADLINE,
            )
            how = "self" if proc.poll() is not None else "outside"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            code = proc.wait()
        if not reached:  # neither killed, nor finished, nor its kill point in 30 s: stuck
            c.failed_runs.append(
                f"run {n} ({backend}) made no progress to its kill point in {RUN_DEADLINE}s:\n"
                + _tail(workdir / f"run-{n}.err")
            )
            break
        if code == 0:  # every saga finished before the kill: nothing more to crash
            c.finished_early = True
            break
        if code != -signal.SIGKILL:  # it failed on its own: the tests say so, with its stderr
            c.failed_runs.append(
                f"run {n} ({backend}) exited {code}:\n{_tail(workdir / f'run-{n}.err')}"
            )
            break
        mine = [line for line in read_ledger(c.ledger) if line["pid"] == proc.pid]
        stored = read_store(c.db)
        c.kills.append(
            Kill(
                pid=proc.pid,
                how=how,
                backend=backend,
                lines=len(mine),
                unrecorded=[line for line in mine if not stored.outcome_recorded(line)],
                unscheduled=[line for line in mine if not stored.scheduled(line)],
            )
        )

    # The last run: no crashes; it must finish every saga and say so.
    proc = _launch(c, MAX_ROUNDS, crash_probability=0.0, backend="asyncio")
    try:
        code = proc.wait(timeout=RUN_DEADLINE)
    except subprocess.TimeoutExpired:  # a saga that never ends: the final test says so
        proc.kill()
        code = proc.wait()
    c.final = subprocess.CompletedProcess(
        proc.args,
        code,
        (workdir / f"run-{MAX_ROUNDS}.out").read_text(),
        (workdir / f"run-{MAX_ROUNDS}.err").read_text(),
    )
    c.seconds = time.monotonic() - started
    return c


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    seed = int(os.environ.get("SAGA_CRASH_SEED") or random.SystemRandom().randrange(2**31))
    return run_campaign(tmp_path_factory.mktemp("crash"), seed)


@pytest.fixture(scope="module")
def stored(campaign: Campaign) -> Stored:
    return read_store(campaign.db)


@pytest.fixture(scope="module")
def ledger(campaign: Campaign) -> list[dict[str, Any]]:
    return read_ledger(campaign.ledger)


def _by_saga(lines: list[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        grouped[line["saga_id"]].append(line)
    yield from sorted(grouped.items())


# -- the tests ----------------------------------------------------------------------


def test_kills_landed_mid_run_and_after_side_effects(
    campaign: Campaign, ledger: list[dict[str, Any]]
) -> None:
    kinds = Counter(k.how for k in campaign.kills)
    assert not campaign.failed_runs, f"{campaign.describe()}\n" + "\n".join(campaign.failed_runs)
    assert not campaign.finished_early, (
        f"the sagas finished before the kills; {campaign.describe()}"
    )
    assert kinds["outside"] >= MIN_EXTERNAL_KILLS, campaign.describe()
    assert kinds["self"] >= MIN_SELF_KILLS, campaign.describe()
    # A kill after a side effect and before its outcome was recorded, seen in the store...
    assert any(k.unrecorded for k in campaign.kills), campaign.describe()
    assert campaign.compensation_kills >= MIN_COMPENSATION_KILLS, campaign.describe()
    # ...and seen in the ledger: the same step done again by another process.
    pids: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    for line in ledger:
        pids[(line["saga_id"], line["step"], line["phase"])].add(line["pid"])
    assert any(len(p) > 1 for p in pids.values()), campaign.describe()


def test_no_side_effect_ran_before_its_schedule_was_durable(campaign: Campaign) -> None:
    """Commit before emit, checked at each kill: what the dead process did, it had recorded."""
    for kill in campaign.kills:
        assert kill.unscheduled == [], f"pid {kill.pid}; {campaign.describe()}"


def test_side_effects_lost_at_a_kill_are_done_again(
    campaign: Campaign, ledger: list[dict[str, Any]]
) -> None:
    """At least once: an attempt whose outcome died with its process is re-run, same attempt."""
    for kill in campaign.kills:
        for lost in kill.unrecorded:
            again = [
                line
                for line in ledger
                if line["pid"] != kill.pid
                and all(line[k] == lost[k] for k in ("saga_id", "step", "phase", "attempt"))
            ]
            assert again, f"{lost} was never re-run; {campaign.describe()}"


def test_last_run_without_crashes_finishes(campaign: Campaign) -> None:
    assert campaign.final is not None
    assert campaign.final.returncode == 0, (
        f"{campaign.describe()}\n{campaign.final.stdout}\n{campaign.final.stderr[-3000:]}"
    )
    assert "DONE" in campaign.final.stdout, campaign.describe()


def test_every_saga_is_there_and_ended_as_planned(campaign: Campaign, stored: Stored) -> None:
    ids = workload.saga_ids(SAGAS)
    assert sorted(stored.rows) == ids, campaign.describe()
    for saga_id in ids:
        row, plan = stored.rows[saga_id], workload.plan(saga_id, campaign.seed)
        where = f"{saga_id}; {campaign.describe()}"
        assert (row.saga, row.version) == (workload.SAGA, 1), where
        assert json.loads(row.input) == plan, where
        assert row.status == workload.expected_status(saga_id, campaign.seed), where
        events = stored.events(saga_id)
        failed = Counter(e.step for e in events if isinstance(e, ev.StepFailed))
        assert failed["charge"] == plan["charge_failures"], where
        assert failed["ship"] == (2 if plan["ship_fails"] else 0), where


def test_histories_are_gap_free_and_replay_to_their_row(campaign: Campaign, stored: Stored) -> None:
    for saga_id, row in sorted(stored.rows.items()):
        where = f"{saga_id}; {campaign.describe()}"
        records = stored.records[saga_id]
        assert [r.sequence for r in records] == list(range(1, len(records) + 1)), where
        state = replay(saga_id, records, row)
        assert (state.status.value, state.sequence) == (row.status, row.sequence), where
        assert state.in_flight == (), where
        events = stored.events(saga_id)
        terminal = [i for i, e in enumerate(events) if isinstance(e, TERMINAL_EVENTS)]
        assert terminal == [len(events) - 1], f"terminal events at {terminal}: {where}"


def test_no_transition_is_recorded_twice(campaign: Campaign, stored: Stored) -> None:
    for saga_id in sorted(stored.rows):
        events = stored.events(saga_id)
        where = f"{saga_id}; {campaign.describe()}"
        # Per attempt: scheduled once, failed at most once. Per step: completed at most once.
        per_attempt: tuple[type[Any], ...] = (
            ev.StepScheduled,
            ev.CompensationScheduled,
            ev.StepFailed,
            ev.CompensationFailed,
        )
        for kind in per_attempt:
            keys = Counter((e.step, e.attempt) for e in events if isinstance(e, kind))
            assert max(keys.values(), default=1) == 1, f"{kind.__name__} twice: {keys}: {where}"
        for kind in (ev.StepCompleted, ev.CompensationCompleted):
            steps = Counter(e.step for e in events if isinstance(e, kind))
            assert max(steps.values(), default=1) == 1, f"{kind.__name__} twice: {steps}: {where}"
        started = sum(isinstance(e, ev.SagaStarted) for e in events)
        assert started == 1 and isinstance(events[0], ev.SagaStarted), where


def test_idempotency_keys_are_stable(campaign: Campaign, ledger: list[dict[str, Any]]) -> None:
    keys: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for line in ledger:
        keys[(line["saga_id"], line["step"], line["phase"])].add(line["idempotency_key"])
    for (saga_id, step, phase), seen in sorted(keys.items()):
        assert seen == {idempotency_key(saga_id, step, Phase(phase))}, (
            f"{saga_id} {step} {phase}: {seen}; {campaign.describe()}"
        )


def test_compensations_undo_completed_steps_in_reverse(
    campaign: Campaign, stored: Stored, ledger: list[dict[str, Any]]
) -> None:
    lines = dict(_by_saga(ledger))
    for saga_id, row in sorted(stored.rows.items()):
        where = f"{saga_id}; {campaign.describe()}"
        events = stored.events(saga_id)
        completed = [e.step for e in events if isinstance(e, ev.StepCompleted)]
        expected = [s for s in reversed(completed) if s in workload.COMPENSATED_STEPS]
        if row.status == "compensated":
            assert expected == ["charge", "reserve"], where
        else:
            expected = []
        undone = [e.step for e in events if isinstance(e, ev.CompensationCompleted)]
        assert undone == expected, where
        # In the outside world: one run of compensations per step (a crash re-runs the
        # same one), in the same order.
        runs: list[str] = []
        for line in lines.get(saga_id, []):
            if line["phase"] == Phase.COMPENSATION.value and runs[-1:] != [line["step"]]:
                runs.append(line["step"])
        assert runs == expected, f"ledger compensations {runs}, expected {expected}: {where}"


def test_ledger_and_history_agree(
    campaign: Campaign, stored: Stored, ledger: list[dict[str, Any]]
) -> None:
    """Every side effect belongs to a scheduled attempt; every recorded outcome has its side
    effect (with that outcome) in the ledger; no work item outlives its saga."""
    for saga_id, lines in _by_saga(ledger):
        events = stored.events(saga_id)
        where = f"{saga_id}; {campaign.describe()}"
        for line in lines:
            phase = Phase(line["phase"])
            scheduled = [
                e
                for e in events
                if isinstance(e, SCHEDULE_EVENTS[phase])
                and (e.step, e.attempt) == (line["step"], line["attempt"])
            ]
            assert scheduled, f"unscheduled side effect {line}: {where}"
        for e in events:
            for phase, (done, failed) in OUTCOME_EVENTS.items():
                if isinstance(e, done | failed):
                    outcome = "ok" if isinstance(e, done) else "error"
                    assert any(
                        (line["step"], line["phase"], line["attempt"], line["outcome"])
                        == (e.step, phase.value, e.attempt, outcome)
                        for line in lines
                    ), f"{e} has no side effect in the ledger: {where}"
    assert stored.tasks == [], campaign.describe()
