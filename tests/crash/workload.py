"""A crash workload: run N order sagas on a SQLite file, appending side effects to a ledger.

Run as a real process by ``test_kill.py``, which kills it with SIGKILL and runs it again
until every saga is terminal:

    python tests/crash/workload.py --db PATH --ledger PATH --sagas N --seed S \
        [--concurrency C] [--backend asyncio|trio]

Every attempt of a step's action or compensation appends one JSON line to the ledger
(``saga_id, step, phase, attempt, idempotency_key, pid, outcome``; see
``tests.chaos.ledger``), flushed and fsync'd: it stands for the effect in the outside
world. The test arms the ``step_effect_done`` and ``compensation_done`` crash points
(``saga._crashpoints``), so that right after the side effect the process may kill
itself: a crash before the coordinator has recorded the attempt's outcome.

What each saga does is fixed by its id and the seed (see ``plan``), so every run of the
script, killed or not, starts the same instances with the same input, and the test can
say how each one must end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from saga import Coordinator, RetryPolicy, SagaDefinition, Step, StepContext
from saga_adapters.sqlite import SQLiteStore
from tests.chaos.ledger import Ledger

SAGA = "crash_order"

# The steps are reserve, charge, notify, ship; these two have a compensation.
COMPENSATED_STEPS = ("reserve", "charge")


def saga_ids(n: int) -> list[str]:
    return [f"order-{i:04d}" for i in range(n)]


def plan(saga_id: str, seed: int) -> dict[str, Any]:
    """What instance ``saga_id`` does under ``seed``: deterministic, and its saga input.

    * ``charge_failures``: how many attempts of ``charge`` fail transiently first (0-2).
    * ``refund_failures``: the same for the compensation of ``charge`` (0-1).
    * ``ship_fails``: ``ship``, the last step, fails every attempt, so that the saga runs
      out of retries and compensates ``charge`` and ``reserve`` (``notify`` has no
      compensation).
    """
    digest = hashlib.blake2b(f"{seed}/{saga_id}".encode(), digest_size=8).digest()
    return {
        "charge_failures": digest[0] % 3,
        "refund_failures": digest[1] % 2,
        "ship_fails": digest[2] % 3 == 0,
        "qty": 1 + digest[3] % 5,
        "delay_ms": 1 + digest[4] % 6,
    }


def expected_status(saga_id: str, seed: int) -> str:
    return "compensated" if plan(saga_id, seed)["ship_fails"] else "completed"


def expected_side_effects(saga_id: str, seed: int) -> dict[str, int]:
    """How many ledger lines of each phase the instance writes when nothing crashes."""
    p = plan(saga_id, seed)
    actions = 1 + (p["charge_failures"] + 1) + 1 + (2 if p["ship_fails"] else 1)
    compensations = (p["refund_failures"] + 1) + 1 if p["ship_fails"] else 0
    return {"action": actions, "compensation": compensations}


class TransientError(Exception):
    """A failure that goes away when the attempt is made again."""


def build(ledger: Ledger) -> SagaDefinition:
    async def effect(ctx: StepContext, *, fail: bool) -> dict[str, Any]:
        # A little latency, so that attempts of different instances overlap.
        await anyio.sleep(ctx.input["delay_ms"] / 1000)
        ledger.write(ctx, "error" if fail else "ok")
        if fail:
            raise TransientError(f"{ctx.step} {ctx.phase.value} attempt {ctx.attempt} failed")
        return {"step": ctx.step, "key": ctx.idempotency_key[:8]}

    async def reserve(ctx: StepContext) -> dict[str, Any]:
        return await effect(ctx, fail=False)

    async def release(ctx: StepContext) -> dict[str, Any]:
        assert ctx.result is not None, "a compensation must see its step's result"
        return await effect(ctx, fail=False)

    async def charge(ctx: StepContext) -> dict[str, Any]:
        return await effect(ctx, fail=ctx.attempt <= ctx.input["charge_failures"])

    async def refund(ctx: StepContext) -> dict[str, Any]:
        assert ctx.result is not None, "a compensation must see its step's result"
        return await effect(ctx, fail=ctx.attempt <= ctx.input["refund_failures"])

    async def notify(ctx: StepContext) -> dict[str, Any]:
        return await effect(ctx, fail=False)

    async def ship(ctx: StepContext) -> dict[str, Any]:
        return await effect(ctx, fail=ctx.input["ship_fails"])

    quick = RetryPolicy(max_attempts=4, initial_interval=0.01, max_interval=0.05, jitter=0.5)
    return SagaDefinition(
        SAGA,
        [
            Step(name="reserve", action=reserve, compensation=release),
            Step(
                name="charge",
                action=charge,
                compensation=refund,
                retry=quick,
                compensation_retry=quick,
            ),
            Step(name="notify", action=notify),
            Step(
                name="ship",
                action=ship,
                retry=RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=0.5),
            ),
        ],
        version=1,
    )


async def run(args: argparse.Namespace) -> dict[str, int]:
    definition = build(Ledger(args.ledger))
    counts: dict[str, int] = {}

    async def one(coordinator: Coordinator, saga_id: str) -> None:
        # Idempotent: an instance a killed run started already is resumed, not restarted.
        handle = await coordinator.start(definition, saga_id, plan(saga_id, args.seed))
        outcome = await handle.outcome()
        counts[outcome.status.value] = counts.get(outcome.status.value, 0) + 1

    async with (
        SQLiteStore(args.db) as store,
        # One process slot, restarted after each kill: a stable node name lets each run
        # take the previous run's instances back at once, not after their leases expire.
        Coordinator(
            store, [definition], max_concurrent_steps=args.concurrency, node="crash-worker"
        ) as coordinator,
        anyio.create_task_group() as tg,
    ):
        for saga_id in saga_ids(args.sagas):
            tg.start_soon(one, coordinator, saga_id)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--sagas", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    # Few attempts at once, so that a run interleaves side effects and their commits
    # rather than re-running every in-flight attempt before recording any outcome.
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args(argv)
    counts = anyio.run(run, args, backend=args.backend)
    summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"DONE pid={os.getpid()} {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
