"""Throughput and latency of many concurrent sagas on one coordinator.

Starts ``--sagas`` instances of a saga of ``--steps`` no-op steps, at most
``--concurrency`` in flight, and measures each one from the ``start()`` call to its
terminal outcome. On SQLite it also measures, in the same run and on the same disk, what
raw stdlib ``sqlite3`` does with the same writes batched the same way: the ceiling the
coordinator is compared against; on Postgres, the same with raw ``asyncpg`` on the same
server. Prints one JSON object (see benchmarks/README.md).

    python benchmarks/throughput.py --store sqlite --sagas 5000 --steps 3 --json
    python benchmarks/throughput.py --store postgres --dsn postgresql://127.0.0.1/test --json

On Postgres each run works in a fresh schema (``saga_bench_<random>``), dropped afterwards.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import os
import platform
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Import saga from the checkout this script lives in, not from wherever it is installed:
# benchmarking a copy of the repository must measure the copy.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(_ROOT), str(_ROOT / "adapters")]

import anyio  # noqa: E402

from saga import Coordinator, MemoryStore, SagaDefinition, Status, Step, StepContext  # noqa: E402
from saga._store.port import InstanceRecord, NewInstance, Transition  # noqa: E402
from saga_adapters import open_store  # noqa: E402
from saga_adapters.sqlite._schema import migrate  # noqa: E402


async def _noop(ctx: StepContext) -> None:
    return None


class _CountingMemoryStore(MemoryStore):
    """The memory store, counting committed transitions like SQLiteStore.writes does."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    async def create(self, instance: NewInstance) -> InstanceRecord | None:
        existing = await super().create(instance)
        self.writes += existing is None
        return existing

    async def commit(self, transition: Transition) -> None:
        await super().commit(transition)
        self.writes += 1


class _GcTimer:
    """Time spent in the cyclic garbage collector, and collections per generation."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began
            self.collections[info["generation"]] += 1

    def __enter__(self) -> _GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def _drive(
    coord: Coordinator,
    definition: SagaDefinition,
    ids: list[str],
    concurrency: int,
    latencies: list[float],
) -> int:
    """Run every id through start() and outcome(), ``concurrency`` at a time.

    Returns how many did not end ``completed``.
    """
    queue = iter(ids)
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for saga_id in queue:  # one shared iterator: each id is taken once
            began = time.perf_counter()
            handle = await coord.start(definition, saga_id, {"n": saga_id})
            outcome = await handle.outcome()
            latencies.append(time.perf_counter() - began)
            failures += outcome.status is not Status.COMPLETED

    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, len(ids))):
            tg.start_soon(worker)
    return failures


async def _run_sagas(args: argparse.Namespace, url: str) -> dict[str, Any]:
    definition = SagaDefinition(
        "bench",
        [Step(name=f"s{i}", action=_noop, compensation=_noop) for i in range(args.steps)],
    )
    store_cm = _CountingMemoryStore() if args.store == "memory" else open_store(url)
    if args.store == "postgres":
        # A pool as large as the concurrency the writer and readers can use.
        store_cm = _postgres_store(args.dsn, args.schema, max_size=args.pool_size)
    async with (
        store_cm as store,
        Coordinator(store, [definition], max_concurrent_steps=args.max_concurrent_steps) as coord,
    ):
        if args.warmup:
            warm = [f"warmup-{i}" for i in range(args.warmup)]
            await _drive(coord, definition, warm, min(args.concurrency, args.warmup), [])
        writes0 = store.writes
        batches0 = getattr(store, "batches", 0)
        ids = [f"bench-{i}" for i in range(args.sagas)]
        latencies: list[float] = []
        profiler = cProfile.Profile() if args.profile else None
        with _GcTimer() as gc_timer:
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            failures = await _drive(coord, definition, ids, args.concurrency, latencies)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
        writes = store.writes - writes0
        batches = getattr(store, "batches", 0) - batches0
    latencies.sort()
    out: dict[str, Any] = {
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu, 4),
        "sagas_per_s": round(args.sagas / seconds, 1),
        "transitions": writes,
        "transitions_per_s": round(writes / seconds, 1),
        "cpu_ms_per_saga": round(cpu / args.sagas * 1000, 4),
        "p50_ms": round(_percentile(latencies, 50) * 1000, 3),
        "p90_ms": round(_percentile(latencies, 90) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 99) * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        "not_completed": failures,
        "gc_seconds": round(gc_timer.seconds, 4),
        "gc_collections": gc_timer.collections,
    }
    if batches:
        out["batches"] = batches
        out["commits_per_batch"] = round(writes / batches, 2)
    return out


# -- the baseline: raw sqlite3, our writes, our batching, no runtime ------------------------


def _raw_sqlite_rate(
    path: str, *, synchronous: str, sagas: int, steps: int, batch: int, with_tasks: bool
) -> float:
    """Transactions per second of stdlib sqlite3 doing the writer's work, on one thread.

    Each saga is ``1 + steps`` transitions: an instance INSERT, then UPDATEs guarded by
    the sequence (as ``SQLiteStore`` does), each with two events of the size ours have
    appended with ``executemany`` and, ``with_tasks``, one work item settled and one
    created. ``batch`` transitions share each transaction, as the writer's batches did.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn)
        completed = '{"attempt":1,"result":null,"step":"s0"}'
        scheduled = '{"attempt":1,"run_after":null,"step":"s1"}'
        # (saga index, transition index): in the order a run produces them, interleaved
        # across sagas, so each batch touches many instances as the writer's do.
        work = [(i, k) for k in range(steps + 1) for i in range(sagas)]
        batch = max(1, batch)
        t0 = time.perf_counter()
        for lo in range(0, len(work), batch):
            conn.execute("BEGIN IMMEDIATE")
            events = []
            done = []
            new = []
            for i, k in work[lo : lo + batch]:
                saga_id = f"raw-{i}"
                now = time.time()
                if k == 0:
                    conn.execute(
                        "INSERT INTO saga_instances (saga_id, saga, version, status, sequence, "
                        "input, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (saga_id) DO NOTHING",
                        (saga_id, "bench", 1, "running", 2, '{"n":1}', now, now),
                    )
                else:
                    cur = conn.execute(
                        "UPDATE saga_instances SET status = ?, sequence = ?, updated_at = ? "
                        "WHERE saga_id = ? AND sequence = ?",
                        ("running", 2 * k + 2, now, saga_id, 2 * k),
                    )
                    assert cur.rowcount == 1
                events.append((saga_id, 2 * k + 1, "StepCompleted", 1, completed, now))
                events.append((saga_id, 2 * k + 2, "StepScheduled", 1, scheduled, now))
                if with_tasks:
                    if k:
                        done.append((f"{saga_id}/action/s{k - 1}/1",))
                    if k < steps:
                        new.append(
                            (f"{saga_id}/action/s{k}/1", saga_id, "action", f"s{k}", 1, None)
                        )
            conn.executemany(
                "INSERT INTO saga_events (saga_id, sequence, type, schema, data, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                events,
            )
            if done:
                conn.executemany("DELETE FROM saga_tasks WHERE task_id = ?", done)
            if new:
                conn.executemany(
                    "INSERT OR REPLACE INTO saga_tasks (task_id, saga_id, kind, step, attempt, "
                    "run_after) VALUES (?, ?, ?, ?, ?, ?)",
                    new,
                )
            conn.execute("COMMIT")
        return len(work) / (time.perf_counter() - t0)
    finally:
        conn.close()


# -- the Postgres baseline: raw asyncpg, our writes, our batching, no runtime ----------------


def _postgres_store(dsn: str, schema: str, **kwargs: Any) -> Any:
    from saga_adapters.postgres import PostgresStore

    return PostgresStore(dsn, schema=schema, **kwargs)


async def _raw_postgres_rate(dsn: str, schema: str, *, sagas: int, steps: int, batch: int) -> float:
    """Transitions per second of raw asyncpg doing the writer's work on one connection.

    The same writes as ``_raw_sqlite_rate`` (instance INSERT, then sequence-guarded UPDATEs,
    two events each, work items settled and created), ``batch`` transitions a transaction,
    each statement sent once per batch with ``executemany``.
    """
    import asyncpg

    async with _postgres_store(dsn, schema):  # creates the tables
        pass
    conn = await asyncpg.connect(dsn)
    try:
        q = f'"{schema}"'
        completed = '{"attempt":1,"result":null,"step":"s0"}'
        scheduled = '{"attempt":1,"run_after":null,"step":"s1"}'
        work = [(i, k) for k in range(steps + 1) for i in range(sagas)]
        batch = max(1, batch)
        t0 = time.perf_counter()
        for lo in range(0, len(work), batch):
            inserts, updates, events, done, new = [], [], [], [], []
            for i, k in work[lo : lo + batch]:
                saga_id = f"raw-{i}"
                now = time.time()
                if k == 0:
                    inserts.append((saga_id, "bench", 1, "running", 2, '{"n":1}', now, now))
                else:
                    updates.append(("running", 2 * k + 2, now, saga_id, 2 * k))
                events.append((saga_id, 2 * k + 1, "StepCompleted", 1, completed, now))
                events.append((saga_id, 2 * k + 2, "StepScheduled", 1, scheduled, now))
                if k:
                    done.append((saga_id, f"{saga_id}/action/s{k - 1}/1"))
                if k < steps:
                    new.append((saga_id, f"{saga_id}/action/s{k}/1", "action", f"s{k}", 1))
            async with conn.transaction():
                if inserts:
                    await conn.executemany(
                        f"INSERT INTO {q}.saga_instances (saga_id, saga, version, status, "
                        "sequence, input, created_at, updated_at) "
                        "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8) "
                        "ON CONFLICT (saga_id) DO NOTHING",
                        inserts,
                    )
                if updates:
                    await conn.executemany(
                        f"UPDATE {q}.saga_instances SET status = $1, sequence = $2, "
                        "updated_at = $3 WHERE saga_id = $4 AND sequence = $5",
                        updates,
                    )
                await conn.executemany(
                    f"INSERT INTO {q}.saga_events (saga_id, sequence, type, schema, data, "
                    "recorded_at) VALUES ($1, $2, $3, $4, $5::jsonb, $6)",
                    events,
                )
                if done:
                    await conn.executemany(
                        f"DELETE FROM {q}.saga_tasks WHERE saga_id = $1 AND task_id = $2", done
                    )
                if new:
                    await conn.executemany(
                        f"INSERT INTO {q}.saga_tasks (saga_id, task_id, kind, step, attempt) "
                        "VALUES ($1, $2, $3, $4, $5)",
                        new,
                    )
        return len(work) / (time.perf_counter() - t0)
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {q} CASCADE")
        await conn.close()


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _best_of(runs: int, fn: Callable[[int], float]) -> float:
    return max(fn(r) for r in range(runs))


# -- main ----------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", choices=("sqlite", "memory", "postgres"), default="sqlite")
    p.add_argument("--dsn", help="the Postgres server, for --store postgres")
    p.add_argument("--pool-size", type=int, default=10, help="Postgres connections (default 10)")
    p.add_argument("--sagas", type=int, default=1000, help="instances to run (default 1000)")
    p.add_argument("--steps", type=int, default=3, help="no-op steps per saga (default 3)")
    p.add_argument(
        "--concurrency", type=int, default=None, help="sagas in flight at once (default: all)"
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
        "--max-concurrent-steps",
        type=int,
        default=1000,
        help="the Coordinator's step limit (default 1000)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="sagas run (and not counted) before the measured ones (default 100)",
    )
    p.add_argument(
        "--baseline-runs",
        type=int,
        default=3,
        help="raw sqlite3 baseline: best of this many runs (default 3; 0 skips it)",
    )
    p.add_argument(
        "--tmpdir",
        default=None,
        help="where the temporary directory with the database goes (default: $TMPDIR)",
    )
    p.add_argument(
        "--gc-threshold",
        type=int,
        default=None,
        metavar="N",
        help="gc.set_threshold(N) for the whole run; 0 disables the cyclic GC "
        "(default: leave Python's 700)",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        default=None,
        help="write a cProfile of the measured phase (event loop thread) to FILE",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (else one field a line)"
    )
    args = p.parse_args(argv)
    if args.sagas < 1 or args.steps < 1:
        p.error("--sagas and --steps must be >= 1")
    if args.store == "postgres" and not args.dsn:
        p.error("--store postgres needs --dsn postgresql://...")
    if args.store == "postgres" and args.backend != "asyncio":
        p.error("the Postgres store runs on asyncio only")
    args.schema = f"saga_bench_{secrets.token_hex(4)}"
    if args.concurrency is None:
        args.concurrency = args.sagas
    if args.concurrency < 1:
        p.error("--concurrency must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    if args.gc_threshold == 0:
        gc.disable()
    elif args.gc_threshold is not None:
        gc.set_threshold(args.gc_threshold)
    result: dict[str, Any] = {
        "store": args.store,
        "backend": args.backend,
        "sagas": args.sagas,
        "steps": args.steps,
        "concurrency": args.concurrency,
        "max_concurrent_steps": args.max_concurrent_steps,
        "warmup": args.warmup,
    }
    if args.store == "sqlite":
        result["synchronous"] = args.synchronous
    with tempfile.TemporaryDirectory(prefix="saga-bench-", dir=args.tmpdir) as tmp:
        db = os.path.join(tmp, "bench.db")
        url = f"sqlite:///{db}?synchronous={args.synchronous}"
        try:
            result.update(anyio.run(_run_sagas, args, url, backend=args.backend))
        finally:
            if args.store == "postgres":
                anyio.run(_drop_schema, args.dsn, args.schema)
        if args.store == "postgres" and args.baseline_runs > 0:
            batch = round(result.get("commits_per_batch", 1))

            def raw_pg(run: int) -> float:
                return anyio.run(
                    lambda: _raw_postgres_rate(
                        args.dsn,
                        f"{args.schema}_raw{run}",
                        sagas=args.sagas,
                        steps=args.steps,
                        batch=batch,
                    )
                )

            minimal = _best_of(args.baseline_runs, raw_pg)
            result["baseline_batch"] = batch
            result["baseline_raw_asyncpg_txn_per_s"] = round(minimal, 1)
            result["ratio_to_baseline"] = round(result["transitions_per_s"] / minimal, 4)
        if args.store == "sqlite" and args.baseline_runs > 0:
            batch = round(result.get("commits_per_batch", 1))

            def raw(run: int, *, with_tasks: bool) -> float:
                return _raw_sqlite_rate(
                    os.path.join(tmp, f"raw-{with_tasks:d}-{run}.db"),
                    synchronous=args.synchronous,
                    sagas=args.sagas,
                    steps=args.steps,
                    batch=batch,
                    with_tasks=with_tasks,
                )

            minimal = _best_of(args.baseline_runs, lambda r: raw(r, with_tasks=False))
            full = _best_of(args.baseline_runs, lambda r: raw(r, with_tasks=True))
            result["baseline_batch"] = batch
            result["baseline_raw_sqlite_txn_per_s"] = round(minimal, 1)
            result["baseline_raw_sqlite_with_tasks_txn_per_s"] = round(full, 1)
            result["ratio_to_baseline"] = round(result["transitions_per_s"] / minimal, 4)
    result["gc_threshold"] = gc.get_threshold()[0] if gc.isenabled() else 0
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
