"""Several coordinator processes on one store; one is killed, the others finish its sagas.

Starts N worker processes (this file again, with ``--worker``), each a ``Coordinator`` on
the same store that starts its share of a batch of order sagas. Midway, one worker is
killed with SIGKILL while it holds sagas in flight: once their leases run out, the other
workers claim them, rebuild them from their histories and drive them to the end. Prints
how every saga ended and which worker finished it.

    python examples/multi_process.py postgresql://user@localhost/db [--workers 3] [--sagas 30]
    python examples/multi_process.py sqlite:///orders.db

The store URL is anything ``saga_adapters.open_store`` takes; a Postgres URL may name the
schema to use with ``?schema=name``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import anyio

from saga import (
    Coordinator,
    LeasePolicy,
    RetryPolicy,
    SagaDefinition,
    Step,
    StepContext,
    events,
)
from saga.store import ACTIVE_STATUSES
from saga_adapters import open_store

#: Short leases, so that the dead worker's sagas move within seconds (the default is 10 s).
LEASES = LeasePolicy(duration=1.5, renew_every=0.5, poll_interval=0.2)


class AddressUnknown(Exception):
    """The courier cannot deliver: the order is undone."""


def make_saga(worker: str) -> SagaDefinition:
    """The order saga as run by ``worker``: every step's result says who ran it."""

    async def step(ctx: StepContext) -> dict[str, Any]:
        # Stands for a call to another service, passing ctx.idempotency_key along.
        await anyio.sleep(0.05 * (1 + ctx.input["n"] % 8))  # 50 to 400 ms
        return {"by": worker}

    async def ship(ctx: StepContext) -> dict[str, Any]:
        await anyio.sleep(0.1)
        if ctx.input["address"] == "unknown":
            raise AddressUnknown(f"no such address for {ctx.saga_id}")
        return {"by": worker}

    return SagaDefinition(
        "ship_order",
        [
            Step(name="reserve_stock", action=step, compensation=step),
            Step(name="charge_card", action=step, compensation=step),
            Step(name="ship", action=ship, retry=RetryPolicy(non_retryable=[AddressUnknown])),
        ],
        version=1,
    )


def order(n: int) -> tuple[str, dict[str, Any]]:
    """Order ``n``: its saga id and its input (every fifth cannot be shipped)."""
    return f"order-{n:04d}", {"n": n, "address": "unknown" if n % 5 == 4 else f"{n} Main St"}


# -- a worker process ----------------------------------------------------------------------


async def work(url: str, name: str, orders: list[int]) -> None:
    saga = make_saga(name)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            open_store(url) as store,
            Coordinator(store, [saga], node=name, leases=LEASES) as coordinator,
        ):
            for n in orders:
                await coordinator.start(saga, *order(n))
            # Keep driving (and claiming what others leave) until told to stop; leaving
            # the block releases our leases at once.
            async for _ in signals:
                break


# -- the parent -----------------------------------------------------------------------------


def launch(url: str, name: str, orders: list[int]) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, url, "--worker", name, "--orders"]
    return subprocess.Popen(command + [str(n) for n in orders])


def finisher(history: list[Any]) -> str:
    """The worker whose step or compensation was the last one recorded."""
    for recorded in reversed(history):
        if isinstance(recorded.event, events.StepCompleted | events.CompensationCompleted):
            return str(recorded.event.result["by"])
    return "nobody"


async def run(url: str, workers: int, sagas: int) -> int:
    names = [f"worker-{n + 1}" for n in range(workers)]
    victim = names[0]
    async with (
        open_store(url) as store,  # creates the tables before the workers come
        # Only watches: it claims nothing, so it runs no saga itself.
        Coordinator(store, [make_saga("watcher")], recover=False, leases=LEASES) as watcher,
    ):
        procs = {
            name: launch(url, name, list(range(n, sagas, workers))) for n, name in enumerate(names)
        }
        print("started", ", ".join(f"{name} (pid {p.pid})" for name, p in procs.items()))

        async def until_store(done: Any) -> list[Any]:
            """Read the instance rows until ``done(rows)``; fail if a worker died."""
            while True:
                for name, proc in procs.items():
                    if proc.poll() is not None and name != victim:
                        raise RuntimeError(f"{name} exited ({proc.returncode})")
                rows = list(await store.instances())
                if done(rows):
                    return rows
                await anyio.sleep(0.05)

        def in_flight(rows: list[Any]) -> list[str]:
            return [r.saga_id for r in rows if r.owner == victim and r.status in ACTIVE_STATUSES]

        try:
            with anyio.fail_after(60):
                # Midway: some orders are done, and the victim holds some in flight.
                rows = await until_store(
                    lambda rows: (
                        len(in_flight(rows)) >= 2
                        and sum(r.status not in ACTIVE_STATUSES for r in rows) >= sagas // 4
                    )
                )
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                held = in_flight(await store.instances())  # exact: it is dead
                killed_at = time.monotonic()
                print(f"killed {victim} with SIGKILL; it held {len(held)} sagas in flight")
                rows = await until_store(
                    lambda rows: (
                        len(rows) == sagas and all(r.status not in ACTIVE_STATUSES for r in rows)
                    )
                )
        except (TimeoutError, RuntimeError) as exc:
            print(f"FAILED: {exc!r}", file=sys.stderr)
            return 1
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                proc.wait()
        statuses = Counter(r.status for r in rows)
        print(
            f"all {sagas} sagas finished, {time.monotonic() - killed_at:.1f}s after the kill: "
            + ", ".join(f"{status}={n}" for status, n in sorted(statuses.items()))
        )
        by: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            by[finisher(await watcher.history(row.saga_id))].append(row.saga_id)
        for name in sorted(by):
            print(f"  {name} finished {len(by[name])}: {' '.join(sorted(by[name]))}")
        moved = sorted(i for i in held if i not in by[victim])
        print(f"  taken over from {victim}: {' '.join(moved)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="store URL: postgresql://... or sqlite:///path.db")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--sagas", type=int, default=30)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--orders", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        anyio.run(work, args.url, args.worker, args.orders)
        return 0
    if args.workers < 2:
        parser.error("--workers must be at least 2: one is killed")
    return anyio.run(run, args.url, args.workers, args.sagas)


if __name__ == "__main__":
    sys.exit(main())
