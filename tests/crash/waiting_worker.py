"""A coordinator process whose sagas sleep and wait for signals; ``test_waiting_kill.py``
kills it with SIGKILL and runs it again until every saga is terminal.

    python tests/crash/waiting_worker.py --url URL --ledger PATH [--backend asyncio|trio] \
        [--passivate-after SECONDS|never]

It starts every saga of ``SAGAS`` (idempotently: a killed run's instances are taken up
again), waits until each one is terminal, prints ``DONE ...`` and exits 0. The node name
is the same in every run, so each run takes the previous run's leases back at once. Its
actors passivate after ``--passivate-after`` seconds idle (default ``PASSIVATE_AFTER``):
then the sleeping and waiting instances are held by nobody, and the lease keeper's alarm
claims them when their timer is due (or a signal is in the inbox). With ``never`` they
stay in memory and their timers fire there.

The sagas, one definition each (``build``):

* ``napper``: reserve, ``Sleep(FIRST_NAP)``, note, ``Sleep(NAP)``, finish;
* ``approval``: reserve, wait for ``approve``, ship (its ledger line carries the payload);
* ``twice``: two waits for ``pay`` in a row, then book: each takes one signal;
* ``early``: wait for ``hold``, ``Sleep(NAP)``, wait for ``go``, ship: the test sends ``go``
  before ``hold``, so it arrives before its wait is reached;
* ``deadline``: reserve, wait for ``never`` at most ``DEADLINE`` s (then compensate), ship;
* ``patient``: wait for ``never`` at most ``DEADLINE`` s (then go on with
  ``TIMEOUT_RESULT``), ship.

No signal for ``never`` is ever sent: those two end by their timeout. Every attempt of an
action or a compensation appends one line to the ledger (``tests.chaos.ledger``), with
``at``, the time it ran (``time.time()``, the clock the coordinator runs on), and for a
step after a signal wait, ``got``: what the wait gave it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from saga import (
    Coordinator,
    LeasePolicy,
    OnTimeout,
    SagaDefinition,
    Sleep,
    Step,
    StepContext,
    WaitForSignal,
)
from saga_adapters import open_store
from tests.chaos.ledger import Ledger

NODE = "waiting-worker"
#: Seconds of the sleeps, and of the signal waits' timeouts: short, real (SystemClock).
#: The first sleep and the timeouts are the longest: the test kills the first run once
#: every saga waits and its actor has passivated, which must happen before they run out.
FIRST_NAP = 2.0
NAP = 1.0
DEADLINE = 2.0
TIMEOUT_RESULT = {"timed_out": True}
#: Seconds an actor with nothing to do stays in memory.
PASSIVATE_AFTER = 0.2
#: The default lease, renewed as usual; the inbox and the store are looked at often,
#: so that a signal another process sent is picked up quickly.
LEASES = LeasePolicy(poll_interval=0.05)

#: Saga id -> definition name. The ids are the same in every run.
SAGAS: dict[str, str] = {
    **{f"napper-{i}": "napper" for i in range(4)},
    **{f"approval-{i}": "approval" for i in range(3)},
    "twice-0": "twice",
    "early-0": "early",
    "deadline-0": "deadline",
    "patient-0": "patient",
}
EXPECTED_STATUS = {
    "napper": "completed",
    "approval": "completed",
    "twice": "completed",
    "early": "completed",
    "deadline": "compensated",
    "patient": "completed",
}
#: Per definition: its sleeps, and its signal waits (step -> signal name).
SLEEPS = {"napper": ("nap1", "nap2"), "early": ("nap",)}
WAITS = {
    "approval": {"approve": "approve"},
    "twice": {"first": "pay", "second": "pay"},
    "early": {"hold": "hold", "go": "go"},
    "deadline": {"wait": "never"},
    "patient": {"wait": "never"},
}
#: The steps with a compensation.
COMPENSATED = ("reserve",)


def build(ledger: Ledger) -> list[SagaDefinition]:
    async def act(ctx: StepContext) -> dict[str, Any]:
        got = {
            step: ctx.results[step]
            for step in ("approve", "second", "go", "wait")
            if step in ctx.results
        }
        ledger.write(ctx, "ok", at=time.time(), got=got)
        return {"step": ctx.step}

    async def undo(ctx: StepContext) -> None:
        assert ctx.result is not None, "a compensation must see its step's result"
        ledger.write(ctx, "ok", at=time.time())

    def reserve() -> Step:
        return Step(name="reserve", action=act, compensation=undo)

    return [
        SagaDefinition(
            "napper",
            [
                reserve(),
                Step(name="nap1", wait=Sleep(FIRST_NAP)),
                Step(name="note", action=act),
                Step(name="nap2", wait=Sleep(NAP)),
                Step(name="finish", action=act),
            ],
        ),
        SagaDefinition(
            "approval",
            [
                reserve(),
                Step(name="approve", wait=WaitForSignal("approve")),
                Step(name="ship", action=act),
            ],
        ),
        SagaDefinition(
            "twice",
            [
                Step(name="first", wait=WaitForSignal("pay")),
                Step(name="second", wait=WaitForSignal("pay")),
                Step(name="book", action=act),
            ],
        ),
        SagaDefinition(
            "early",
            [
                Step(name="hold", wait=WaitForSignal("hold")),
                Step(name="nap", wait=Sleep(NAP)),
                Step(name="go", wait=WaitForSignal("go")),
                Step(name="ship", action=act),
            ],
        ),
        SagaDefinition(
            "deadline",
            [
                reserve(),
                Step(
                    name="wait",
                    wait=WaitForSignal("never", timeout=DEADLINE, on_timeout=OnTimeout.COMPENSATE),
                ),
                Step(name="ship", action=act),
            ],
        ),
        SagaDefinition(
            "patient",
            [
                Step(
                    name="wait",
                    wait=WaitForSignal(
                        "never",
                        timeout=DEADLINE,
                        on_timeout=OnTimeout.CONTINUE,
                        timeout_result=TIMEOUT_RESULT,
                    ),
                ),
                Step(name="ship", action=act),
            ],
        ),
    ]


async def run(args: argparse.Namespace) -> Counter[str]:
    definitions = build(Ledger(args.ledger))
    counts: Counter[str] = Counter()

    async def drive(coordinator: Coordinator, saga_id: str) -> None:
        # Idempotent: an instance a killed run started is taken up, not started again.
        handle = await coordinator.start(SAGAS[saga_id], saga_id, {"id": saga_id})
        outcome = await handle.outcome()
        counts[outcome.status.value] += 1

    async with (
        open_store(args.url) as store,
        Coordinator(
            store,
            definitions,
            node=NODE,
            leases=LEASES,
            passivate_after=args.passivate_after,
        ) as coordinator,
        anyio.create_task_group() as tg,
    ):
        for saga_id in SAGAS:
            tg.start_soon(drive, coordinator, saga_id)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--passivate-after",
        type=lambda v: None if v == "never" else float(v),
        default=PASSIVATE_AFTER,
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s pid={os.getpid()} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    counts = anyio.run(run, args, backend=args.backend)
    summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"DONE pid={os.getpid()} {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
