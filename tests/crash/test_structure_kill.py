"""Kill a real coordinator process with SIGKILL while its sagas run parallel groups and
child sagas.

One campaign per store (a SQLite file, a fresh Postgres schema) runs
``structure_worker.py`` five times on it (see that module for the sagas):

1. wave 1: SIGKILL from outside at a random moment (once the ledger holds a random
   number of lines, seeded; the seed is in the failure message);
2. wave 1 again: once the children of ``p-wait-*`` and the grandchildren of ``chain-*``
   wait for their signal, the test cancels ``p-wait-0`` and ``chain-0`` (commands written
   to their inbox, as another coordinator would) and signals the others' waiting
   (grand)children; SIGKILL from outside as soon as a cancelled (grand)child's undo is in
   the ledger: in the middle of the cascade;
3. wave 2 (fresh sagas, so there is work to crash on) with the ``step_effect_done`` crash
   point armed: the process kills itself after its first action, before reporting it;
4. wave 2 with ``compensation_started`` armed: it kills itself as its first compensation
   begins;
5. without faults: every instance must end, and the process exit 0.

Then the histories and the ledger are checked: the chaos checks (``tests.chaos.checks``);
each child created once, naming its parent; every parent consistent with its child's end;
a cancelled parent's descendants cancelled (or never created) and its
``ChildCancelDelivered`` before its ``SagaCancelled``; every group member that completed
undone exactly once when its saga turned back, the group's undos before those of the
steps before the group (and after those of the steps after it), and no member attempt
scheduled or begun after the saga turned back unless it was scheduled before.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from saga import Coordinator
from saga._core import events as ev
from saga._core import messages as msg
from saga._core.codec import encode_command
from saga._crashpoints import ENV_LOG, ENV_POINTS
from saga._runtime.ownership import decode_reply
from saga._store.port import InboxRecord
from saga_adapters import open_store
from tests.chaos.checks import (
    TERMINAL_STATUSES,
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
from tests.chaos.ledger import count_lines, read_ledger, read_lines
from tests.chaos.procs import REPO, env, tail
from tests.crash import structure_worker as worker
from tests.crash.stores import STORES, on_store

pytestmark = pytest.mark.crash

WORKER = Path(__file__).with_name("structure_worker.py")
#: Bounds on waiting for a process to get somewhere, not synchronisation: each run of the
#: worker takes a second or two.
WITHIN = 30.0
POLL = 0.02
#: The (grand)children that wait for ``approve``, per top-level saga.
WAITER = {
    "p-wait-0": "p-wait-0/ship",
    "p-wait-1": "p-wait-1/ship",
    "chain-0": "chain-0/ship/sub",
    "chain-1": "chain-1/ship/sub",
}


@dataclass
class Run:
    n: int
    pid: int
    launched: float  # time.time()
    code: int | None = None
    how: str = ""  # "outside", a crash point's name, or "finished"


@dataclass
class Campaign:
    kind: str
    url: str
    workdir: Path
    seed: int
    runs: list[Run] = field(default_factory=list)
    snap: Snapshot | None = None
    #: The inbox message id of each cancel the test sent, and the answer it got.
    cancels: dict[str, str] = field(default_factory=dict)
    answers: dict[str, str | None] = field(default_factory=dict)
    kill_after_lines: int = 0
    proc: subprocess.Popen[bytes] | None = None
    store: Any = None

    @property
    def ledger(self) -> Path:
        return self.workdir / "ledger.jsonl"

    @property
    def crash_log(self) -> Path:
        return self.workdir / "crashpoints.log"

    def describe(self) -> str:
        runs = ", ".join(f"run {r.n}: {r.how or r.code}" for r in self.runs)
        last = tail(self.workdir / f"run-{self.runs[-1].n}.out") if self.runs else ""
        return (
            f"{self.kind} at {self.workdir} (seed {self.seed}, first kill after "
            f"{self.kill_after_lines} ledger lines): {runs}\n{last}"
        )

    async def rows(self) -> str:
        snap = await snapshot(self.store)
        return "\n".join(
            f"{i}: {r.status} at {r.sequence}, owner {r.owner}, last {snap.events(i)[-1]}"
            for i, r in sorted(snap.rows.items())
        )

    # -- processes -------------------------------------------------------------------

    def launch(self, wave: int, backend: str, *, passivate: bool = True, **extra: str) -> Run:
        n = len(self.runs) + 1
        command = [
            sys.executable,
            str(WORKER),
            "--url",
            self.url,
            "--ledger",
            str(self.ledger),
            "--wave",
            str(wave),
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
        run = Run(n=n, pid=self.proc.pid, launched=time.time())
        self.runs.append(run)
        return run

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        """Poll ``check`` until it holds; the worker must live on meanwhile."""
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
        run.code = self.proc.returncode
        return run.code

    def kill(self, run: Run) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        run.code, run.how = self.proc.wait(), "outside"

    async def crash_at(self, run: Run, point: str) -> None:
        """The run was launched with ``point`` armed: it must kill itself there."""
        code = await self.ended(run)
        hit = read_lines(self.crash_log)
        run.how = point if hit[-1:] == [point] and code == -signal.SIGKILL else f"exit {code}"

    async def cancel(self, saga_id: str) -> None:
        """Ask the owner of ``saga_id`` to cancel it, as another coordinator would: a
        command in its inbox (the answer comes back to the store)."""
        message_id = uuid.uuid4().hex
        await self.store.send(
            InboxRecord(
                message_id=message_id,
                saga_id=saga_id,
                sender="test-sender",
                body=encode_command(msg.CancelSaga(reason="customer")),
                created_at=time.time(),
            )
        )
        self.cancels[saga_id] = message_id

    def kill_all(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def waiting(snap: Snapshot, saga_id: str, step: str) -> bool:
    """``step`` of ``saga_id`` is scheduled and has no outcome yet."""
    events = snap.events(saga_id) if saga_id in snap.rows else []
    return any(isinstance(e, ev.StepScheduled) and e.step == step for e in events) and not any(
        isinstance(e, ev.StepCompleted | ev.StepFailed) and e.step == step for e in events
    )


async def campaign(kind: str, url: str, workdir: Path) -> Campaign:
    seed = random.randrange(2**32)
    c = Campaign(kind=kind, url=url, workdir=workdir, seed=seed)
    dice = random.Random(seed)
    sqlite = kind == "sqlite"
    async with (
        open_store(url) as store,
        # No definitions: it can send signals, never drive an instance.
        Coordinator(store, [], recover=False, node="test-sender") as sender,
    ):
        c.store = store
        try:
            # 1. Wave 1, killed at a random moment.
            c.kill_after_lines = dice.randrange(3, 40)
            run = c.launch(1, "asyncio")

            async def enough_lines() -> bool:
                return count_lines(c.ledger) >= c.kill_after_lines

            await c.until(enough_lines, f"{c.kill_after_lines} ledger lines")
            c.kill(run)

            # 2. Cancel two tops while their (grand)child waits; approve the other two.
            run = c.launch(1, "trio" if sqlite else "asyncio", passivate=False)

            async def children_wait() -> bool:
                snap = await snapshot(store)
                return all(waiting(snap, child, "approve") for child in WAITER.values())

            await c.until(children_wait, "every waiting (grand)child waits for approve")
            for top in worker.CANCELLED:
                await c.cancel(top)
            for top in worker.SIGNALLED:
                await sender.signal(WAITER[top], "approve", {"by": top}, message_id=f"ok-{top}")

            async def cascade_under_way() -> bool:
                return any(
                    line["phase"] == "compensation"
                    and line["saga_id"] in {WAITER[t] for t in worker.CANCELLED}
                    for line in read_ledger(c.ledger)
                )

            await c.until(cascade_under_way, "a cancelled (grand)child undoes its pack")
            c.kill(run)

            # 3. and 4. Wave 2, killed at crash points.
            for point in ("step_effect_done", "compensation_started"):
                run = c.launch(
                    2,
                    "asyncio",
                    passivate=False,
                    **{ENV_POINTS: f"{point}:1", ENV_LOG: str(c.crash_log)},
                )
                await c.crash_at(run, point)

            # 5. No faults: everything ends.
            run = c.launch(2, "trio" if sqlite else "asyncio")
            code = await c.ended(run)
            run.how = "finished" if code == 0 else f"exit {code}"
            for top, message_id in c.cancels.items():
                body = await store.take_reply(message_id)
                error = None if body is None else decode_reply(top, body)
                c.answers[top] = "no answer" if body is None else repr(error)
            c.snap = await snapshot(store)
        finally:
            c.kill_all()
    return c


@pytest.fixture(scope="module", params=STORES)
def done(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    workdir = tmp_path_factory.mktemp(f"structure-{request.param}")
    return on_store(request.param, workdir, campaign, prefix="structure")


@pytest.fixture(scope="module")
def snap(done: Campaign) -> Snapshot:
    assert done.snap is not None, done.describe()
    return done.snap


@pytest.fixture(scope="module")
def ledger(done: Campaign) -> list[dict[str, Any]]:
    return read_ledger(done.ledger)


# -- what the histories say ---------------------------------------------------------


def definition_of(snap: Snapshot, saga_id: str) -> str:
    started = snap.events(saga_id)[0]
    assert isinstance(started, ev.SagaStarted), (saga_id, started)
    return started.saga


def descendants(snap: Snapshot, saga_id: str) -> list[str]:
    return sorted(i for i in snap.rows if i.startswith(f"{saga_id}/"))


def timed(snap: Snapshot, saga_id: str) -> list[tuple[float, Any]]:
    """The events of ``saga_id`` with when each was recorded."""
    return [
        (record.recorded_at, e)
        for record, e in zip(snap.records[saga_id], snap.events(saga_id), strict=True)
    ]


def results(snap: Snapshot, saga_id: str) -> dict[str, Any]:
    return {e.step: e.result for e in snap.events(saga_id) if isinstance(e, ev.StepCompleted)}


def positions(events: list[Any], kind: type[Any], steps: Any = None) -> list[int]:
    return [
        i
        for i, e in enumerate(events)
        if isinstance(e, kind) and (steps is None or getattr(e, "step", None) in steps)
    ]


def without_member_undos(
    snap: Snapshot, ledger: list[dict[str, Any]]
) -> tuple[Snapshot, list[dict[str, Any]]]:
    """The snapshot and ledger without the compensations of group members.

    The chaos checks of compensation order expect one undo at a time, newest first; a
    group's members are undone at the same time (two at once here), in any order. They
    are checked by ``test_group_members_are_undone_once_between_their_neighbours``; the
    rest of each saga's undos (the steps before and after the group) keep the chaos
    checks' strict order.
    """
    undo_kinds = (ev.CompensationScheduled, ev.CompensationCompleted, ev.CompensationFailed)
    grouped = {i for i in snap.rows if definition_of(snap, i) in worker.GROUPED}
    decoded = {
        i: [
            e
            for e in snap.events(i)
            if not (i in grouped and isinstance(e, undo_kinds) and e.step in worker.MEMBERS)
        ]
        for i in snap.rows
    }
    filtered = Snapshot(rows=snap.rows, records=snap.records, tasks=snap.tasks, _decoded=decoded)
    lines = [
        line
        for line in ledger
        if not (
            line["saga_id"] in grouped
            and line["phase"] == "compensation"
            and line["step"] in worker.MEMBERS
        )
    ]
    return filtered, lines


# -- the tests ----------------------------------------------------------------------


def test_the_kills_landed_where_planned(done: Campaign) -> None:
    where = done.describe()
    first, cascade, effect, undo, last = done.runs
    assert (first.how, first.code) == ("outside", -signal.SIGKILL), where
    assert (cascade.how, cascade.code) == ("outside", -signal.SIGKILL), where
    assert effect.how == "step_effect_done", where
    assert undo.how == "compensation_started", where
    assert read_lines(done.crash_log) == ["step_effect_done", "compensation_started"], where
    assert (last.how, last.code) == ("finished", 0), where
    assert "DONE" in (done.workdir / f"run-{last.n}.out").read_text(), where


def test_every_saga_ended_as_expected(done: Campaign, snap: Snapshot) -> None:
    expected = {
        i: "cancelled" if i in worker.CANCELLED else worker.EXPECTED_STATUS[d]
        for i, (d, _) in worker.SAGAS.items()
    }
    assert {i: snap.rows[i].status for i in worker.SAGAS} == expected, done.describe()
    assert all(r.status in TERMINAL_STATUSES for r in snap.rows.values()), done.describe()
    # The cancels were answered: recorded, by the worker.
    assert done.answers == dict.fromkeys(worker.CANCELLED, "None"), done.describe()


def test_histories_and_ledger_hold_the_chaos_checks(
    done: Campaign, snap: Snapshot, ledger: list[dict[str, Any]]
) -> None:
    """Gap-free, replay equals the row, nothing twice, commit before emit, one key per
    step, no work item outlives its saga, waits ended once; compensations in order,
    in the history and in the ledger (group members aside, see ``without_member_undos``)."""
    signal_waits = {i: worker.WAITS.get(definition_of(snap, i), {}) for i in snap.rows}
    waits = {
        i: {*signal_waits[i], *worker.CHILDREN.get(definition_of(snap, i), {})} for i in snap.rows
    }
    lines = by_saga(ledger)
    violations = [
        v
        for saga_id in sorted(snap.rows)
        for v in history_violations(snap, saga_id)
        + wait_violations(
            snap, saga_id, dict.fromkeys(signal_waits[saga_id], "signal"), lines.get(saga_id, [])
        )
    ]
    violations += ledger_violations(snap, ledger, lambda saga_id: waits[saga_id])
    violations += task_violations(snap)
    ordered, rest = without_member_undos(snap, ledger)

    def compensable(saga_id: str) -> tuple[str, ...]:
        if definition_of(snap, saga_id) in worker.GROUPED:
            return tuple(s for s in worker.COMPENSATED if s not in worker.MEMBERS)
        return worker.COMPENSATED

    violations += [
        v
        for saga_id in sorted(snap.rows)
        for v in compensation_violations(ordered, saga_id, compensable(saga_id))
    ]
    violations += undo_violations(ordered, rest, compensable)
    assert violations == [], done.describe()


def test_every_child_was_created_once_and_names_its_parent(
    done: Campaign, snap: Snapshot, ledger: list[dict[str, Any]]
) -> None:
    children = [i for i in snap.rows if "/" in i]
    # p-ok-*, p-fail-*, p-wait-*, chain-* each have a child, chain-* a grandchild (that
    # of chain-0 waited when it was cancelled); nothing else.
    expected = {f"{t}/ship" for t, (d, _) in worker.SAGAS.items() if d in worker.CHILDREN}
    assert set(children) == expected | {"chain-0/ship/sub", "chain-1/ship/sub"}, children
    for child in children:
        parent, _, step = child.rpartition("/")
        started = snap.events(child)[0]
        assert isinstance(started, ev.SagaStarted), snap.events(child)
        assert started.parent == ev.ParentRef(saga_id=parent, step=step), started
        assert started.saga == worker.CHILDREN[definition_of(snap, parent)][step], started
        assert started.input == {"parent": parent, "step": step}, started
        # The parent asked for it once, and before it existed.
        scheduled = [
            (at, e)
            for at, e in timed(snap, parent)
            if isinstance(e, ev.StepScheduled) and e.step == step
        ]
        assert [e.attempt for _, e in scheduled] == [1], snap.events(parent)
        assert scheduled[0][0] <= snap.records[child][0].recorded_at
        # Its first step ran under one key; a re-run after a kill is the same attempt.
        first = [line for line in ledger if line["saga_id"] == child and line["phase"] == "action"]
        assert first and {
            line["attempt"] for line in first if line["step"] == first[0]["step"]
        } == {1}
    # Every child step of every parent that got that far has its child.
    for saga_id in snap.rows:
        for step in worker.CHILDREN.get(definition_of(snap, saga_id), {}):
            if positions(snap.events(saga_id), ev.StepScheduled, {step}):
                child = f"{saga_id}/{step}"
                assert child in snap.rows or saga_id.split("/")[0] in worker.CANCELLED, child


def test_every_parent_ends_as_its_child_did(done: Campaign, snap: Snapshot) -> None:
    checked = 0
    for child in (i for i in snap.rows if "/" in i):
        parent, _, step = child.rpartition("/")
        top = parent.split("/")[0]
        if top in worker.CANCELLED:
            continue  # the parent stopped waiting: see the next test
        outcome = [
            e
            for e in snap.events(parent)
            if isinstance(e, ev.StepCompleted | ev.StepFailed) and e.step == step
        ]
        status = snap.rows[child].status
        where = f"{child} {status}: {snap.events(parent)}"
        assert len(outcome) == 1, where
        if status == "completed":
            assert isinstance(outcome[0], ev.StepCompleted), where
            assert outcome[0].result == results(snap, child), where
            assert snap.rows[parent].status == "completed", where
        else:
            assert status in ("compensated", "failed"), where
            assert isinstance(outcome[0], ev.StepFailed), where
            assert outcome[0].error.type == "saga.ChildFailed", where
            assert f"ended {status}" in outcome[0].error.message, where
            assert snap.rows[parent].status == "compensated", where
        checked += 1
    # p-ok-0/1, p-fail-0/1, p-wait-1, chain-1 and its middle.
    assert checked == 7, done.describe()


def test_a_cancelled_parent_takes_its_descendants_with_it(done: Campaign, snap: Snapshot) -> None:
    for top in worker.CANCELLED:
        events = snap.events(top)
        where = f"{top}: {events}"
        assert snap.rows[top].status == "cancelled", where
        child = f"{top}/ship"
        assert child in snap.rows, where  # it waited when the test cancelled
        (requested,) = positions(events, ev.ChildCancelRequested)
        assert events[requested].child_id == child, where
        delivered = [i for i, e in enumerate(events) if isinstance(e, ev.ChildCancelDelivered)]
        assert [events[i].child_id for i in delivered] == [child], where
        (ended,) = positions(events, ev.SagaCancelled)
        assert requested < delivered[0] < ended, where
        for descendant in descendants(snap, top):
            status = snap.rows[descendant].status
            assert status == "cancelled", (descendant, status, snap.events(descendant))
            # It was cancelled because its parent stopped, not by the customer directly.
            cancelled = snap.events(descendant)[-1]
            assert isinstance(cancelled, ev.SagaCancelled), snap.events(descendant)
            assert cancelled.reason.startswith("its parent stopped"), cancelled
    # The grandchild of chain-0 waited too: the cascade went two levels down.
    assert "chain-0/ship/sub" in snap.rows


def test_group_members_are_undone_once_between_their_neighbours(
    done: Campaign, snap: Snapshot, ledger: list[dict[str, Any]]
) -> None:
    lines = by_saga(ledger)
    turned = with_undos = 0
    for saga_id in (i for i in snap.rows if definition_of(snap, i) in worker.GROUPED):
        events = snap.events(saga_id)
        where = f"{saga_id} ({snap.rows[saga_id].status}): {events}"
        completed = {e.step for e in events if isinstance(e, ev.StepCompleted)}
        members = completed & set(worker.MEMBERS)
        undone = Counter(e.step for e in events if isinstance(e, ev.CompensationCompleted))
        if snap.rows[saga_id].status == "completed":
            assert not undone, where
            continue
        turned += 1
        # Every member that completed undone once, no other.
        assert {m: undone[m] for m in worker.MEMBERS if undone[m]} == dict.fromkeys(members, 1), (
            where
        )
        # In the history: after the steps after the group, before those before it.
        member_undos = positions(events, ev.CompensationScheduled, worker.MEMBERS) + positions(
            events, ev.CompensationCompleted, worker.MEMBERS
        )
        if not members:
            continue  # (m1 of fan_member_fails dropped before it began: nothing to undo)
        with_undos += 1
        before = positions(events, ev.CompensationScheduled, {"reserve"})
        after = positions(events, ev.CompensationCompleted, {"charge"})
        assert before and max(member_undos) < min(before), where
        assert max(after, default=-1) < min(member_undos), where
        # In the outside world: the same order, and only completed members undone.
        mine = [line for line in lines[saga_id] if line["phase"] == "compensation"]
        order = [line["step"] for line in mine]
        assert {s for s in order if s in worker.MEMBERS} == members, (order, where)
        first_reserve = order.index("reserve")
        assert all(s == "reserve" for s in order[first_reserve:]), order
        if "charge" in order:
            last_charge = len(order) - 1 - order[::-1].index("charge")
            assert all(s == "charge" for s in order[: last_charge + 1]), order
    assert turned == 5, done.describe()  # fan-mf-0/1/2 and fan-af-0/1
    assert with_undos >= 2, done.describe()  # fan-af-0/1 complete the group first


def test_no_member_begins_after_its_saga_turned_back(
    done: Campaign, snap: Snapshot, ledger: list[dict[str, Any]]
) -> None:
    """Once a saga turned back, no member is scheduled; an attempt that begins after it
    was scheduled before (it may have been running when the process died: it is run again,
    at least once)."""
    lines = by_saga(ledger)
    lingered = 0
    for saga_id in (i for i in snap.rows if definition_of(snap, i) in worker.GROUPED):
        history = timed(snap, saga_id)
        turns = [
            (i, at) for i, (at, e) in enumerate(history) if isinstance(e, ev.CompensationTriggered)
        ]
        if not turns:
            continue
        ((turn, turned_at),) = turns
        where = f"{saga_id}: {[e for _, e in history]}"
        before = {
            (e.step, e.attempt)
            for _, e in history[:turn]
            if isinstance(e, ev.StepScheduled) and e.step in worker.MEMBERS
        }
        assert not [e for _, e in history[turn:] if isinstance(e, ev.StepScheduled)], where
        late = [
            line
            for line in lines[saga_id]
            if line["outcome"] == "begin" and line["at"] >= turned_at
        ]
        assert all((line["step"], line["attempt"]) in before for line in late), (late, where)
        # A member begun after the turn ran because its attempt was in flight then.
        for line in late:
            outcome = [
                e
                for _, e in history[turn:]
                if isinstance(e, ev.StepCompleted | ev.StepFailed)
                and (e.step, e.attempt) == (line["step"], line["attempt"])
            ]
            assert len(outcome) == 1, (line, where)
        if definition_of(snap, saga_id) == "fan_member_fails":
            # m1 ran on until its saga turned back: it completed after, and m3 never began.
            completed = [
                i
                for i, (_, e) in enumerate(history)
                if isinstance(e, ev.StepCompleted) and e.step == "m1"
            ]
            assert completed and completed[0] > turn, where
            assert not [line for line in lines[saga_id] if line["step"] == "m3"], where
            lingered += 1
    assert lingered == 3, done.describe()
