"""The chaos runner: kill the workload again and again, then check every guarantee.

    python -m tests.chaos --store sqlite|postgres --kills N --seed S [--json]
        [--sagas-per-run B] [--workdir DIR] [--keep] [--final-deadline SECONDS]

Each round runs ``tests/chaos/workload.py`` on one store (a SQLite file, or a fresh
Postgres schema) with one more batch of sagas to start, and kills it:

* **at a crash point** (``saga._crashpoints``), for half the kills: the round aims at
  one point (they take turns, in a seeded order; one round in four arms every point at
  once) with a probability that makes it likely to fire during the run; the process logs
  the point and SIGKILLs itself. If it has not fired after ``BACKSTOP`` seconds, the
  runner kills it;
* **from outside**, with SIGKILL, for the other half, at a random moment: a random time
  after launch, or after a random number of the process's own side effects.

A run that finishes all its sagas before its kill counts no kill; the next round has new
sagas to start.

After every kill the store is read as the kill left it: every side effect of the dead
process must belong to an attempt whose scheduling was durable (commit before emit: a
later run may schedule the same attempt, so only this moment can tell). Once it has
``N`` kills (or ran out of rounds), the runner runs the workload once more with faults off,
until every saga is terminal, and checks the store and the ledger: every saga terminal,
as its plan says; every acknowledged start there; histories gap-free, no transition
twice, replay equal to the row; compensations of exactly the steps whose effect may have
happened, in reverse order; one idempotency key per (saga, step, phase); every recorded
outcome as the plan says and with its side effect in the ledger; every sleep and signal
wait scheduled once and ended at most once, a sleep never before its ``run_after`` (nor a
later step's side effect), a signal wait with the one signal the workload sends (sent
twice with one message id, it is received once) or with its timeout's result, not before
the deadline (``tests.chaos.checks``).

It prints one JSON object (``--json``) or a summary, and exits 1 if anything did not
hold, printing the seed and the command that replays the run. The seed fixes every
choice of the runner and of the workload's plans and dice; the moments the kills land,
and so what they hit, still depend on timing.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from saga._core import events as ev
from saga._crashpoints import ENV_LOG, ENV_POINTS, ENV_SEED, POINTS
from tests.chaos import workload
from tests.chaos.checks import (
    TERMINAL_STATUSES,
    Snapshot,
    all_violations,
    snapshot,
    sqlite_snapshot,
)
from tests.chaos.ledger import read_ledger, read_lines
from tests.chaos.procs import REPO, connect_postgres, env, poll, tail, with_query

#: Per point: the probability of a round aimed at it. Points are hit from once per run
#: (``recovery_claimed``) to hundreds of times (``group_commit_written``): each gets odds
#: that make it likely to fire in a run, not at its first hit.
AIM: dict[str, float] = {
    "before_commit": 0.03,
    "after_commit": 0.03,
    "group_commit_written": 0.06,
    "after_create": 0.08,
    "step_effect_done": 0.04,
    "compensation_started": 0.3,
    "compensation_done": 0.3,
    "backoff_elapsed": 0.15,
    "timer_fired": 0.3,
    "lease_renewed": 0.6,
    "recovery_claimed": 0.7,
    "recovery_loaded": 0.08,
}
assert AIM.keys() == POINTS.keys(), "every crash point needs its odds here"
#: One crash-point round in this many arms every point at once, at ``SCATTER``.
SCATTER_EVERY = 4
SCATTER = 0.01
#: Seconds a crash-point round waits for its point before killing from outside.
BACKSTOP = 4.0
#: Outside kills: this long after launch, or after this many of the run's side effects.
OUTSIDE_SECONDS = (0.2, 1.0)
OUTSIDE_LINES = (1, 40)
#: Bounds on one run, not synchronisation: runs take about a second.
RUN_DEADLINE = 30.0
FINAL_DEADLINE = 60.0


@dataclass
class Kill:
    round: int
    pid: int
    how: str  # "crashpoint" or "outside"
    aim: str  # what the round armed, or how the outside kill was timed
    point: str | None = None  # the crash point that fired


@dataclass
class Chaos:
    store: str
    kills_wanted: int
    seed: int
    per_run: int
    workdir: Path
    final_deadline: float = FINAL_DEADLINE
    url: str = ""
    schema: str | None = None
    kills: list[Kill] = field(default_factory=list)
    rounds: int = 0
    aimed: int = 0  # crash-point rounds so far
    finished: int = 0  # rounds whose run finished all its sagas before any kill
    unrecorded: int = 0  # side effects without a recorded outcome, at a kill
    violations: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    #: Sleeps completed, signals taken and sent... (see ``wait_counts``).
    waits: dict[str, int] = field(default_factory=dict)
    #: One line per round: what it aimed at, how it ended, how long it ran.
    history: list[str] = field(default_factory=list)

    @property
    def ledger(self) -> Path:
        return self.workdir / "ledger.jsonl"

    @property
    def acked(self) -> Path:
        return self.workdir / "acked.txt"

    @property
    def signalled(self) -> Path:
        return self.workdir / "signalled.txt"

    @property
    def refused(self) -> Path:
        return self.workdir / "signal-refused.txt"

    @property
    def log(self) -> Path:
        return self.workdir / "crashpoints.log"

    def replay_command(self) -> str:
        return (
            f"python -m tests.chaos --store {self.store} --kills {self.kills_wanted} "
            f"--seed {self.seed} --sagas-per-run {self.per_run} --json"
        )

    # -- the store ------------------------------------------------------------------

    def read(self) -> Snapshot:
        """The store as it is now (no process runs on it)."""
        if self.store == "sqlite":
            return sqlite_snapshot(self.workdir / "saga.db")

        async def read_postgres() -> Snapshot:
            from saga_adapters import open_store

            async with open_store(self.url) as store:
                return await snapshot(store)

        return anyio.run(read_postgres)

    # -- runs -----------------------------------------------------------------------

    def launch(self, n: int, batches: int, extra: dict[str, str]) -> subprocess.Popen[bytes]:
        backend = "asyncio"
        if self.store == "sqlite" and _has_trio():
            backend = random.Random(f"{self.seed}/backend/{n}").choice(["asyncio", "trio"])
        command = [
            sys.executable,
            "-m",
            "tests.chaos.workload",
            "--url",
            self.url,
            "--ledger",
            str(self.ledger),
            "--acked",
            str(self.acked),
            "--seed",
            str(self.seed),
            "--batches",
            str(batches),
            "--per-batch",
            str(self.per_run),
            "--backend",
            backend,
        ]
        environ = env(**extra)
        for name in (ENV_POINTS, ENV_SEED, ENV_LOG):
            if name not in extra:
                environ.pop(name, None)
        with open(self.workdir / f"run-{n}.out", "wb") as out:
            return subprocess.Popen(
                command, cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT
            )

    def round(self, n: int, rng: random.Random, aims: list[str]) -> bool:
        """Run ``n``, killed one way or another; False if the campaign cannot go on."""
        fired_before = len(read_lines(self.log))
        extra: dict[str, str] = {}
        by_points = sum(k.how == "crashpoint" for k in self.kills)
        if by_points <= len(self.kills) - by_points:  # at a crash point: half the kills
            turn = self.aimed
            self.aimed += 1
            if turn % SCATTER_EVERY == SCATTER_EVERY - 1:
                aim = f"*:{SCATTER}"
            else:
                point = aims[(turn - turn // SCATTER_EVERY) % len(aims)]
                aim = f"{point}:{AIM[point]}"
            extra = {
                ENV_POINTS: aim,
                ENV_SEED: str(rng.randrange(2**31)),
                ENV_LOG: str(self.log),
            }
            due_after, due_lines = BACKSTOP, None
        elif rng.random() < 0.5:  # from outside, after some time
            due_after, due_lines = rng.uniform(*OUTSIDE_SECONDS), None
            aim = f"outside after {due_after:.2f}s"
        else:  # from outside, after some side effects
            due_after, due_lines = RUN_DEADLINE, rng.randint(*OUTSIDE_LINES)
            aim = f"outside after {due_lines} side effects"
        offset = self.ledger.stat().st_size if self.ledger.exists() else 0
        proc = self.launch(n, n + 1, extra)
        launched = time.monotonic()
        mine = 0

        def due() -> bool:
            nonlocal offset, mine
            if proc.poll() is not None:
                return True
            if due_lines is not None and self.ledger.exists():
                with open(self.ledger, "rb") as f:
                    f.seek(offset)
                    data = f.read()
                whole = data[: data.rfind(b"\n") + 1]
                offset += len(whole)
                mine += whole.count(f'"pid": {proc.pid},'.encode())
                if mine >= due_lines:
                    return True
            return time.monotonic() - launched >= due_after

        try:
            poll(due, deadline=launched + RUN_DEADLINE + 1, every=0.002)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            code = proc.wait()
        fired = read_lines(self.log)[fired_before:]
        took = time.monotonic() - launched
        ended = "finished" if code == 0 else f"fired {fired[-1]}" if fired else f"exit {code}"
        self.history.append(f"run {n} pid {proc.pid} ({aim}): {ended} after {took:.2f}s")
        if code == 0:
            self.finished += 1
            return True
        if code != -signal.SIGKILL:
            self.violations.append(
                f"run {n} exited with {code} by itself:\n{tail(self.workdir / f'run-{n}.out')}"
            )
            return False
        if fired:
            kill = Kill(round=n, pid=proc.pid, how="crashpoint", aim=aim, point=fired[-1])
        else:
            kill = Kill(round=n, pid=proc.pid, how="outside", aim=aim)
        self.kills.append(kill)
        self.after_kill(kill)
        return True

    def after_kill(self, kill: Kill) -> None:
        """What the dead process did, it had recorded as scheduled: commit before emit."""
        snap = self.read()
        for line in read_ledger(self.ledger):
            if line["pid"] != kill.pid:
                continue
            if not snap.scheduled(line):
                self.violations.append(
                    f"{line['saga_id']}: killed {kill.how} ({kill.point or kill.aim}) after a "
                    f"side effect whose scheduling was not durable (emit before commit): {line}"
                )
            elif not snap.outcome_recorded(line):
                self.unrecorded += 1

    def final(self, batches: int) -> None:
        """Faults off: the last run must finish every saga."""
        n = self.rounds
        proc = self.launch(n, batches, {})
        started = time.monotonic()
        try:
            code = proc.wait(timeout=self.final_deadline)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            self.violations.append(
                f"the final run did not finish in {self.final_deadline}s:\n"
                + tail(self.workdir / f"run-{n}.out")
            )
            return
        finally:
            self.history.append(
                f"final run {n} pid {proc.pid}: exit {proc.returncode} "
                f"after {time.monotonic() - started:.2f}s"
            )
        if code != 0:
            self.violations.append(
                f"the final run exited with {code}:\n{tail(self.workdir / f'run-{n}.out')}"
            )

    # -- the checks -----------------------------------------------------------------

    def verify(self, batches: int) -> None:
        snap = self.read()
        ledger = read_ledger(self.ledger)
        ids = workload.saga_ids(batches, self.per_run)
        self.statuses = Counter(row.status for row in snap.rows.values())
        out = self.violations
        for saga_id in read_lines(self.acked):
            if saga_id not in snap.rows:
                out.append(f"{saga_id}: its start was acknowledged, and it is not in the store")
        missing = sorted(set(ids) - set(snap.rows))
        if missing:
            out.append(f"sagas never created (the last run should have): {_some(missing)}")
        unknown = sorted(set(snap.rows) - set(ids))
        if unknown:
            out.append(f"sagas nobody started: {_some(unknown)}")
        active = sorted(
            (row for row in snap.rows.values() if row.status not in TERMINAL_STATUSES),
            key=lambda row: -row.epoch,
        )
        if active:
            out.append(
                f"{len(active)} sagas not terminal, e.g. "
                + ", ".join(
                    f"{r.saga_id} ({r.status} at {r.sequence}, epoch {r.epoch})" for r in active[:5]
                )
            )
        refused = {line.partition(":")[0] for line in read_lines(self.refused)}
        for saga_id in sorted(set(ids) & set(snap.rows)):
            out.extend(plan_violations(snap, saga_id, self.seed))
            out.extend(signal_violations(snap, saga_id, self.seed, refused=saga_id in refused))
        out.extend(
            all_violations(
                snap,
                ledger,
                lambda _: workload.COMPENSATED,
                waiting=lambda saga_id: workload.waits(workload.plan(saga_id, self.seed)),
            )
        )
        self.waits = wait_counts(snap)
        self.waits["signals_sent"] = len(read_lines(self.signalled))
        self.waits["signals_refused"] = len(refused)
        if not (self.waits["sleeps_completed"] and self.waits["signals_taken"]):
            out.append(f"the campaign exercised no sleep or no signal wait: {self.waits}")

    def run(self) -> None:
        rng = random.Random(self.seed)
        aims = sorted(POINTS)
        rng.shuffle(aims)
        # Enough rounds for the kills even if some runs finish before theirs.
        while len(self.kills) < self.kills_wanted and self.rounds < 3 * self.kills_wanted + 5:
            going = self.round(self.rounds, rng, aims)
            self.rounds += 1
            if not going:
                break
        self.final(self.rounds)
        self.verify(self.rounds)


def plan_violations(snap: Snapshot, saga_id: str, seed: int) -> list[str]:
    """The saga did what its plan says: its definition, input, end, and each outcome."""
    row, events = snap.rows[saga_id], snap.events(saga_id)
    p = workload.plan(saga_id, seed)
    out = []
    if (row.saga, row.version) != (workload.definition_name(p), 1):
        out.append(
            f"{saga_id}: is {row.saga} v{row.version}, planned as {workload.definition_name(p)}"
        )
    if json.loads(row.input) != p:
        out.append(f"{saga_id}: its input is not its plan: {row.input}")
    expected = workload.expected_status(p)
    if row.status != expected and row.status in TERMINAL_STATUSES:
        out.append(f"{saga_id}: ended {row.status}, its plan says {expected}")
    failures: Counter[tuple[str, str]] = Counter()
    outcome_events = {
        "StepCompleted": ("action", "ok"),
        "StepFailed": ("action", "error"),
        "CompensationCompleted": ("compensation", "ok"),
        "CompensationFailed": ("compensation", "error"),
    }
    waits = workload.waits(p)
    for e in events:
        kind = outcome_events.get(type(e).__name__)
        if kind is None or e.step in waits:  # waits: see signal_violations, wait_violations
            continue
        phase, outcome = kind
        planned = workload.attempt_outcome(p, phase, e.step, e.attempt)
        if outcome != planned:
            out.append(f"{saga_id}: recorded {e}, but that attempt's outcome is {planned}")
        if outcome == "error":
            failures[(phase, e.step)] += 1
    if row.status not in TERMINAL_STATUSES:
        return out  # said once for all, in verify
    for (phase, step), n in sorted(failures.items()):
        if n != workload.expected_failures(p, phase, step):
            out.append(
                f"{saga_id}: {n} failed attempts of {phase} {step}, the plan says "
                f"{workload.expected_failures(p, phase, step)}"
            )
    return out


def signal_violations(snap: Snapshot, saga_id: str, seed: int, *, refused: bool) -> list[str]:
    """The saga's signal wait ended as its plan allows: with the one signal the workload
    sends (its payload as the result), or, with a timeout, perhaps with the timeout's
    result; and a send was refused only by a saga that had ended without taking it."""
    p = workload.plan(saga_id, seed)
    events = snap.events(saga_id)
    out = []
    got = [e for e in events if isinstance(e, ev.SignalReceived)]
    for e in got:
        if (e.name, e.message_id, e.payload) != (
            workload.SIGNAL,
            workload.signal_id(saga_id),
            workload.signal_payload(saga_id),
        ):
            out.append(f"{saga_id}: received a signal the workload never sent: {e}")
    if p["signal"] is None:
        if got:
            out.append(f"{saga_id}: received {got}, but its plan has no signal")
        return out
    ended = [
        e
        for e in events
        if isinstance(e, ev.StepCompleted | ev.StepFailed) and e.step == workload.SIGNAL_STEP
    ]
    allowed = [workload.signal_payload(saga_id)]
    if p["signal"]["timeout"]:
        allowed.append(workload.TIMEOUT_RESULT)
    results = [outcome.result for outcome in ended if isinstance(outcome, ev.StepCompleted)]
    if len(results) != len(ended) or any(result not in allowed for result in results):
        out.append(f"{saga_id}: its signal wait ended with {ended}, expected one of {allowed}")
    if refused:  # only a saga that ended without taking it refuses it (not a repeat)
        row = snap.rows[saga_id]
        if row.status not in TERMINAL_STATUSES or got:
            out.append(f"{saga_id}: a signal was refused, yet it is {row.status} and got {got}")
        elif row.status == "completed" and results != [workload.TIMEOUT_RESULT]:
            out.append(f"{saga_id}: completed, yet its signal was refused: {ended}")
    return out


def wait_counts(snap: Snapshot) -> dict[str, int]:
    """How many sleeps completed, signals were taken and signal waits timed out."""
    counts: Counter[str] = Counter()
    for saga_id in snap.rows:
        events = snap.events(saga_id)
        for e in events:
            if isinstance(e, ev.StepCompleted) and e.step == workload.SLEEP_STEP:
                counts["sleeps_completed"] += 1
            elif isinstance(e, ev.SignalConsumed):
                counts["signals_taken"] += 1
            elif (
                isinstance(e, ev.StepCompleted)
                and e.step == workload.SIGNAL_STEP
                and e.result == workload.TIMEOUT_RESULT
            ):
                counts["signal_timeouts"] += 1
    return {k: counts[k] for k in ("sleeps_completed", "signals_taken", "signal_timeouts")}


def _some(items: list[str], shown: int = 8) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return f"{len(items)}: {', '.join(items[:shown])}{more}"


def _has_trio() -> bool:
    try:
        import trio  # noqa: F401
    except ImportError:
        return False
    return True


async def _postgres_schema(drop: str | None = None) -> tuple[str, str]:
    """A DSN and a fresh schema name; or drop schema ``drop``."""
    dsn, conn = await connect_postgres()
    try:
        if drop is not None:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{drop}" CASCADE')
            return dsn, drop
        return dsn, f"chaos_{secrets.token_hex(6)}"
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--kills", type=int, default=10, help="kills before the last run")
    parser.add_argument("--seed", type=int, help="default: random (printed)")
    parser.add_argument("--sagas-per-run", type=int, default=20, help="new sagas each round")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the files (and schema)")
    parser.add_argument(
        "--final-deadline",
        type=float,
        default=FINAL_DEADLINE,
        help="seconds the last run (faults off) may take to finish every saga",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="saga-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(
        store=args.store,
        kills_wanted=args.kills,
        seed=seed,
        per_run=args.sagas_per_run,
        workdir=workdir,
        final_deadline=args.final_deadline,
    )
    if args.store == "sqlite":
        chaos.url = f"sqlite:///{workdir / 'saga.db'}"
    else:
        try:
            dsn, chaos.schema = anyio.run(_postgres_schema)
        except ConnectionError as exc:
            print(f"chaos: {exc}", file=sys.stderr)
            return 3
        chaos.url = with_query(dsn, schema=chaos.schema)
    started = time.monotonic()
    try:
        chaos.run()
    except Exception as exc:  # the runner itself failed: still say how to replay it
        chaos.violations.append(f"the runner failed: {type(exc).__name__}: {exc}")
    seconds = time.monotonic() - started
    ok = not chaos.violations
    report: dict[str, Any] = {
        "store": chaos.store,
        "seed": seed,
        "kills": len(chaos.kills),
        "kills_wanted": chaos.kills_wanted,
        "kills_by": dict(Counter(k.how for k in chaos.kills)),
        "crashpoints_fired": dict(sorted(Counter(read_lines(chaos.log)).items())),
        "rounds": chaos.rounds,
        "rounds_finished_before_a_kill": chaos.finished,
        "side_effects_unrecorded_at_a_kill": chaos.unrecorded,
        # Not violations: "not now" from the store, handled as documented (a retried start,
        # an actor restarted with backoff); frequent ones are worth a look.
        "start_retries": len(read_lines(workdir / "start-retries.txt")),
        "store_unavailable_warnings": sum(
            "store unavailable" in line
            for path in sorted(workdir.glob("run-*.out"))
            for line in read_lines(path)
        ),
        "sagas": sum(chaos.statuses.values()),
        "statuses": dict(sorted(chaos.statuses.items())),
        "waits": chaos.waits,
        "violations": chaos.violations,
        "rounds_log": chaos.history,
        "seconds": round(seconds, 2),
        "replay": chaos.replay_command(),
        "workdir": str(workdir) if not ok or args.keep or args.workdir else None,
        "schema": chaos.schema,
    }
    if ok and not args.keep:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        if chaos.schema is not None:
            anyio.run(_postgres_schema, chaos.schema)
    if args.json:
        print(json.dumps(report, indent=None, sort_keys=False))
    else:
        for k, v in report.items():
            if k != "violations":
                print(f"{k}: {v}")
        for v in chaos.violations:
            print(f"VIOLATION: {v}")
    if not ok:
        print(
            f"chaos: {len(chaos.violations)} violation(s) with seed {seed}; replay with:\n"
            f"  {chaos.replay_command()}\nfiles kept in {workdir}"
            + (f", schema {chaos.schema}" if chaos.schema else ""),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
