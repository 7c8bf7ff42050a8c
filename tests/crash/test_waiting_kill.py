"""Kill a real coordinator process with SIGKILL while its sagas sleep and wait for signals.

One campaign per store (a SQLite file, a fresh Postgres schema) runs
``waiting_worker.py`` four times on it (see that module for the sagas):

1. until every saga waits (for its first sleep, signal or timeout) and every actor has
   passivated (the instances are held by nobody; two signals came meanwhile: one before
   its wait is reached, one taken at once), then SIGKILL from outside. While it is dead
   the test sends more signals: every ``approve`` twice with one message id, a repeat of
   a ``pay`` signal taken already, and ``hold``;
2. with the ``timer_fired`` crash point armed: the process kills itself when its first
   timer runs out, before reporting it. ``pay`` is sent again, with a new id, meanwhile;
3. until one saga sleeps its second sleep, then SIGKILL from outside;
4. without faults: every saga must end, and the process exit 0.

Runs 1 and 3 passivate idle actors (the instances sleep in the store and are claimed back
when due: the store's ``wake_at`` decides when a sleep ends); runs 2 and 4 keep them in
memory (the actor's own timer decides).

Signals are sent by a coordinator of the test process that has no definitions, so it can
only send: it never drives an instance. Then the histories are checked: the chaos checks
(gap-free, replay equals the row, nothing twice); every sleep completed exactly once and
not before its ``run_after``, by the history (``recorded_at``, on the clock the timer runs
on) and by the outside world (the next step's side effect); every signal sent while the
process was dead taken after the restart; a signal sent twice with one id taken once;
a signal sent before its wait taken by that wait; every timed wait ended by its timeout,
not before it; every saga in its expected terminal status.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from saga import Coordinator
from saga._core import events as ev
from saga._crashpoints import ENV_LOG, ENV_POINTS
from saga._store.port import ACTIVE_STATUSES
from saga.errors import CommandRejected
from saga_adapters import open_store
from tests.chaos.checks import (
    Snapshot,
    by_saga,
    compensation_violations,
    history_violations,
    ledger_violations,
    snapshot,
    task_violations,
    undo_violations,
    wait_violations,
)
from tests.chaos.ledger import read_ledger, read_lines
from tests.chaos.procs import REPO, env, tail
from tests.crash import waiting_worker as worker
from tests.crash.stores import STORES, on_store

pytestmark = pytest.mark.crash

WORKER = Path(__file__).with_name("waiting_worker.py")
#: Bounds on waiting for a process to get somewhere, not synchronisation: each run of the
#: worker takes a second or two.
WITHIN = 30.0
POLL = 0.02

#: The first wait of each definition: where run 1 is killed.
FIRST_WAIT = {
    "napper": "nap1",
    "approval": "approve",
    "twice": "second",  # ``first`` takes the ``pay`` sent during run 1
    "early": "hold",
    "deadline": "wait",
    "patient": "wait",
}


@dataclass
class Run:
    n: int
    pid: int
    backend: str
    launched: float  # time.time()
    ended: float = 0.0
    code: int | None = None
    how: str = ""  # "outside", "timer_fired" or "finished"
    #: At its kill: the active instances, and how many of them nobody held (passivated).
    active_at_kill: int = 0
    unheld_at_kill: int = 0


@dataclass
class Sent:
    saga_id: str
    name: str
    message_id: str
    payload: Any
    at: float
    worker_alive: bool


@dataclass
class Campaign:
    kind: str
    url: str
    workdir: Path
    runs: list[Run] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    snap: Snapshot | None = None
    #: After the end: a repeat of a taken signal (None: no error), and a new one.
    repeat_after_end: str | None = "not tried"
    new_after_end: str | None = "not tried"
    proc: subprocess.Popen[bytes] | None = None
    store: Any = None

    @property
    def ledger(self) -> Path:
        return self.workdir / "ledger.jsonl"

    @property
    def crash_log(self) -> Path:
        return self.workdir / "crashpoints.log"

    def describe(self) -> str:
        runs = ", ".join(f"run {r.n} ({r.backend}): {r.how or r.code}" for r in self.runs)
        last = tail(self.workdir / f"run-{self.runs[-1].n}.out") if self.runs else ""
        return f"{self.kind} at {self.workdir}: {runs}\n{last}"

    async def rows(self) -> str:
        """Where every saga is, for a failure message."""
        snap = await snapshot(self.store)
        return "\n".join(
            f"{i}: {r.status} at {r.sequence}, owner {r.owner}, wake_at {r.wake_at}, "
            f"last {snap.events(i)[-1]}"
            for i, r in sorted(snap.rows.items())
        )

    # -- processes -------------------------------------------------------------------

    def launch(self, n: int, backend: str, *, passivate: bool = True, **extra: str) -> Run:
        command = [
            sys.executable,
            str(WORKER),
            "--url",
            self.url,
            "--ledger",
            str(self.ledger),
            "--backend",
            backend,
            "--passivate-after",
            str(worker.PASSIVATE_AFTER) if passivate else "never",
        ]
        environ = env(**extra)
        if ENV_POINTS not in extra:
            environ.pop(ENV_POINTS, None)
        with open(self.workdir / f"run-{n}.out", "wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT
            )
        run = Run(n=n, pid=self.proc.pid, backend=backend, launched=time.time())
        self.runs.append(run)
        return run

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        """Poll ``check`` (it reads the store) until it holds; the worker must live on."""
        with anyio.move_on_after(WITHIN):
            while True:
                if await check():
                    return
                assert self.proc is not None
                if self.proc.poll() is not None:
                    pytest.fail(
                        f"the worker exited ({self.proc.returncode}) before {what}\n"
                        f"{self.describe()}\n{await self.rows()}"
                    )
                await anyio.sleep(POLL)
        pytest.fail(f"not within {WITHIN}s: {what}\n{self.describe()}\n{await self.rows()}")

    async def ended(self, run: Run) -> int:
        """Wait for the worker to exit by itself (it finished, or hit its crash point)."""
        assert self.proc is not None
        with anyio.move_on_after(WITHIN):
            while self.proc.poll() is None:  # noqa: ASYNC110 - polling another process
                await anyio.sleep(POLL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(
                f"run {run.n} did not end within {WITHIN}s\n{self.describe()}\n{await self.rows()}"
            )
        run.code, run.ended = self.proc.returncode, time.time()
        return run.code

    async def kill(self, run: Run, store: Any) -> None:
        """SIGKILL from outside; note what the store holds as the kill left it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        run.code, run.ended, run.how = self.proc.wait(), time.time(), "outside"
        rows = [r for r in await store.instances() if r.status in ACTIVE_STATUSES]
        run.active_at_kill = len(rows)
        run.unheld_at_kill = sum(r.owner is None for r in rows)

    async def signal(
        self, sender: Coordinator, saga_id: str, name: str, message_id: str, payload: Any
    ) -> None:
        alive = self.proc is not None and self.proc.poll() is None
        at = time.time()
        await sender.signal(saga_id, name, payload, message_id=message_id)
        self.sent.append(Sent(saga_id, name, message_id, payload, at, alive))

    def kill_all(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def waiting(snap: Snapshot, saga_id: str, step: str) -> bool:
    """``step`` (a wait) is scheduled and has no outcome yet."""
    events = snap.events(saga_id)
    return any(isinstance(e, ev.StepScheduled) and e.step == step for e in events) and not any(
        isinstance(e, ev.StepCompleted | ev.StepFailed) and e.step == step for e in events
    )


def received(snap: Snapshot, saga_id: str, message_id: str) -> bool:
    return any(
        isinstance(e, ev.SignalReceived) and e.message_id == message_id
        for e in snap.events(saga_id)
    )


async def campaign(kind: str, url: str, workdir: Path) -> Campaign:
    c = Campaign(kind=kind, url=url, workdir=workdir)
    sqlite = kind == "sqlite"
    async with (
        open_store(url) as store,
        # No definitions: it can send signals, never drive an instance.
        Coordinator(store, [], recover=False, node="test-sender") as sender,
    ):
        c.store = store
        try:
            # 1. Until everything waits in the store, held by nobody; then kill.
            run = c.launch(1, "asyncio")

            async def rows_exist() -> bool:
                return {r.saga_id for r in await store.instances()} == set(worker.SAGAS)

            await c.until(rows_exist, "every saga started")
            # Before its wait is reached (``hold`` comes first), and one taken at once.
            await c.signal(sender, "early-0", "go", "go-early-0", {"go": "early"})
            await c.signal(sender, "twice-0", "pay", "pay-1", {"n": 1})

            async def all_wait_unheld() -> bool:
                snap = await snapshot(store)
                return (
                    all(
                        waiting(snap, i, FIRST_WAIT[d]) and snap.rows[i].owner is None
                        for i, d in worker.SAGAS.items()
                    )
                    and received(snap, "early-0", "go-early-0")
                    and not waiting(snap, "twice-0", "first")
                )

            await c.until(all_wait_unheld, "every saga waits, passivated")
            await c.kill(run, store)

            # While it is dead: every approval twice with one id; a repeat; the hold.
            for i in range(3):
                for _ in range(2):
                    await c.signal(
                        sender, f"approval-{i}", "approve", f"ok-{i}", {"approved_by": f"a{i}"}
                    )
            await c.signal(sender, "twice-0", "pay", "pay-1", {"n": 1})
            await c.signal(sender, "early-0", "hold", "hold-early-0", None)

            # 2. The first timer that runs out kills the process, before it is reported.
            run = c.launch(
                2,
                "trio" if sqlite else "asyncio",
                passivate=False,
                **{ENV_POINTS: "timer_fired:1", ENV_LOG: str(c.crash_log)},
            )
            code = await c.ended(run)
            run.how = (
                "timer_fired" if read_lines(c.crash_log) == ["timer_fired"] else f"exit {code}"
            )
            await c.signal(sender, "twice-0", "pay", "pay-2", {"n": 2})

            # 3. Until a napper sleeps its second sleep; then kill.
            run = c.launch(3, "asyncio")

            async def second_nap() -> bool:
                snap = await snapshot(store)
                return any(waiting(snap, f"napper-{i}", "nap2") for i in range(4))

            await c.until(second_nap, "a napper sleeps its second sleep")
            await c.kill(run, store)

            # 4. No faults: everything ends.
            # Its actors stay in memory: timers fire there, not through the store.
            run = c.launch(4, "trio" if sqlite else "asyncio", passivate=False)
            code = await c.ended(run)
            run.how = "finished" if code == 0 else f"exit {code}"

            # After the end: a repeat is no error; a new signal is refused.
            try:
                await sender.signal(
                    "approval-0", "approve", {"approved_by": "a0"}, message_id="ok-0"
                )
                c.repeat_after_end = None
            except Exception as exc:
                c.repeat_after_end = repr(exc)
            try:
                await sender.signal("approval-0", "approve", message_id="late")
                c.new_after_end = None
            except CommandRejected as exc:
                c.new_after_end = type(exc).__name__
            c.snap = await snapshot(store)
        finally:
            c.kill_all()
    return c


@pytest.fixture(scope="module", params=STORES)
def done(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    workdir = tmp_path_factory.mktemp(f"waiting-{request.param}")
    return on_store(request.param, workdir, campaign, prefix="waiting")


@pytest.fixture(scope="module")
def snap(done: Campaign) -> Snapshot:
    assert done.snap is not None, done.describe()
    return done.snap


@pytest.fixture(scope="module")
def ledger(done: Campaign) -> list[dict[str, Any]]:
    return read_ledger(done.ledger)


def scheduled(events: list[Any], step: str) -> list[ev.StepScheduled]:
    return [e for e in events if isinstance(e, ev.StepScheduled) and e.step == step]


def outcomes(snap: Snapshot, saga_id: str, step: str) -> list[tuple[float, Any]]:
    """The outcomes of ``step`` recorded, with when (``recorded_at``)."""
    return [
        (record.recorded_at, e)
        for record, e in zip(snap.records[saga_id], snap.events(saga_id), strict=True)
        if isinstance(e, ev.StepCompleted | ev.StepFailed) and e.step == step
    ]


def lines(
    ledger: list[dict[str, Any]], saga_id: str, step: str, phase: str = "action"
) -> list[dict[str, Any]]:
    return [
        line
        for line in ledger
        if (line["saga_id"], line["step"], line["phase"]) == (saga_id, step, phase)
    ]


# -- the tests ----------------------------------------------------------------------


def test_the_kills_landed_while_sagas_slept_and_waited(done: Campaign) -> None:
    where = done.describe()
    first, timer, deep, last = done.runs
    # Killed from outside with every saga waiting, every one of them held by nobody.
    assert (first.how, first.code) == ("outside", -signal.SIGKILL), where
    assert first.active_at_kill == first.unheld_at_kill == len(worker.SAGAS), where
    # Killed by itself when its first timer ran out, before reporting it.
    assert (timer.how, timer.code) == ("timer_fired", -signal.SIGKILL), where
    # Killed from outside while a napper slept again.
    assert (deep.how, deep.code) == ("outside", -signal.SIGKILL), where
    assert deep.active_at_kill >= 1, where
    assert (last.how, last.code) == ("finished", 0), where
    assert "DONE" in (done.workdir / f"run-{last.n}.out").read_text(), where


def test_every_saga_ended_as_expected(done: Campaign, snap: Snapshot) -> None:
    statuses = {i: snap.rows[i].status for i in worker.SAGAS}
    assert statuses == {i: worker.EXPECTED_STATUS[d] for i, d in worker.SAGAS.items()}, (
        done.describe()
    )


def test_histories_ledger_and_waits_hold_the_chaos_checks(
    done: Campaign, snap: Snapshot, ledger: list[dict[str, Any]]
) -> None:
    """Gap-free, replay equals the row, nothing twice; compensations reversed, in the
    history and in the ledger; one idempotency key per step, commit before emit; every
    wait ended once, no sleep early (``tests.chaos.checks``)."""
    waits = {
        saga_id: {
            **dict.fromkeys(worker.SLEEPS.get(name, ()), "sleep"),
            **dict.fromkeys(worker.WAITS.get(name, {}), "signal"),
        }
        for saga_id, name in worker.SAGAS.items()
    }
    lines = by_saga(ledger)
    violations = [
        v
        for saga_id in sorted(snap.rows)
        for v in history_violations(snap, saga_id)
        + compensation_violations(snap, saga_id, worker.COMPENSATED)
        + wait_violations(snap, saga_id, waits[saga_id], lines.get(saga_id, []))
    ]
    violations += ledger_violations(snap, ledger, lambda saga_id: waits[saga_id])
    violations += undo_violations(snap, ledger, lambda _: worker.COMPENSATED)
    assert violations == [], done.describe()


def test_no_work_item_outlives_its_saga(done: Campaign, snap: Snapshot) -> None:
    """Also of a wait that took, as it was scheduled, a signal that came before it: its
    work item is created and settled in one transition."""
    assert task_violations(snap) == [], done.describe()


def test_every_sleep_completed_once_and_not_before_its_time(
    done: Campaign, snap: Snapshot, ledger: list[dict[str, Any]]
) -> None:
    after = {"nap1": "note", "nap2": "finish", "nap": "ship"}
    checked = 0
    for saga_id, name in worker.SAGAS.items():
        events = snap.events(saga_id)
        for step in worker.SLEEPS.get(name, ()):
            where = f"{saga_id} {step}: {events}"
            (planned,) = scheduled(events, step)
            assert planned.attempt == 1 and planned.run_after is not None, where
            ((at, outcome),) = outcomes(snap, saga_id, step)
            assert isinstance(outcome, ev.StepCompleted), where
            assert at >= planned.run_after, f"recorded {planned.run_after - at:.6f}s early; {where}"
            # In the outside world: the next step ran once the sleep was over, not before.
            following = lines(ledger, saga_id, after[step])
            assert following, where
            assert min(line["at"] for line in following) >= planned.run_after, where
            checked += 1
    assert checked == 9  # two sleeps of each of four nappers, one of early-0


def test_timed_waits_ended_by_their_timeout(snap: Snapshot, ledger: list[dict[str, Any]]) -> None:
    for saga_id in ("deadline-0", "patient-0"):
        events = snap.events(saga_id)
        (planned,) = scheduled(events, "wait")
        ((at, outcome),) = outcomes(snap, saga_id, "wait")
        assert planned.run_after is not None and at >= planned.run_after, events
        assert not any(isinstance(e, ev.SignalReceived) for e in events), events
        if saga_id == "deadline-0":
            assert isinstance(outcome, ev.StepFailed), events
            assert outcome.error.type == "saga.SignalTimeout" and not outcome.will_retry
            assert not lines(ledger, saga_id, "ship"), "a step after a failed wait ran"
            assert lines(ledger, saga_id, "reserve", "compensation"), "reserve was not undone"
        else:
            assert isinstance(outcome, ev.StepCompleted), events
            assert outcome.result == worker.TIMEOUT_RESULT
            assert {json.dumps(line["got"]) for line in lines(ledger, saga_id, "ship")} == {
                json.dumps({"wait": worker.TIMEOUT_RESULT})
            }


def test_signals_sent_while_the_process_was_dead_are_taken_after_the_restart(
    done: Campaign, snap: Snapshot
) -> None:
    dead = [s for s in done.sent if not s.worker_alive]
    assert {s.message_id for s in dead} >= {"ok-0", "ok-1", "ok-2", "hold-early-0", "pay-2"}
    for sent in dead:
        records = [
            (record, e)
            for record, e in zip(snap.records[sent.saga_id], snap.events(sent.saga_id), strict=True)
            if isinstance(e, ev.SignalReceived) and e.message_id == sent.message_id
        ]
        assert len(records) == 1, (sent, snap.events(sent.saga_id))
        record, event = records[0]
        if sent.message_id == "pay-1":
            continue  # the repeat of one taken during run 1: checked below
        # Taken by a process launched after the send.
        later = [r for r in done.runs if r.launched > sent.at]
        assert later and record.recorded_at >= later[0].launched, (sent, record)
        assert (event.name, event.payload) == (sent.name, sent.payload)


def test_every_signal_is_taken_once_by_the_wait_it_was_for(
    done: Campaign, snap: Snapshot, ledger: list[dict[str, Any]]
) -> None:
    sent = Counter((s.saga_id, s.message_id) for s in done.sent)
    # Some were sent twice with one message id.
    assert sent[("approval-0", "ok-0")] == 2 and sent[("twice-0", "pay-1")] == 2
    for saga_id, name in worker.SAGAS.items():
        events = snap.events(saga_id)
        got = [e.message_id for e in events if isinstance(e, ev.SignalReceived)]
        assert sorted(got) == sorted(m for (i, m) in sent if i == saga_id), events
        taken = [(e.step, e.message_id) for e in events if isinstance(e, ev.SignalConsumed)]
        assert Counter(m for _, m in taken) == Counter(got), events  # each taken, once
        payloads = {e.message_id: e.payload for e in events if isinstance(e, ev.SignalReceived)}
        for step, message_id in taken:
            assert worker.WAITS[name][step] == next(
                e.name
                for e in events
                if isinstance(e, ev.SignalReceived) and e.message_id == message_id
            )
            ((_, outcome),) = outcomes(snap, saga_id, step)
            assert isinstance(outcome, ev.StepCompleted) and outcome.result == payloads[message_id]
    # Two waits for one name: each took one signal, in the order they came.
    twice = snap.events("twice-0")
    taken = [(e.step, e.message_id) for e in twice if isinstance(e, ev.SignalConsumed)]
    assert taken == [("first", "pay-1"), ("second", "pay-2")], twice
    assert [line["got"] for line in lines(ledger, "twice-0", "book")][-1] == {"second": {"n": 2}}
    for i in range(3):
        shipped = lines(ledger, f"approval-{i}", "ship")
        assert shipped and all(
            line["got"] == {"approve": {"approved_by": f"a{i}"}} for line in shipped
        )


def test_a_signal_sent_before_its_wait_is_kept_for_it(
    snap: Snapshot, ledger: list[dict[str, Any]]
) -> None:
    events = snap.events("early-0")
    came = next(
        i for i, e in enumerate(events) if isinstance(e, ev.SignalReceived) and e.name == "go"
    )
    waits = next(
        i for i, e in enumerate(events) if isinstance(e, ev.StepScheduled) and e.step == "go"
    )
    assert came < waits, events
    assert [line["got"] for line in lines(ledger, "early-0", "ship")][-1] == {"go": {"go": "early"}}


def test_after_the_end_a_repeat_is_no_error_and_a_new_signal_is_refused(done: Campaign) -> None:
    assert done.repeat_after_end is None, done.repeat_after_end
    assert done.new_after_end == "CommandRejected", done.new_after_end
