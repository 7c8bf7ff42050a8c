"""Real coordinator processes on one store, and what the tests need to watch them.

``Cluster`` launches ``worker.py`` processes, signals them (SIGKILL, SIGSTOP/SIGCONT,
SIGTERM, SIGUSR1 as a start barrier), reads their stats files and ledgers, and waits for
conditions on the shared store with a deadline (``until``), never for a fixed time.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from saga._store.port import ACTIVE_STATUSES, InstanceRecord
from tests.chaos.procs import REPO, connect_postgres, env, tail, with_query

T = TypeVar("T")

#: Seconds between two looks at a condition (a poll interval under a deadline).
POLL = 0.02
LEASE = 1.0

#: The stores every scenario runs on (the ``cluster`` fixture's parameter).
SQLITE = "sqlite"
POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)
STORES = [SQLITE, POSTGRES]


async def postgres_admin() -> tuple[str, Any]:
    """A DSN that reaches the test server (``SAGA_TEST_POSTGRES_DSN``, else the local one)
    and an asyncpg connection on it; skips the test, saying why, if there is none."""
    try:
        return await connect_postgres()
    except ConnectionError as exc:
        pytest.skip(str(exc))


@dataclass
class Worker:
    node: str
    proc: subprocess.Popen[bytes]
    ledger: Path
    stats_path: Path
    err: Path
    #: Its name in pg_stat_activity (Postgres only).
    application_name: str | None = None
    #: The test ended it on purpose; any other exit fails the test at once.
    ending: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        """Its last stats (written atomically, so never half a file); {} before the first."""
        try:
            return dict(json.loads(self.stats_path.read_text()))
        except FileNotFoundError:
            return {}

    def send(self, signum: int) -> None:
        if signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self.ending = True
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stopped(self) -> bool:
        """Whether the process is stopped (SIGSTOP has landed), from /proc."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] in "Tt"


@dataclass
class Cluster:
    """The worker processes of one test, on the store at ``url``."""

    kind: str  # "sqlite" or "postgres"
    url: str
    #: A random name for this test's schema and connections.
    tag: str
    workdir: Path
    store: Any
    #: Postgres only: a connection of the test's own, for pg_stat_activity and the like.
    admin: Any = None
    lease: float = LEASE
    workers: dict[str, Worker] = field(default_factory=dict)
    #: Seconds from the scenario's start; printed with failures.
    started: float = field(default_factory=time.monotonic)

    def spawn(
        self,
        node: str,
        *,
        start: Iterable[str] = (),
        go_on_signal: bool = True,
        race: str | None = None,
        race_copies: int = 25,
        commit_delay: float = 0.0,
    ) -> Worker:
        url, application_name = self.url, None
        if self.kind == "postgres":
            application_name = f"fence.{self.tag}.{node}"
            url = with_query(url, application_name=application_name)
        ledger = self.workdir / f"{node}.ledger.jsonl"
        stats = self.workdir / f"{node}.stats.json"
        err = self.workdir / f"{node}.err"
        command = [
            sys.executable,
            "-m",
            "tests.fencing.worker",
            "--url",
            url,
            "--node",
            node,
            "--ledger",
            str(ledger),
            "--stats",
            str(stats),
            "--lease",
            str(self.lease),
        ]
        if start:
            command += ["--start", *start]
        if go_on_signal:
            command.append("--go-on-signal")
        if race is not None:
            command += ["--race", race, "--race-copies", str(race_copies)]
        if commit_delay:
            command += ["--commit-delay", str(commit_delay)]
        with open(err, "wb") as stderr:
            proc = subprocess.Popen(
                command, cwd=REPO, env=env(), stdout=stderr, stderr=subprocess.STDOUT
            )
        worker = self.workers[node] = Worker(
            node, proc, ledger, stats, err, application_name=application_name
        )
        return worker

    def describe(self) -> str:
        out = [f"store={self.kind} workdir={self.workdir} t={time.monotonic() - self.started:.2f}s"]
        for w in self.workers.values():
            out.append(
                f"--- {w.node} pid={w.pid} exit={w.proc.poll()} stats={w.stats()}\n{tail(w.err)}"
            )
        return "\n".join(out)

    async def until(
        self, check: Callable[[], Awaitable[T]], *, within: float, what: str, poll: float = POLL
    ) -> T:
        """Look at ``check`` every ``poll`` s until it gives something true; fail after
        ``within`` s, saying what did not happen."""
        try:
            with anyio.fail_after(within):
                while True:
                    self.check_alive()
                    result = await check()
                    if result:
                        return result
                    await anyio.sleep(poll)
        except TimeoutError:
            pytest.fail(f"not within {within}s: {what}\n{self.describe()}")

    def check_alive(self) -> None:
        """Fail at once if a worker exited that the test did not end."""
        for w in self.workers.values():
            if not w.ending and w.proc.poll() is not None:
                pytest.fail(f"{w.node} exited by itself ({w.proc.returncode})\n{self.describe()}")

    async def ready(self, *workers: Worker, within: float = 20.0) -> None:
        async def check() -> bool:
            return all(w.stats().get("ready") for w in workers)

        await self.until(check, within=within, what="every worker ready")

    def go(self, *workers: Worker) -> None:
        """Release the workers' starts (they wait for SIGUSR1), as nearly at once as can be."""
        for w in workers:
            w.send(signal.SIGUSR1)

    async def rows(self) -> dict[str, InstanceRecord]:
        return {row.saga_id: row for row in await self.store.instances()}

    async def owned(self, worker: Worker) -> dict[str, InstanceRecord]:
        """The active instances whose lease ``worker`` holds (live or expired)."""
        return {
            i: r
            for i, r in (await self.rows()).items()
            if r.owner == worker.node and r.status in ACTIVE_STATUSES
        }

    async def all_terminal(self, ids: Iterable[str], *, within: float = 30.0) -> None:
        wanted = set(ids)

        async def check() -> bool:
            rows = await self.rows()
            return wanted <= set(rows) and all(
                rows[i].status not in (*ACTIVE_STATUSES, "suspended") for i in wanted
            )

        await self.until(check, within=within, what=f"all of {len(wanted)} sagas terminal")

    def ledger(self) -> list[dict[str, Any]]:
        lines = []
        for w in self.workers.values():
            if w.ledger.exists():
                lines += [json.loads(line) for line in w.ledger.read_text().splitlines()]
        return sorted(lines, key=lambda line: line["t"])

    async def exit(self, worker: Worker, *, within: float = 15.0) -> int:
        async def check() -> bool:
            return worker.proc.poll() is not None

        await self.until(check, within=within, what=f"{worker.node} exits", poll=0.005)
        return worker.proc.returncode

    async def stop(self, *workers: Worker) -> None:
        """SIGTERM, and every one exits 0 (a graceful exit)."""
        for w in workers:
            w.send(signal.SIGCONT)
            w.send(signal.SIGTERM)
        for w in workers:
            code = await self.exit(w)
            assert code == 0, f"{w.node} exited {code}\n{self.describe()}"
            assert w.stats().get("exited"), self.describe()

    def kill_all(self) -> None:
        """Teardown: no process of ours outlives its test, whatever happened."""
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait()

    # -- freezing a process at a moment it blocks no one --------------------------------

    async def holds_database(self, worker: Worker) -> bool:
        """Whether the (stopped) worker is inside a database write, where freezing it
        would block the others: SQLite's write lock is one for the whole file, and an open
        Postgres transaction keeps its row locks (a claim skips those rows)."""
        if self.kind == "sqlite":
            return _holds_posix_write_lock(worker.pid)
        states = await self.admin.fetch(
            "SELECT state FROM pg_stat_activity WHERE application_name = $1",
            worker.application_name,
        )
        return any(s["state"] != "idle" for s in states)

    async def freeze(self, worker: Worker, *, within: float = 5.0) -> float:
        """SIGSTOP ``worker`` at a moment it is not inside a database write (see
        ``holds_database``: freezing it there would freeze the others too); returns when."""

        async def landed() -> bool:
            return worker.stopped()

        async def attempt() -> float | None:
            worker.send(signal.SIGSTOP)
            await self.until(landed, within=2.0, what="SIGSTOP lands", poll=0.001)
            if not await self.holds_database(worker):
                return time.time()
            worker.send(signal.SIGCONT)
            return None

        return await self.until(attempt, within=within, what=f"freeze {worker.node}", poll=0.003)


def _holds_posix_write_lock(pid: int) -> bool:
    """Whether ``pid`` holds a POSIX write lock (SQLite's write lock is one, on the -shm
    file), from /proc/locks."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 120 120"; blocked waiters have "->".
        if "->" in fields or len(fields) < 5:
            continue
        if fields[1] == "POSIX" and fields[3] == "WRITE" and fields[4] == str(pid):
            return True
    return False
