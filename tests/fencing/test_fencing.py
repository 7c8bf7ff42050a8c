"""Several real coordinator processes on one store; some are killed, frozen or cut off.

Each scenario launches ``worker.py`` processes (three, or four for the start race) on a
fresh store (a SQLite file, or a Postgres schema), does something to one of them, waits
with deadlines for the store to show the consequence, and then checks every history and
the ledger of side effects (``checks.check_all``). Leases are short (``cluster.LEASE``
seconds), so that takeovers happen within the test.

A process is frozen only at a moment it is outside any database write
(``Cluster.freeze``): frozen inside one, it would hold SQLite's write lock (and stop every
process on the file) or a Postgres transaction's row locks (and keep its instances from
being claimed) for as long as it stays frozen. That is a limit of leases over a shared
database, not what these tests are about.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

import anyio
import pytest

from saga import Coordinator, Phase
from saga._core import events as ev
from saga._core.codec import decode_event
from saga._store.port import ACTIVE_STATUSES
from tests.fencing import worker
from tests.fencing.checks import (
    OUTCOME_EVENTS,
    attempt_of,
    check_all,
    recorded_by,
    recorded_outcomes,
    snapshot,
)
from tests.fencing.cluster import POSTGRES, STORES, Cluster, Worker

pytestmark = [pytest.mark.fencing, pytest.mark.anyio]

NODES = ("w1", "w2", "w3")
#: Sagas each worker starts; a few hundred ms each, so the victim has some in flight.
PER_WORKER = 10
#: Clocks: the store's (SQLite: the OS clock; Postgres: the server's, here the same host)
#: against the workers' time.time(), rounded to milliseconds by SQLite.
CLOCK_SLACK = 0.05


def ids(prefix: str, node: str, n: int = PER_WORKER) -> list[str]:
    return [f"{prefix}-{node}-{i:02d}" for i in range(n)]


def planned(saga_ids: list[str]) -> dict[str, str]:
    return {saga_id: worker.expected_status(saga_id) for saga_id in saga_ids}


async def launch(
    cluster: Cluster, prefix: str, *, sizes: tuple[int, ...] = (PER_WORKER,) * 3
) -> tuple[list[Worker], dict[str, str]]:
    """Three workers, each starting its sagas once all are up; the expected statuses."""
    started = {node: ids(prefix, node, n) for node, n in zip(NODES, sizes, strict=True)}
    workers = [cluster.spawn(node, start=started[node]) for node in NODES]
    await cluster.ready(*workers)
    cluster.go(*workers)
    return workers, planned([i for node in NODES for i in started[node]])


async def mid_run(cluster: Cluster, victim: Worker, *, owned: int, lines: int) -> None:
    """Until ``victim`` has done ``lines`` side effects and holds ``owned`` live sagas."""

    async def check() -> bool:
        done = sum(line["node"] == victim.node for line in cluster.ledger())
        return done >= lines and len(await cluster.owned(victim)) >= owned

    await cluster.until(check, within=20, what=f"{victim.node} mid-run")


async def finish(cluster: Cluster, expected: dict[str, str], *alive: Worker) -> Any:
    """Every saga terminal, the live workers exit gracefully, and every check holds."""
    await cluster.all_terminal(expected)
    await cluster.stop(*alive)
    snap = await snapshot(cluster.store)
    check_all(snap, cluster.ledger(), expected, cluster.describe())
    return snap


@pytest.mark.parametrize("cluster", STORES, indirect=True)
async def test_a_killed_process_sagas_are_taken_over_and_finish(cluster: Cluster) -> None:
    """SIGKILL mid-run: once its leases run out, the others claim its sagas and end them."""
    workers, expected = await launch(cluster, "kill")
    victim, survivors = workers[0], workers[1:]
    await mid_run(cluster, victim, owned=PER_WORKER // 2, lines=PER_WORKER)

    victim.send(signal.SIGKILL)
    assert await cluster.exit(victim) == -signal.SIGKILL
    held = await cluster.owned(victim)  # exact: a dead process changes nothing
    assert held, cluster.describe()

    snap = await finish(cluster, expected, *survivors)
    ledger = cluster.ledger()
    for saga_id, before in held.items():
        where = f"{saga_id} {before}\n{cluster.describe()}"
        assert snap.rows[saga_id].epoch > before.epoch, where
        theirs = [
            line for line in ledger if line["saga_id"] == saga_id and line["node"] != victim.node
        ]
        assert theirs, f"nobody else ran it: {where}"
        # Taken over only once the dead owner's lease had run out.
        assert before.lease_until is not None
        assert min(line["t0"] for line in theirs) >= before.lease_until - CLOCK_SLACK, where
    claimed = sum(w.stats()["claimed"] for w in survivors)
    print(f"[kill {cluster.kind}] held at the kill: {len(held)}, claimed by the others: {claimed}")
    assert claimed >= len(held), cluster.describe()


@pytest.mark.parametrize("cluster", STORES, indirect=True)
async def test_a_frozen_process_is_fenced_when_it_wakes(cluster: Cluster) -> None:
    """SIGSTOP past its leases, SIGCONT after the takeover: its late commits are refused.

    At the freeze the victim's sagas are in their first step, or in their long second
    one, or between the two: its commits spend 0.2 s on the way to the store
    (``--commit-delay``), so some are under way. On waking, its lease watchdog stops its
    actors at once, before they decide anything more; the steps that were running end
    (their side effects happen, as they may: at least once), but their outcomes are not
    recorded. A commit under way is not cancelled: it reaches the store after the takeover,
    before the successor has run the attempt again, so it finds the sequence it expects
    and only its stale epoch refuses it.
    """
    started = {"w1": ids("long", "w1", 20), "w2": ids("freeze", "w2", 6)}
    started["w3"] = ids("freeze", "w3", 6)
    workers = [
        cluster.spawn(node, start=started[node], commit_delay=0.2 if node == "w1" else 0.0)
        for node in NODES
    ]
    await cluster.ready(*workers)
    cluster.go(*workers)
    expected = planned([i for node in NODES for i in started[node]])
    victim = workers[0]
    await mid_run(cluster, victim, owned=16, lines=10)

    stopped_at = await cluster.freeze(victim)
    held = await cluster.owned(victim)  # exact: it is stopped, outside any write
    assert len(held) >= 12, cluster.describe()

    async def taken_over() -> bool:
        rows = await cluster.rows()
        return time.time() - stopped_at > cluster.lease and all(
            rows[i].owner not in (None, victim.node) or rows[i].status not in ACTIVE_STATUSES
            for i in held
        )

    await cluster.until(taken_over, within=15, what=f"{victim.node}'s sagas taken over")
    victim.send(signal.SIGCONT)
    resumed_at = time.time()

    snap = await finish(cluster, expected, *workers)
    stats = victim.stats()
    where = f"{stats}\n{cluster.describe()}"
    ledger = cluster.ledger()
    # Nothing the victim decided after it woke reached the histories of what it held. (It
    # claimed nothing since: nobody released a lease.)
    assert stats["claimed"] == 0, where
    for saga_id in held:
        for record in snap.records[saga_id]:
            event = decode_event(record.type, record.schema, record.data)
            if isinstance(event, OUTCOME_EVENTS) and recorded_by(event) == victim.node:
                assert record.recorded_at < stopped_at, f"{saga_id} {event}: {where}"
    # Nor did what it had decided before: a successor ran an attempt again only if its
    # outcome was not recorded when it took the saga over; the victim's, on its way then,
    # must not have landed afterwards.
    outcomes = recorded_outcomes(snap)
    for line in ledger:
        if line["node"] != victim.node and line["saga_id"] in held and line["t0"] > stopped_at:
            recorded = outcomes.get(attempt_of(line))
            assert recorded is None or recorded[1] != victim.node, f"{line} {recorded}: {where}"
    # Attempts it began before the freeze and finished after: their side effects happened
    # (at least once, as ever), but the history kept the successors' outcomes. And once
    # awake it began nothing more for them: it had stopped their actors.
    mine = [line for line in ledger if line["node"] == victim.node]
    late = [line for line in mine if line["t0"] < stopped_at < line["t"]]
    again = [line for line in mine if line["saga_id"] in held and line["t0"] > stopped_at]
    assert again == [], f"it went on with sagas it had lost: {again}: {where}"
    print(
        f"[freeze {cluster.kind}] held: {len(held)}, late side effects: {len(late)}, "
        f"lost: {stats['lost']}, fenced: {stats['fenced']}, "
        f"frozen for {resumed_at - stopped_at:.2f}s"
    )
    assert stats["lost"] > 0, where
    assert stats["fenced"] > 0, f"no late commit was refused: {where}"


@pytest.mark.parametrize("cluster", STORES, indirect=True)
async def test_a_graceful_exit_hands_over_within_a_lease(cluster: Cluster) -> None:
    """SIGTERM: it releases its leases on the way out, and successors claim them at once."""
    workers, expected = await launch(cluster, "term")
    victim, survivors = workers[0], workers[1:]
    await mid_run(cluster, victim, owned=PER_WORKER // 2, lines=PER_WORKER // 2)
    held = await cluster.owned(victim)

    victim.send(signal.SIGTERM)
    assert await cluster.exit(victim) == 0, cluster.describe()
    exited_at = time.monotonic()
    assert victim.stats()["exited"], cluster.describe()
    rows = await cluster.rows()
    # Released on the way out, not left to expire.
    assert [i for i, r in rows.items() if r.owner == victim.node] == [], cluster.describe()
    moving = [i for i in held if rows[i].status in ACTIVE_STATUSES]
    assert moving, f"it had nothing in flight to hand over: {cluster.describe()}"

    async def handed_over() -> bool:
        rows = await cluster.rows()
        return all(
            rows[i].owner not in (None, victim.node) or rows[i].status not in ACTIVE_STATUSES
            for i in moving
        )

    await cluster.until(handed_over, within=5 * cluster.lease, what="successors", poll=0.005)
    elapsed = time.monotonic() - exited_at
    print(f"[term {cluster.kind}] handed over {len(moving)} in {elapsed:.3f}s after the exit")
    assert elapsed < cluster.lease, f"handover took {elapsed:.3f}s: {cluster.describe()}"
    await finish(cluster, expected, *survivors)


@pytest.mark.parametrize("cluster", [POSTGRES], indirect=True)
async def test_connections_terminated_by_the_server(cluster: Cluster) -> None:
    """pg_terminate_backend on every connection of one process: it reconnects, goes on."""
    workers, expected = await launch(cluster, "cut", sizes=(20, 6, 6))
    victim = workers[0]
    await mid_run(cluster, victim, owned=PER_WORKER // 2, lines=PER_WORKER // 2)

    query = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
    terminate = (
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1"
    )

    async def backends() -> set[int]:
        return {r["pid"] for r in await cluster.admin.fetch(query, victim.application_name)}

    # Idle pooled connections are replaced unnoticed: cut again (each time once it has
    # reconnected) until one cut lands mid-query and an actor of the victim feels it.
    rounds = 0
    while victim.stats()["restarts"] + victim.stats()["renew_failures"] == 0:
        before = await backends()
        assert len(before) >= 2, f"pool and listener: {before}\n{cluster.describe()}"
        killed = await cluster.admin.fetchval(terminate, victim.application_name)
        assert killed >= len(before) - 1, cluster.describe()  # one may close by itself
        rounds += 1

        async def reconnected(before: set[int] = before) -> bool:
            return len(await backends() - before) >= 2

        await cluster.until(reconnected, within=10, what=f"{victim.node} reconnects")
        assert rounds < 30, f"no cut was felt: {cluster.describe()}"
    assert victim.proc.poll() is None, cluster.describe()
    await finish(cluster, expected, *workers)
    stats = victim.stats()
    print(
        f"[cut] {rounds} rounds; restarts {stats['restarts']}, renew failures {stats['renew_failures']}, lost {stats['lost']}"
    )


@pytest.mark.parametrize("cluster", STORES, indirect=True)
async def test_concurrent_starts_of_one_id_make_one_instance(cluster: Cluster) -> None:
    """100 starts of one id from four processes at once: one instance, each step once."""
    # One that compensates: its actions and compensations must each run once.
    saga_id = next(
        i for i in (f"race-{n}" for n in range(100)) if worker.expected_status(i) == "compensated"
    )
    copies = 25
    workers = [cluster.spawn(f"r{n}", race=saga_id, race_copies=copies) for n in range(4)]
    await cluster.ready(*workers)
    cluster.go(*workers)

    async def answered() -> bool:
        return all(w.stats()["race_ok"] + len(w.stats()["race_errors"]) == copies for w in workers)

    await cluster.until(answered, within=15, what="every start answered")
    errors = [e for w in workers for e in w.stats()["race_errors"]]
    assert errors == [], cluster.describe()
    assert sum(w.stats()["race_ok"] for w in workers) == 4 * copies

    snap = await finish(cluster, {saga_id: "compensated"}, *workers)
    assert snap.rows[saga_id].epoch == 1, "it changed hands: someone else resumed it"
    ledger = cluster.ledger()
    runs = Counter((line["phase"], line["step"], line["attempt"]) for line in ledger)
    assert runs == {
        ("action", "reserve", 1): 1,
        ("action", "charge", 1): 1,
        ("action", "notify", 1): 1,
        ("action", "ship", 1): 1,
        ("action", "ship", 2): 1,
        ("compensation", "charge", 1): 1,
        ("compensation", "reserve", 1): 1,
    }, f"{runs}\n{cluster.describe()}"
    assert len({line["node"] for line in ledger}) == 1, cluster.describe()


@pytest.mark.parametrize("cluster", STORES, indirect=True)
async def test_a_cancel_from_another_process_reaches_the_owner_inbox(cluster: Cluster) -> None:
    """A cancel for a saga another process owns goes through the inbox; the owner undoes."""
    targets = ["slow-cancel-0", "slow-cancel-1"]
    started = {node: ids("cx", node, 4) for node in NODES}
    workers = [
        cluster.spawn(node, start=[*started[node], *(targets if node == "w1" else [])])
        for node in NODES
    ]
    owner = workers[0]
    await cluster.ready(*workers)
    cluster.go(*workers)
    expected = planned([i for node in NODES for i in started[node]])
    expected.update(dict.fromkeys(targets, "cancelled"))

    async def charged() -> bool:
        for saga_id in targets:
            loaded = await cluster.store.load(saga_id)
            if loaded is None:
                return False
            steps = [r.type for r in loaded[1]]
            if steps.count("StepCompleted") < 2:  # reserve and charge done; notify runs
                return False
        return True

    await cluster.until(charged, within=15, what="the targets are charged")
    before = await cluster.rows()
    assert all(before[t].owner == owner.node for t in targets), cluster.describe()

    # The canceller: a coordinator in this process that runs nothing of its own.
    ledger = worker.Ledger(cluster.workdir / "canceller.ledger.jsonl", "canceller")
    async with Coordinator(
        cluster.store,
        [worker.build(ledger)],
        recover=False,
        node="canceller",
        leases=worker.leases(cluster.lease),
    ) as canceller:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for saga_id in targets:
                    tg.start_soon(canceller.cancel, saga_id, "changed my mind")
        # Recorded by the owner, not taken over here.
        assert canceller._keeper.claimed == 0 and not canceller._actors
    assert (cluster.workdir / "canceller.ledger.jsonl").read_text() == ""

    snap = await finish(cluster, expected, *workers)
    for saga_id in targets:
        where = f"{saga_id}\n{cluster.describe()}"
        assert snap.rows[saga_id].epoch == before[saga_id].epoch, f"it changed hands: {where}"
        events = snap.events(saga_id)
        assert [e.reason for e in events if isinstance(e, ev.CancelRequested)] == [
            "changed my mind"
        ], where
        undo = [
            line
            for line in cluster.ledger()
            if line["saga_id"] == saga_id and line["phase"] == Phase.COMPENSATION.value
        ]
        assert [(line["step"], line["node"]) for line in undo] == [
            ("charge", owner.node),
            ("reserve", owner.node),
        ], where
        assert await cluster.store.inbox(saga_id=saga_id) == [], where
