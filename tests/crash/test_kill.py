"""Kill real coordinator processes with SIGKILL, then check the store and the ledger.

One campaign (a module fixture) runs ``workload.py`` on one SQLite file again and again:
each run is killed from outside after a random number of new ledger lines (see
``ROUNDS``), or kills itself right after a side effect (the ``step_effect_done`` and
``compensation_done`` crash points of ``saga._crashpoints``), before the coordinator has
recorded the attempt's outcome. After every kill the file is read to
see which side effects of the dead process have no recorded outcome, and that each one's
scheduling was recorded before it happened. A last run without crashes must
finish every saga and exit 0. The tests then check the history of every instance against
the guarantees (the checks of ``tests.chaos.checks``, shared with the chaos runner and
the fencing tests): terminal status, gap-free sequences, no transition twice, replay
equals the row, stable idempotency keys, compensation in reverse completion order, and
every side effect scheduled before it happened.

The seed is random unless ``SAGA_CRASH_SEED`` is set; it is in every failure message.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from saga import Phase
from saga._core import events as ev
from saga._crashpoints import ENV_POINTS, ENV_SEED
from tests.chaos.checks import (
    Snapshot,
    compensation_violations,
    history_violations,
    ledger_violations,
    sqlite_snapshot,
    task_violations,
    undo_violations,
)
from tests.chaos.ledger import count_lines, read_ledger
from tests.chaos.procs import REPO, env, poll, tail
from tests.crash import workload

pytestmark = pytest.mark.crash

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


def _backends() -> list[str]:
    try:
        import trio  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "trio"]


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


def _command(c: Campaign, *, backend: str) -> list[str]:
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
        # The process may kill itself right after a side effect, before its outcome is
        # reported (crash points are read at import, so they go in its environment).
        points = f"step_effect_done:{crash_probability},compensation_done:{crash_probability}"
        return subprocess.Popen(
            _command(c, backend=backend),
            cwd=REPO,
            env=env(**{ENV_POINTS: points, ENV_SEED: str(c.seed * 1_000 + n)}),
            stdout=out,
            stderr=err,
            text=True,
        )


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
        stored = sqlite_snapshot(c.db)
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
                + tail(workdir / f"run-{n}.err")
            )
            break
        if code == 0:  # every saga finished before the kill: nothing more to crash
            c.finished_early = True
            break
        if code != -signal.SIGKILL:  # it failed on its own: the tests say so, with its stderr
            c.failed_runs.append(
                f"run {n} ({backend}) exited {code}:\n{tail(workdir / f'run-{n}.err')}"
            )
            break
        mine = [line for line in read_ledger(c.ledger) if line["pid"] == proc.pid]
        stored = sqlite_snapshot(c.db)
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
def stored(campaign: Campaign) -> Snapshot:
    return sqlite_snapshot(campaign.db)


@pytest.fixture(scope="module")
def ledger(campaign: Campaign) -> list[dict[str, Any]]:
    return read_ledger(campaign.ledger)


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


def test_every_saga_is_there_and_ended_as_planned(campaign: Campaign, stored: Snapshot) -> None:
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


def test_histories_are_gap_free_replay_to_their_row_and_hold_nothing_twice(
    campaign: Campaign, stored: Snapshot
) -> None:
    violations = [v for saga_id in sorted(stored.rows) for v in history_violations(stored, saga_id)]
    assert violations == [], campaign.describe()


def test_compensations_undo_completed_steps_in_reverse(
    campaign: Campaign, stored: Snapshot, ledger: list[dict[str, Any]]
) -> None:
    """In the history, and in the outside world: one run of compensations per step (a
    crash re-runs the same one), newest first."""
    for saga_id, row in sorted(stored.rows.items()):
        if row.status == "compensated":
            undone = [
                e.step for e in stored.events(saga_id) if isinstance(e, ev.CompensationCompleted)
            ]
            assert undone == ["charge", "reserve"], f"{saga_id}; {campaign.describe()}"
    violations = [
        v
        for saga_id in sorted(stored.rows)
        for v in compensation_violations(stored, saga_id, workload.COMPENSATED_STEPS)
    ]
    violations += undo_violations(stored, ledger, lambda _: workload.COMPENSATED_STEPS)
    assert violations == [], campaign.describe()


def test_ledger_and_history_agree(
    campaign: Campaign, stored: Snapshot, ledger: list[dict[str, Any]]
) -> None:
    """Every side effect belongs to a scheduled attempt and carries its step's one
    idempotency key; every recorded outcome has its side effect (with that outcome) in the
    ledger; no work item outlives its saga."""
    assert ledger_violations(stored, ledger) + task_violations(stored) == [], campaign.describe()
    assert stored.tasks == [], campaign.describe()
