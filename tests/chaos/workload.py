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
has 3 to 6 action steps; each one fails its first 0-2 attempts, or fails for good
(every attempt, or at once with a non-retryable error); each compensation fails its first
0-1 attempts, or (rarely) for good. Every attempt of an action or compensation appends
one line to the ledger (``tests.chaos.ledger``), its side effect in the outside world,
with its outcome; the outcome of attempt *n* is the same in every run, so the runner knows
how each saga must end (``expected_status``) and what each recorded outcome must say
(``attempt_outcome``).

Waits: some sagas also sleep (``nap``: ``Sleep`` of a seeded 30-300 ms) and some wait for
a signal (``approval``: ``WaitForSignal("go")``, one wait in four with a timeout after
which it goes on with ``TIMEOUT_RESULT``), each at a seeded place among the actions (``plan``). The
workload sends the signal itself, with the stable message id ``signal_id(saga_id)``: at
once after the start (often before the wait is reached), or once the saga waits for it
(``Coordinator.query``); and for some sagas a second time with the same id, in the next
run that drives it, so that the repeat crosses a kill. Each send that returned is appended
to ``signalled.txt`` next to the acked file (fsync'd), so a run knows what earlier runs
sent; a send the saga refused because it had ended (it failed before its wait) is
noted in ``signal-refused.txt``. Actors passivate after ``PASSIVATE_AFTER`` s idle, so
that sleeping and waiting instances sleep in the store and are claimed back by the lease
keeper's alarm (or by a signal) while kills land.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio

from saga import (
    Coordinator,
    LeasePolicy,
    OnTimeout,
    RetryPolicy,
    SagaDefinition,
    Sleep,
    Status,
    Step,
    StepContext,
    WaitForSignal,
)
from saga.errors import CommandRejected, NotFoundError, StoreUnavailableError
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
#: Tries of one start (or signal) that the store answers with "not now"
#: (StoreUnavailableError).
START_ATTEMPTS = 5
#: The waiting steps' names: a durable sleep, and a wait for the signal ``SIGNAL``.
SLEEP_STEP = "nap"
SIGNAL_STEP = "approval"
SIGNAL = "go"
#: Sleeps last one of these (milliseconds); a signal wait's timeout, when it has one, is
#: ``SIGNAL_TIMEOUT`` s, after which it goes on with ``TIMEOUT_RESULT``.
SLEEP_MS = (30, 80, 150, 300)
SIGNAL_TIMEOUT = 0.25
TIMEOUT_RESULT = {"timed_out": True}
#: Seconds an idle actor (sleeping, waiting for its signal) stays in memory.
PASSIVATE_AFTER = 0.1
#: Seconds between two looks at a saga whose signal is sent once it waits for it.
QUERY_EVERY = 0.02


def saga_ids(batches: int, per_batch: int) -> list[str]:
    return [f"chaos-{b:03d}-{i:03d}" for b in range(batches) for i in range(per_batch)]


def definition_name(plan: dict[str, Any]) -> str:
    """The definition a plan runs: its number of actions, and where it waits (and how)."""
    name = f"chaos_{plan['steps']}"
    if plan["sleep"] is not None:
        name += f"_n{plan['sleep']['after']}x{plan['sleep']['ms']}"
    if plan["signal"] is not None:
        name += f"_w{plan['signal']['after']}{'t' if plan['signal']['timeout'] else ''}"
    return name


def signal_id(saga_id: str) -> str:
    """The message id of the saga's signal: the same in every send, in every run."""
    return f"{saga_id}/{SIGNAL}"


def signal_payload(saga_id: str) -> dict[str, Any]:
    return {"approved": saga_id}


def step_names(plan: dict[str, Any]) -> list[str]:
    """The saga's steps in order: its actions, with its waits in their places."""
    names: list[str] = []
    for i, action in enumerate([*STEPS[: plan["steps"]], None]):
        if plan["sleep"] is not None and plan["sleep"]["after"] == i:
            names.append(SLEEP_STEP)
        if plan["signal"] is not None and plan["signal"]["after"] == i:
            names.append(SIGNAL_STEP)
        if action is not None:
            names.append(action)
    return names


def waits(plan: dict[str, Any]) -> dict[str, str]:
    """The saga's waiting steps: ``{step: "sleep" | "signal"}``."""
    out = {}
    if plan["sleep"] is not None:
        out[SLEEP_STEP] = "sleep"
    if plan["signal"] is not None:
        out[SIGNAL_STEP] = "signal"
    return out


def plan(saga_id: str, seed: int) -> dict[str, Any]:
    """What ``saga_id`` does under ``seed``; it is also the saga's input.

    * ``steps``: how many of ``STEPS`` its definition has (3-6).
    * ``action[step]``: ``k`` (an int): its first ``k`` attempts fail, then it succeeds;
      ``"always"``: every attempt fails (retryable, so it runs out of attempts);
      ``"declined"``: the first attempt fails with a non-retryable error.
    * ``compensation[step]``: ``k``, or ``"always"``: the saga ends ``failed``.
    * ``delay_ms``: how long each attempt takes before its side effect.
    * ``sleep``: ``None``, or ``{"after": k, "ms": m}``: after its first ``k`` actions it
      sleeps ``m`` ms (``SLEEP_STEP``).
    * ``signal``: ``None``, or ``{"after": k, "send": "early" | "late", "twice": bool,
      "timeout": bool}``: after its first ``k`` actions (and the sleep, if at the same
      place) it waits for ``SIGNAL`` (``SIGNAL_STEP``), which the workload sends at once
      after the start (``early``) or once the saga waits (``late``), and for ``twice``
      again, with the same message id, in the next run that drives it; with ``timeout``
      the wait goes on with ``TIMEOUT_RESULT`` after ``SIGNAL_TIMEOUT`` s, so the signal
      and the timeout race.
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
    delay_ms = dice.randint(1, 6)
    # Drawn after everything above, so that the actions' plans are what they were before
    # waits existed.
    sleep = None
    if dice.random() < 0.4:
        sleep = {"after": dice.randint(0, steps), "ms": dice.choice(SLEEP_MS)}
    signal = None
    if dice.random() < 0.4:
        signal = {
            "after": dice.randint(0, steps),
            "send": dice.choice(["early", "late"]),
            "twice": dice.random() < 0.5,
            "timeout": dice.random() < 0.25,
        }
    return {
        "steps": steps,
        "action": action,
        "compensation": compensation,
        "delay_ms": delay_ms,
        "sleep": sleep,
        "signal": signal,
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


def build(ledger: Ledger, plans: Iterable[dict[str, Any]]) -> list[SagaDefinition]:
    """The definitions the plans run (``definition_name``), one each."""

    async def attempt(ctx: StepContext) -> dict[str, Any]:
        # A little latency, so that attempts of different instances overlap.
        await anyio.sleep(ctx.input["delay_ms"] / 1000)
        outcome = attempt_outcome(ctx.input, ctx.phase.value, ctx.step, ctx.attempt)
        # ``at``: when the side effect happened, on the clock the coordinator runs on (a
        # step after a sleep must not run before the sleep's end).
        ledger.write(ctx, outcome, at=time.time())
        if outcome == "error":
            kind = (
                Declined if ctx.input[ctx.phase.value][ctx.step] == "declined" else TransientError
            )
            raise kind(f"{ctx.phase.value} of {ctx.step}, attempt {ctx.attempt}, failed")
        return {"step": ctx.step, "attempt": ctx.attempt}

    async def undo(ctx: StepContext) -> dict[str, Any]:
        assert ctx.result is not None, "a compensation must see its step's result"
        return await attempt(ctx)

    quick: dict[str, Any] = {"initial_interval": 0.01, "max_interval": 0.05, "jitter": 0.5}
    retry = RetryPolicy(max_attempts=ATTEMPTS, non_retryable=[Declined], **quick)
    compensation_retry = RetryPolicy(max_attempts=ATTEMPTS, **quick)

    def step(p: dict[str, Any], name: str) -> Step:
        if name == SLEEP_STEP:
            return Step(name=name, wait=Sleep(p["sleep"]["ms"] / 1000))
        if name == SIGNAL_STEP:
            timeout = SIGNAL_TIMEOUT if p["signal"]["timeout"] else None
            wait = WaitForSignal(
                SIGNAL,
                timeout=timeout,
                on_timeout=OnTimeout.CONTINUE,
                timeout_result=TIMEOUT_RESULT,
            )
            return Step(name=name, wait=wait)
        return Step(
            name=name,
            action=attempt,
            compensation=undo if name in COMPENSATED else None,
            retry=retry,
            compensation_retry=compensation_retry,
        )

    shapes = {definition_name(p): p for p in plans}
    return [
        SagaDefinition(name, [step(p, s) for s in step_names(p)], version=1)
        for name, p in sorted(shapes.items())
    ]


async def run(args: argparse.Namespace) -> Counter[str]:
    ledger = Ledger(args.ledger)
    acked_file = AppendOnly(args.acked)
    retries = AppendOnly(args.acked.with_name("start-retries.txt"))
    signalled_file = AppendOnly(args.acked.with_name("signalled.txt"))
    refused_file = AppendOnly(args.acked.with_name("signal-refused.txt"))
    acked = set(read_lines(args.acked))
    signalled = Counter(read_lines(args.acked.with_name("signalled.txt")))
    ids = saga_ids(args.batches, args.per_batch)
    plans = {saga_id: plan(saga_id, args.seed) for saga_id in ids}
    definitions = build(ledger, plans.values())
    counts: Counter[str] = Counter()

    async def not_now(what: str, attempt: int, exc: StoreUnavailableError) -> None:
        # "Not now": it may or may not be recorded, and doing it again is safe. Noted,
        # so that the runner can report how often it happens.
        retries.append(f"{what} attempt {attempt}: {exc}".replace("\n", " "))
        if attempt == START_ATTEMPTS:
            raise exc
        await anyio.sleep(0.05 * attempt)

    async def reached(coordinator: Coordinator, saga_id: str) -> None:
        """Until the saga waits for its signal, or will never wait for it."""
        while True:
            view = await coordinator.query(saga_id)
            if view.status is not Status.RUNNING or SIGNAL_STEP in view.completed:
                return
            if any(w.signal == SIGNAL for w in view.waits):
                return
            await anyio.sleep(QUERY_EVERY)

    async def send_signal(coordinator: Coordinator, saga_id: str) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await coordinator.signal(
                    saga_id, SIGNAL, signal_payload(saga_id), message_id=signal_id(saga_id)
                )
                break
            except CommandRejected as exc:  # it ended before its wait (a failed step)
                refused_file.append(f"{saga_id}: {exc}".replace("\n", " "))
                return
            except StoreUnavailableError as exc:
                await not_now(f"signal {saga_id}", attempt, exc)
        signalled_file.append(saga_id)

    async def signal(coordinator: Coordinator, saga_id: str) -> None:
        spec = plans[saga_id]["signal"]
        if spec is None:
            return
        if signalled[saga_id] == 0:
            if spec["send"] == "late":
                await reached(coordinator, saga_id)
            await send_signal(coordinator, saga_id)
        elif signalled[saga_id] == 1 and spec["twice"]:
            # The same message id again, in a later run than the first send: the repeat
            # crosses the kill in between.
            await send_signal(coordinator, saga_id)

    async def drive(coordinator: Coordinator, saga_id: str, start: bool) -> None:
        p = plans[saga_id]
        if start:
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    # Idempotent: an instance a killed run created (unacknowledged) is
                    # resumed, not restarted.
                    await coordinator.start(definition_name(p), saga_id, p)
                    break
                except StoreUnavailableError as exc:
                    await not_now(saga_id, attempt, exc)
            acked_file.append(saga_id)
        try:
            await signal(coordinator, saga_id)
            status = await coordinator.settle(saga_id)
        except NotFoundError:  # an acknowledged start the store lost: the runner says so
            counts["lost"] += 1
            return
        counts[status.value] += 1

    async with (
        open_store(args.url) as store,
        Coordinator(
            store,
            definitions,
            max_concurrent_steps=args.concurrency,
            node=NODE,
            leases=LEASES,
            passivate_after=PASSIVATE_AFTER,
        ) as coordinator,
        anyio.create_task_group() as tg,
    ):
        for saga_id in ids:
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
