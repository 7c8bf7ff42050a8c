"""What a saga waiting for a signal costs while it waits (memory, tasks), and waking it.

Starts ``--sagas`` instances of a saga whose first step waits for a signal, waits until
every one is passivated (its actor evicted, its lease released), and measures the Python
memory and the tasks still there because of them, per waiting saga. In the same run, on a
fresh database, the baseline: the same instances with ``passivate_after=None``, each kept
in memory as a live actor. Then, in each run, it signals every instance and times them
until all completed. Prints one JSON object (see benchmarks/README.md).

    python benchmarks/idle.py --sagas 10000 --json
    python benchmarks/idle.py --store postgres --dsn postgresql://127.0.0.1/test --json

On Postgres each run works in a fresh schema (``saga_idle_<random>_...``), dropped
afterwards.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import logging
import os
import platform
import secrets
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

# Import saga from the checkout this script lives in, not from wherever it is installed:
# benchmarking a copy of the repository must measure the copy.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(_ROOT), str(_ROOT / "adapters")]

import anyio  # noqa: E402
import sniffio  # noqa: E402

from saga import (  # noqa: E402
    Coordinator,
    LeasePolicy,
    SagaDefinition,
    Status,
    Step,
    StepContext,
    WaitForSignal,
)
from saga_adapters import open_store  # noqa: E402

SIGNAL = "go"


async def _finish(ctx: StepContext) -> Any:
    return ctx.results["wait"]


IDLE = SagaDefinition(
    "idle",
    [
        Step(name="wait", wait=WaitForSignal(SIGNAL)),
        Step(name="finish", action=_finish),
    ],
)


def _live_tasks() -> int:
    """How many tasks the event loop has alive, on either backend."""
    if sniffio.current_async_library() == "trio":
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(child) for n in task.child_nurseries for child in n.child_tasks)

        root = trio.lowlevel.current_root_task()
        assert root is not None
        return count(root)
    import asyncio

    return len(asyncio.all_tasks())


def _count_calls(store: Any, names: list[str]) -> collections.Counter[str]:
    """Count calls of the store's methods ``names`` (wrapped on this one object)."""
    counts: collections.Counter[str] = collections.Counter()
    for name in names:

        def counted(fn: Callable[..., Awaitable[Any]], name: str) -> Callable[..., Any]:
            async def call(*args: Any, **kwargs: Any) -> Any:
                counts[name] += 1
                return await fn(*args, **kwargs)

            return call

        setattr(store, name, counted(getattr(store, name), name))
    return counts


def _count_spawns(coord: Coordinator) -> collections.Counter[str]:
    """Count the actors the coordinator makes (each one built, or rebuilt from history)."""
    counts: collections.Counter[str] = collections.Counter()
    spawn = coord._spawn

    def counted(saga_id: str, *args: Any, **kwargs: Any) -> Any:
        counts["actors"] += saga_id not in coord._actors
        return spawn(saga_id, *args, **kwargs)

    setattr(coord, "_spawn", counted)  # noqa: B010 - mypy refuses assigning to a method
    return counts


async def _each(ids: list[str], concurrency: int, fn: Callable[[str], Awaitable[None]]) -> None:
    """``fn(saga_id)`` for every id, ``concurrency`` calls at a time."""
    queue: Iterator[str] = iter(ids)

    async def worker() -> None:
        for saga_id in queue:  # one shared iterator: each id is taken once
            await fn(saga_id)

    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, len(ids))):
            tg.start_soon(worker)


async def _until(check: Callable[[], Awaitable[bool]], *, timeout: float) -> bool:
    """Poll ``check`` every 20 ms until it holds; ``False`` if it still fails at ``timeout``."""
    with anyio.move_on_after(timeout):
        while True:
            if await check():
                return True
            await anyio.sleep(0.02)
    return False


def _top(snapshot: tracemalloc.Snapshot, sagas: int, limit: int) -> list[dict[str, Any]]:
    """Where the memory still allocated was allocated, biggest first (with ``--frames``
    above 1, by whole traceback, the allocating line first)."""

    def where(frame: tracemalloc.Frame) -> str:
        path = Path(frame.filename)
        name = str(path.relative_to(_ROOT)) if path.is_relative_to(_ROOT) else frame.filename
        return f"{name}:{frame.lineno}"

    key = "traceback" if snapshot.traceback_limit > 1 else "lineno"
    return [
        {
            "where": " <- ".join(where(frame) for frame in reversed(stat.traceback)),
            "bytes": stat.size,
            "blocks": stat.count,
            "bytes_per_saga": round(stat.size / sagas, 1),
        }
        for stat in snapshot.statistics(key)[:limit]
    ]


class _Run:
    """One run on a fresh store: start the instances, let them go idle, measure what they
    hold; then signal every one and time them until all completed."""

    def __init__(self, args: argparse.Namespace, store: Any, *, passivate: bool) -> None:
        self.args = args
        self.store = store
        self.passivate = passivate
        self.prefix, self.per = ("", "waiting_saga") if passivate else ("baseline_", "live_actor")
        self.coord = Coordinator(
            store,
            [IDLE],
            passivate_after=args.passivate_after if passivate else None,
            max_concurrent_steps=1000,
            # A quicker poll than the default only shortens the waits below.
            leases=LeasePolicy(poll_interval=0.25),
        )
        # Leases given back while signals are handled: actors that passivated again
        # before their signal reached them.
        self.releases = _count_calls(store, ["release"])
        self.spawned = _count_spawns(self.coord)
        self.tasks_before = 0
        self.out: dict[str, Any] = {}

    async def start(self, saga_id: str) -> None:
        await self.coord.start(IDLE, saga_id, {"n": saga_id})

    async def signal_and_wait(self, saga_id: str) -> None:
        await self.coord.signal(saga_id, SIGNAL, {"ok": True}, message_id=f"go-{saga_id}")
        outcome = await self.coord.wait(saga_id)
        if outcome.status is not Status.COMPLETED:
            raise RuntimeError(f"{saga_id} ended {outcome.status.value}")

    async def passivated(self) -> bool:
        return not self.coord._actors

    async def idle(self) -> bool:
        if self.passivate:
            # No actor left, and every task one had has ended (its lease release comes
            # last). A task that stays is a task per waiting saga: it is reported.
            return not self.coord._actors and _live_tasks() <= self.tasks_before
        # Kept in memory: every actor is up, and nothing starts any more.
        seen = _live_tasks()
        await anyio.sleep(0.05)
        return len(self.coord._actors) == self.args.sagas and _live_tasks() == seen

    async def warm_up(self) -> None:
        """The whole cycle once (imports, caches, prepared statements)."""
        warm = [f"warmup-{i}" for i in range(self.args.warmup)]
        await _each(warm, self.args.concurrency, self.start)
        if self.passivate:
            await _until(self.passivated, timeout=60)
        await _each(warm, self.args.concurrency, self.signal_and_wait)

    async def measure_idle(self, ids: list[str]) -> None:
        args, out, prefix, per = self.args, self.out, self.prefix, self.per
        gc.collect()
        self.tasks_before = _live_tasks()
        objects_before = len(gc.get_objects())
        # Traced from here to the measurement only (tracing makes allocating slower): it
        # counts what was allocated meanwhile and is still allocated.
        tracemalloc.start(args.frames)
        t0 = time.perf_counter()
        await _each(ids, args.concurrency, self.start)
        out[f"{prefix}start_seconds"] = round(time.perf_counter() - t0, 3)
        idle = await _until(self.idle, timeout=args.passivate_after + 60 + args.sagas / 100)
        out[f"{prefix}idle_after_seconds"] = round(time.perf_counter() - t0, 3)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0]
        snapshot = tracemalloc.take_snapshot() if args.top else None
        tracemalloc.stop()
        tasks = _live_tasks() - self.tasks_before
        objects = len(gc.get_objects()) - objects_before
        out[f"{prefix}bytes_per_{per}"] = round(traced / args.sagas, 1)
        out[f"{prefix}tasks_per_{per}"] = round(tasks / args.sagas, 4)
        out[f"{prefix}gc_objects_per_{per}"] = round(objects / args.sagas, 4)
        out[f"{prefix}actors_in_memory"] = len(self.coord._actors)
        if not idle:
            out[f"{prefix}idle_timed_out"] = True
        if snapshot is not None:
            out[f"{prefix}top_allocations"] = _top(snapshot, args.sagas, args.top)
        if self.passivate:
            rows = await self.store.instances(statuses=["running"])
            out["leases_held"] = sum(row.owner == self.coord.node for row in rows)

    async def measure_signals(self, ids: list[str]) -> None:
        args, out, prefix = self.args, self.out, self.prefix
        self.releases.clear()
        self.spawned.clear()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        await _each(ids, args.concurrency, self.signal_and_wait)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        out[f"{prefix}signal_seconds"] = round(seconds, 3)
        out[f"{prefix}signals_per_s"] = round(args.sagas / seconds, 1)
        out[f"{prefix}cpu_ms_per_signal"] = round(cpu / args.sagas * 1000, 4)
        out[f"{prefix}actors_per_signal"] = round(self.spawned["actors"] / args.sagas, 4)
        out[f"{prefix}releases_per_signal"] = round(self.releases["release"] / args.sagas, 4)
        # Nothing else runs on this store: every lease "lost" is a false alarm.
        out[f"{prefix}leases_lost"] = self.coord._keeper.lost


async def _measure(args: argparse.Namespace, url: str, passivate: bool) -> dict[str, Any]:
    async with open_store(url) as store:
        run = _Run(args, store, passivate=passivate)
        async with run.coord:
            await run.warm_up()
            ids = [f"idle-{i:07d}" for i in range(args.sagas)]
            await run.measure_idle(ids)
            await run.measure_signals(ids)
    return run.out


def _url(args: argparse.Namespace, tmp: str, name: str) -> str:
    """A fresh store for one run: its own SQLite file, or its own Postgres schema."""
    if args.store == "postgres":
        schema = f"{args.schema}_{name}"
        args.schemas.append(schema)
        return f"{args.dsn}{'&' if '?' in args.dsn else '?'}schema={schema}"
    return f"sqlite:///{os.path.join(tmp, name + '.db')}?synchronous={args.synchronous}"


async def _drop_schemas(dsn: str, schemas: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--dsn", help="the Postgres server, for --store postgres")
    p.add_argument("--sagas", type=int, default=1000, help="waiting instances (default 1000)")
    p.add_argument(
        "--passivate-after",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="the Coordinator's passivate_after (default 1.0)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=200,
        help="start() and signal() calls in flight at once (default 200)",
    )
    p.add_argument(
        "--warmup", type=int, default=20, help="instances run through first (default 20)"
    )
    p.add_argument(
        "--synchronous",
        choices=("OFF", "NORMAL", "FULL", "EXTRA"),
        default="FULL",
        type=str.upper,
        help="SQLite synchronous pragma (default FULL)",
    )
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument(
        "--no-baseline", action="store_true", help="skip the run with actors kept in memory"
    )
    p.add_argument(
        "--top",
        type=int,
        default=0,
        metavar="K",
        help="also report the K source lines that allocated the most of what is still allocated",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=1,
        help="tracemalloc frames a trace (default 1; more is slower)",
    )
    p.add_argument(
        "--tmpdir",
        default=None,
        help="where the temporary directory with the databases goes (default: $TMPDIR)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (else one field a line)"
    )
    args = p.parse_args(argv)
    if args.sagas < 1 or args.concurrency < 1 or args.warmup < 0 or args.frames < 1:
        p.error("--sagas, --concurrency and --frames must be >= 1, --warmup >= 0")
    if args.passivate_after < 0:
        p.error("--passivate-after must be >= 0")
    if args.store == "postgres" and not args.dsn:
        p.error("--store postgres needs --dsn postgresql://...")
    if args.store == "postgres" and args.backend != "asyncio":
        p.error("the Postgres store runs on asyncio only")
    args.schema = f"saga_idle_{secrets.token_hex(4)}"
    args.schemas = []
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    # Counted in the output (leases_lost) rather than logged, a line per instance.
    logging.getLogger("saga").addFilter(lambda record: "stopped here" not in str(record.msg))
    result: dict[str, Any] = {
        "store": args.store,
        "backend": args.backend,
        "sagas": args.sagas,
        "passivate_after": args.passivate_after,
        "concurrency": args.concurrency,
    }
    if args.store == "sqlite":
        result["synchronous"] = args.synchronous
    with tempfile.TemporaryDirectory(prefix="saga-idle-", dir=args.tmpdir) as tmp:
        try:
            # Each run on a database of its own, so that both start from the same size.
            url = _url(args, tmp, "passivated")
            result.update(anyio.run(_measure, args, url, True, backend=args.backend))
            if not args.no_baseline:
                url = _url(args, tmp, "baseline")
                result.update(anyio.run(_measure, args, url, False, backend=args.backend))
        finally:
            if args.schemas:
                anyio.run(_drop_schemas, args.dsn, args.schemas)
    result["python"] = platform.python_version()
    result["sqlite"] = sqlite3.sqlite_version
    result["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return result


if __name__ == "__main__":
    main()
