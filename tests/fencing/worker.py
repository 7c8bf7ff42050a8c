"""A real coordinator process for the fencing tests: one of several sharing one store.

    python -m tests.fencing.worker --url URL --node NAME --ledger PATH --stats PATH \
        [--start ID ...] [--lease SECONDS] [--go-on-signal] \
        [--race ID --race-copies N] [--commit-delay SECONDS] [--no-recover]

It registers the ``fencing_order`` saga (see ``build``), starts the ids it is given, then
keeps running, driving and claiming instances, until SIGTERM or SIGINT, on which it exits
gracefully: the coordinator's exit releases its leases, and the process exits 0.

* ``--go-on-signal``: start the ids (and fire the race) only on SIGUSR1, so that a test can
  release several processes at once once they are all up.
* ``--race ID --race-copies N``: fire N concurrent ``start`` calls of ``ID``.
* ``--commit-delay SECONDS``: every commit takes that long to reach the store (see
  ``DelayedCommits``).

Every attempt of a step's action or compensation appends one JSON line to the ledger
(``saga_id, step, phase, attempt, idempotency_key, outcome, node, pid``, ``t0`` when the
attempt began and ``t`` when it wrote the line, from ``time.time()``), in one
``write(2)`` on an O_APPEND descriptor, then fsyncs: it stands for the effect in the outside
world, and survives a SIGKILL.

Every ``STATS_EVERY`` seconds (and once more on exit) the process writes its counters to the
stats file (``fenced``, ``lost``, ``claimed``, ``pid``, ``node``...), atomically (a temporary
file, then ``os.replace``), so that a test can read them even after a SIGKILL or while the
process is frozen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from saga import Coordinator, LeasePolicy, RetryPolicy, SagaDefinition, Step, StepContext
from saga_adapters import open_store
from tests.chaos import ledger as chaos_ledger

SAGA = "fencing_order"
STEPS = ("reserve", "charge", "notify", "ship")
#: The steps with a compensation; a failing ``ship`` undoes them in reverse.
COMPENSATED_STEPS = ("reserve", "charge")
#: Ids with this prefix take their time: a test can act between two of their steps.
SLOW = "slow-"
#: Ids with this prefix have a long second step, and their first ones end at different
#: times: a process frozen among them has steps running and outcomes being committed.
LONG = "long-"
STATS_EVERY = 0.05


def plan(saga_id: str) -> dict[str, Any]:
    """The input of instance ``saga_id``: fixed by its id, so every process agrees.

    * ``delays_ms``: how long each step's action (and compensation) takes, 60-300 ms:
      long enough that a frozen or killed process has attempts in flight (but see
      ``SLOW`` and ``LONG``).
    * ``ship_fails``: ``ship``, the last step, fails both its attempts, so that the saga
      compensates ``charge`` then ``reserve`` (``notify`` has no compensation).
    """
    if saga_id.startswith(SLOW):
        return {"delays_ms": [150, 150, 800, 150], "ship_fails": False}
    digest = hashlib.blake2b(saga_id.encode(), digest_size=8).digest()
    if saga_id.startswith(LONG):
        delays = [100 + digest[0] * 400 // 255, 800, 60, 60]
    else:
        delays = [60 + digest[i] * 240 // 255 for i in range(len(STEPS))]
    return {"delays_ms": delays, "ship_fails": digest[4] % 3 == 0}


def expected_status(saga_id: str) -> str:
    """How ``saga_id`` ends when nobody cancels it."""
    return "compensated" if plan(saga_id)["ship_fails"] else "completed"


class ShipFailed(Exception):
    """The courier said no (every time, for the instances whose plan says so)."""


class Ledger:
    """Side effects in the outside world: one fsync'd JSON line per attempt
    (``tests.chaos.ledger``), naming the node, with when the attempt began (``t0``) and
    wrote it (``t``)."""

    def __init__(self, path: Path, node: str) -> None:
        self._lines = chaos_ledger.Ledger(path, node=node)
        self.node = node

    def write(self, ctx: StepContext, outcome: str, *, began: float) -> None:
        self._lines.write(ctx, outcome, t0=began, t=time.time())


def build(ledger: Ledger) -> SagaDefinition:
    async def effect(ctx: StepContext, *, fail: bool = False) -> dict[str, Any]:
        began = time.time()
        await anyio.sleep(ctx.input["delays_ms"][STEPS.index(ctx.step)] / 1000)
        ledger.write(ctx, "error" if fail else "ok", began=began)
        # The node is in every recorded outcome (result or error), so a test can tell which
        # process's attempt the history kept.
        if fail:
            raise ShipFailed(f"ship attempt {ctx.attempt} refused (node {ledger.node})")
        return {"step": ctx.step, "node": ledger.node}

    async def action(ctx: StepContext) -> dict[str, Any]:
        return await effect(ctx)

    async def compensation(ctx: StepContext) -> dict[str, Any]:
        assert ctx.result is not None, "a compensation must see its step's result"
        return await effect(ctx)

    async def ship(ctx: StepContext) -> dict[str, Any]:
        return await effect(ctx, fail=ctx.input["ship_fails"])

    quick = RetryPolicy(max_attempts=3, initial_interval=0.02, max_interval=0.05)
    return SagaDefinition(
        SAGA,
        [
            Step(name="reserve", action=action, compensation=compensation, retry=quick),
            Step(name="charge", action=action, compensation=compensation, retry=quick),
            Step(name="notify", action=action, retry=quick),
            Step(
                name="ship",
                action=ship,
                retry=RetryPolicy(max_attempts=2, initial_interval=0.02, max_interval=0.05),
            ),
        ],
        version=1,
    )


def leases(duration: float) -> LeasePolicy:
    """Short leases, so that a takeover happens within the test's time."""
    return LeasePolicy(
        duration=duration, renew_every=duration * 0.3, poll_interval=min(0.1, duration / 10)
    )


class DelayedCommits:
    """The store, with commits that spend ``delay`` seconds on their way to it: a slow
    network. A process frozen at any moment then likely has commits under way (inside the
    actor's shielded commit, holding no database lock); they reach the store after it
    wakes, whatever it decided meanwhile."""

    def __init__(self, store: Any, delay: float) -> None:
        self._store = store
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit(self, transition: Any) -> None:
        await anyio.sleep(self._delay)
        await self._store.commit(transition)


class Stats:
    """What the process reports to the test, rewritten atomically every ``STATS_EVERY``."""

    def __init__(self, path: Path, node: str) -> None:
        self.path = path
        self.node = node
        self.ready = False
        self.exited = False
        self.started: list[str] = []
        self.start_errors: list[str] = []
        self.race_ok = 0
        self.race_errors: list[str] = []

    def write(self, coordinator: Coordinator) -> None:
        keeper = coordinator._keeper
        body = {
            "node": self.node,
            "pid": os.getpid(),
            "ready": self.ready,
            "exited": self.exited,
            "fenced": coordinator.fenced,
            "conflicts": coordinator.conflicts,
            "restarts": coordinator.restarts,
            "lost": keeper.lost,
            "claimed": keeper.claimed,
            "renew_failures": keeper.renew_failures,
            "actors": sorted(coordinator._actors),
            "started": self.started,
            "start_errors": self.start_errors,
            "race_ok": self.race_ok,
            "race_errors": self.race_errors,
            "t": time.time(),
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(body, sort_keys=True))
        os.replace(tmp, self.path)

    async def keep_writing(self, coordinator: Coordinator) -> None:
        while True:
            self.write(coordinator)
            await anyio.sleep(STATS_EVERY)


async def work(
    args: argparse.Namespace,
    coordinator: Coordinator,
    definition: SagaDefinition,
    stats: Stats,
    go: anyio.Event,
) -> None:
    await go.wait()

    async def start(saga_id: str) -> None:
        try:
            await coordinator.start(definition, saga_id, plan(saga_id))
        except Exception as exc:  # reported to the test, which fails on it
            stats.start_errors.append(f"{saga_id}: {exc!r}")
        else:
            stats.started.append(saga_id)

    async def race() -> None:
        try:
            await coordinator.start(definition, args.race, plan(args.race))
        except Exception as exc:  # reported to the test, which fails on it
            stats.race_errors.append(repr(exc))
        else:
            stats.race_ok += 1

    async with anyio.create_task_group() as tg:
        if args.race:
            for _ in range(args.race_copies):
                tg.start_soon(race)
        for saga_id in args.start:
            tg.start_soon(start, saga_id)


async def run(args: argparse.Namespace) -> None:
    ledger = Ledger(args.ledger, args.node)
    definition = build(ledger)
    stats = Stats(args.stats, args.node)
    # Signals are caught before the store opens: a test sends them only once it saw
    # ``ready``, which is written after this.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
        async with (
            open_store(args.url) as opened,
            Coordinator(
                DelayedCommits(opened, args.commit_delay) if args.commit_delay else opened,
                [definition],
                node=args.node,
                leases=leases(args.lease),
                recover=args.recover,
            ) as coordinator,
        ):
            go = anyio.Event()
            if not args.go_on_signal:
                go.set()
            async with anyio.create_task_group() as tg:
                tg.start_soon(stats.keep_writing, coordinator)
                tg.start_soon(work, args, coordinator, definition, stats, go)
                stats.ready = True
                stats.write(coordinator)
                async for signum in signals:
                    if signum == signal.SIGUSR1:
                        go.set()
                        continue
                    break
                tg.cancel_scope.cancel()
        # The coordinator has exited: its leases are released.
        stats.exited = True
        stats.write(coordinator)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--start", nargs="*", default=[])
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--go-on-signal", action="store_true")
    parser.add_argument("--race")
    parser.add_argument("--race-copies", type=int, default=25)
    parser.add_argument("--commit-delay", type=float, default=0.0)
    parser.add_argument("--no-recover", dest="recover", action="store_false")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {args.node} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    anyio.run(run, args, backend="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
