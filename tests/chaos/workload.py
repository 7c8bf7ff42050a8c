"""The chaos workload: one coordinator process, killed and restarted by the chaos runner.

    python -m tests.chaos.workload --url URL --ledger PATH --acked PATH --seed S \
        --batches R --per-batch B [--backend asyncio|trio]

It drives the sagas of batches ``0 .. R-1`` (``saga_ids``): it starts those whose id is
not in the acked file yet (appending each id to that file, fsync'd, once ``start()``
returned: an acknowledged start), waits until every one of them is terminal (or
suspended), prints ``DONE ...`` and exits 0. A start the store answers with "not now"
(``StoreUnavailableError``) is tried again, as the docs say it may be, and noted in
``start-retries.txt`` next to the acked file. Logs go to stderr, at ``WARNING`` unless
``SAGA_CHAOS_LOG`` names another level. Instances a killed run left unfinished are
taken back on entry: the node name is the same in every run, so its leases are ours.

What each saga does is a pure function of the seed and its id (``plan``): its definition
has 3 to 6 steps; each step's action fails its first 0-2 attempts, or fails for good
(every attempt, or at once with a non-retryable error); each compensation fails its first
0-1 attempts, or (rarely) for good. Every attempt of an action or compensation appends
one line to the ledger (``tests.chaos.ledger``), its side effect in the outside world,
with its outcome; the outcome of attempt *n* is the same in every run, so the runner knows
how each saga must end (``expected_status``) and what each recorded outcome must say
(``attempt_outcome``).

Hook, not there yet: durable sleeps and waits for signals are not in the library. When
they are, ``plan`` gains ``sleep`` and ``signal`` steps (a seeded duration; a signal the
workload sends some runs later, so that it crosses kills), and ``build`` turns them into
steps of those kinds.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from saga import Coordinator, LeasePolicy, RetryPolicy, SagaDefinition, Step, StepContext
from saga.errors import NotFoundError, StoreUnavailableError
from saga_adapters import open_store
from tests.chaos.ledger import AppendOnly, Ledger, read_lines

STEPS = ("reserve", "charge", "pack", "notify", "ship", "invoice")
#: The steps with a compensation (``notify`` and ``invoice`` have none).
COMPENSATED = frozenset({"reserve", "charge", "pack", "ship"})
MIN_STEPS = 3
ATTEMPTS = 3  # of an action, and of a compensation
NODE = "chaos-worker"
#: Short leases renewed often, so that lease renewal happens (and can crash) in a run.
LEASES = LeasePolicy(duration=2.0, renew_every=0.25, poll_interval=0.1)
#: Seconds between two starts: kills land among the starts, too.
START_GAP = 0.004
#: Tries of one start that the store answers with "not now" (StoreUnavailableError).
START_ATTEMPTS = 5


def saga_ids(batches: int, per_batch: int) -> list[str]:
    return [f"chaos-{b:03d}-{i:03d}" for b in range(batches) for i in range(per_batch)]


def definition_name(steps: int) -> str:
    return f"chaos_{steps}"


def plan(saga_id: str, seed: int) -> dict[str, Any]:
    """What ``saga_id`` does under ``seed``; it is also the saga's input.

    * ``steps``: how many of ``STEPS`` its definition has (3-6).
    * ``action[step]``: ``k`` (an int): its first ``k`` attempts fail, then it succeeds;
      ``"always"``: every attempt fails (retryable, so it runs out of attempts);
      ``"declined"``: the first attempt fails with a non-retryable error.
    * ``compensation[step]``: ``k``, or ``"always"``: the saga ends ``failed``.
    * ``delay_ms``: how long each attempt takes before its side effect.
    """
    dice = random.Random(f"{seed}/{saga_id}")  # str seeds hash the same in every process
    steps = dice.randint(MIN_STEPS, len(STEPS))
    names = STEPS[:steps]
    fails_at = dice.randrange(steps) if dice.random() < 0.35 else None
    action: dict[str, int | str] = {}
    compensation: dict[str, int | str] = {}
    for i, name in enumerate(names):
        if i == fails_at:
            action[name] = dice.choice(["always", "declined"])
        else:
            action[name] = dice.choice([0, 0, 0, 1, 2])
        if name in COMPENSATED:
            compensation[name] = "always" if dice.random() < 0.05 else dice.choice([0, 0, 1])
    return {
        "steps": steps,
        "action": action,
        "compensation": compensation,
        "delay_ms": dice.randint(1, 6),
    }


def attempt_outcome(plan: dict[str, Any], phase: str, step: str, attempt: int) -> str:
    """``"ok"`` or ``"error"``: what attempt ``attempt`` of ``step`` in ``phase`` does."""
    spec = plan[phase][step]
    if isinstance(spec, int):
        return "error" if attempt <= spec else "ok"
    return "error"


def expected_status(plan: dict[str, Any]) -> str:
    """How a saga with this plan ends, whatever crashes on the way."""
    done: list[str] = []
    for step in STEPS[: plan["steps"]]:
        if isinstance(plan["action"][step], str):  # fails for good: turn back
            for undo in reversed(done):
                if undo in COMPENSATED and plan["compensation"][undo] == "always":
                    return "failed"
            return "compensated"
        done.append(step)
    return "completed"


def expected_failures(plan: dict[str, Any], phase: str, step: str) -> int:
    """How many failed attempts of ``step`` in ``phase`` a saga records, if it runs it."""
    spec = plan[phase][step]
    return spec if isinstance(spec, int) else 1 if spec == "declined" else ATTEMPTS


class TransientError(Exception):
    """A failure that goes away when the attempt is made again (or not, for "always")."""


class Declined(Exception):
    """A failure that no retry will change: non-retryable."""


def build(ledger: Ledger) -> list[SagaDefinition]:
    """One definition per length, ``chaos_3`` .. ``chaos_6``."""

    async def attempt(ctx: StepContext) -> dict[str, Any]:
        # A little latency, so that attempts of different instances overlap.
        await anyio.sleep(ctx.input["delay_ms"] / 1000)
        outcome = attempt_outcome(ctx.input, ctx.phase.value, ctx.step, ctx.attempt)
        ledger.write(ctx, outcome)
        if outcome == "error":
            kind = (
                Declined if ctx.input[ctx.phase.value][ctx.step] == "declined" else TransientError
            )
            raise kind(f"{ctx.phase.value} of {ctx.step}, attempt {ctx.attempt}, failed")
        return {"step": ctx.step, "attempt": ctx.attempt}

    async def undo(ctx: StepContext) -> dict[str, Any]:
        assert ctx.result is not None, "a compensation must see its step's result"
        return await attempt(ctx)

    quick = {"initial_interval": 0.01, "max_interval": 0.05, "jitter": 0.5}
    retry = RetryPolicy(max_attempts=ATTEMPTS, non_retryable=[Declined], **quick)
    compensation_retry = RetryPolicy(max_attempts=ATTEMPTS, **quick)
    return [
        SagaDefinition(
            definition_name(n),
            [
                Step(
                    name=name,
                    action=attempt,
                    compensation=undo if name in COMPENSATED else None,
                    retry=retry,
                    compensation_retry=compensation_retry,
                )
                for name in STEPS[:n]
            ],
            version=1,
        )
        for n in range(MIN_STEPS, len(STEPS) + 1)
    ]


async def run(args: argparse.Namespace) -> Counter[str]:
    ledger = Ledger(args.ledger)
    acked_file = AppendOnly(args.acked)
    retries = AppendOnly(args.acked.with_name("start-retries.txt"))
    acked = set(read_lines(args.acked))
    definitions = build(ledger)
    counts: Counter[str] = Counter()

    async def drive(coordinator: Coordinator, saga_id: str, start: bool) -> None:
        if start:
            p = plan(saga_id, args.seed)
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    # Idempotent: an instance a killed run created (unacknowledged) is
                    # resumed, not restarted.
                    await coordinator.start(definition_name(p["steps"]), saga_id, p)
                    break
                except StoreUnavailableError as exc:
                    # "Not now": the start may or may not be recorded, and starting again
                    # is safe. Noted, so that the runner can report how often it happens.
                    retries.append(f"{saga_id} attempt {attempt}: {exc}".replace("\n", " "))
                    if attempt == START_ATTEMPTS:
                        raise
                    await anyio.sleep(0.05 * attempt)
            acked_file.append(saga_id)
        try:
            status = await coordinator.settle(saga_id)
        except NotFoundError:  # an acknowledged start the store lost: the runner says so
            counts["lost"] += 1
            return
        counts[status.value] += 1

    async with (
        open_store(args.url) as store,
        Coordinator(
            store, definitions, max_concurrent_steps=args.concurrency, node=NODE, leases=LEASES
        ) as coordinator,
        anyio.create_task_group() as tg,
    ):
        for saga_id in saga_ids(args.batches, args.per_batch):
            start = saga_id not in acked
            tg.start_soon(drive, coordinator, saga_id, start)
            if start:
                await anyio.sleep(START_GAP)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--acked", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--batches", type=int, required=True)
    parser.add_argument("--per-batch", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, os.environ.get("SAGA_CHAOS_LOG", "WARNING")),
        format=f"%(asctime)s pid={os.getpid()} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    counts = anyio.run(run, args, backend=args.backend)
    summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"DONE pid={os.getpid()} {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
