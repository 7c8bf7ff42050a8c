"""A coordinator process whose sagas run parallel groups and child sagas;
``test_structure_kill.py`` kills it with SIGKILL and runs it again until every saga is
terminal.

    python tests/crash/structure_worker.py --url URL --ledger PATH --wave N \
        [--backend asyncio|trio] [--passivate-after SECONDS|never]

It starts every top-level saga of ``SAGAS`` whose wave is at most ``--wave``
(idempotently: a killed run's instances are taken up again), waits until every instance
in the store (children included) is terminal, prints ``DONE ...`` and exits 0. The node
name is the same in every run, so each run takes the previous run's leases back at once.

The sagas (``build``):

* ``fan_ok``: reserve, ``Parallel("fan", [m1, m2, m3], limit=2)``, finish: completes;
* ``fan_member_fails``: the same, but ``m2`` fails for good; ``m1`` runs on until the
  saga turned back (it reads the store), then completes: it must still be undone, and
  ``m3`` must never begin: compensates;
* ``fan_after_fails``: reserve, the group, charge, then bill fails for good: charge, the
  three members, then reserve are undone;
* ``parent_ok``: reserve, ship (``ChildSaga("child_ok")``), notify: completes with its
  child's results;
* ``parent_doomed``: reserve, ship (``ChildSaga("child_fail")``: its label fails for
  good): the child compensates, so does the parent;
* ``parent_waits``: reserve, ship (``ChildSaga("child_wait")``: pack, then a wait for
  ``approve``, then label), notify: the test signals one child and cancels the other's
  parent;
* ``chain``: reserve, ship (``ChildSaga("middle")``: plan, sub (``ChildSaga
  ("child_wait")``), note), notify: parent, child, grandchild.

Every attempt of an action or a compensation appends a line to the ledger
(``tests.chaos.ledger``) with ``at`` (``time.time()``, the coordinator's clock); a member
of a group also writes a ``begin`` line when its attempt begins, before it does anything.
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
    ChildSaga,
    Coordinator,
    LeasePolicy,
    Parallel,
    ParentClose,
    SagaDefinition,
    Step,
    StepContext,
    WaitForSignal,
)
from saga._store.port import ACTIVE_STATUSES
from saga.errors import NonRetryableError
from saga_adapters import open_store
from tests.chaos.ledger import Ledger

NODE = "structure-worker"
#: Seconds an actor with nothing to do stays in memory.
PASSIVATE_AFTER = 0.2
#: The store and the inbox are looked at often: commands the test sends are picked up
#: quickly.
LEASES = LeasePolicy(poll_interval=0.05)
#: Bound (not synchronisation) on how long ``m1`` of ``fan_member_fails`` waits for its
#: saga to turn back.
TURN_WITHIN = 10.0
POLL = 0.01

#: Top-level saga id -> (definition name, wave). Run N starts the sagas of waves <= N.
SAGAS: dict[str, tuple[str, int]] = {
    "fan-ok-0": ("fan_ok", 1),
    "fan-ok-1": ("fan_ok", 1),
    "fan-mf-0": ("fan_member_fails", 1),
    "fan-mf-1": ("fan_member_fails", 1),
    "fan-af-0": ("fan_after_fails", 1),
    "p-ok-0": ("parent_ok", 1),
    "p-fail-0": ("parent_doomed", 1),
    "p-wait-0": ("parent_waits", 1),  # cancelled by the test while its child waits
    "p-wait-1": ("parent_waits", 1),  # its child gets ``approve``
    "chain-0": ("chain", 1),  # cancelled by the test while its grandchild waits
    "chain-1": ("chain", 1),  # its grandchild gets ``approve``
    "fan-ok-2": ("fan_ok", 2),
    "fan-mf-2": ("fan_member_fails", 2),
    "fan-af-1": ("fan_after_fails", 2),
    "p-ok-1": ("parent_ok", 2),
    "p-fail-1": ("parent_doomed", 2),
}
CANCELLED = ("p-wait-0", "chain-0")
SIGNALLED = ("p-wait-1", "chain-1")
EXPECTED_STATUS = {
    "fan_ok": "completed",
    "fan_member_fails": "compensated",
    "fan_after_fails": "compensated",
    "parent_ok": "completed",
    "parent_doomed": "compensated",
    "parent_waits": "completed",
    "chain": "completed",
}
#: Per definition: its parallel group's members, in order.
MEMBERS = ("m1", "m2", "m3")
GROUPED = ("fan_ok", "fan_member_fails", "fan_after_fails")
#: Per definition: its child steps (step -> child definition).
CHILDREN: dict[str, dict[str, str]] = {
    "parent_ok": {"ship": "child_ok"},
    "parent_doomed": {"ship": "child_fail"},
    "parent_waits": {"ship": "child_wait"},
    "chain": {"ship": "middle"},
    "middle": {"sub": "child_wait"},
}
#: Per definition: its signal waits (step -> signal name).
WAITS = {"child_wait": {"approve": "approve"}}
#: The steps with a compensation, in every definition.
COMPENSATED = ("reserve", *MEMBERS, "charge", "pack", "plan")


def child_input(ctx: StepContext) -> dict[str, str]:
    """A pure function of the parent's context, as ``ChildSaga.input`` must be."""
    return {"parent": ctx.saga_id, "step": ctx.step}


def build(ledger: Ledger, store: Any) -> list[SagaDefinition]:
    async def turned_back(saga_id: str) -> None:
        """Until the saga's history says it turned back (``m2`` failed meanwhile)."""
        with anyio.move_on_after(TURN_WITHIN):
            while True:
                loaded = await store.load(saga_id)
                if loaded is not None and any(r.type == "CompensationTriggered" for r in loaded[1]):
                    return
                await anyio.sleep(POLL)

    async def act(ctx: StepContext) -> dict[str, Any]:
        ledger.write(ctx, "ok", at=time.time())
        return {"step": ctx.step, "saga": ctx.saga_id}

    async def fail(ctx: StepContext) -> None:
        ledger.write(ctx, "error", at=time.time())
        raise NonRetryableError(f"{ctx.step} refused")

    async def undo(ctx: StepContext) -> None:
        assert ctx.result is not None, "a compensation must see its step's result"
        ledger.write(ctx, "ok", at=time.time())

    def member(name: str, *, lingers: bool = False, fails: bool = False) -> Step:
        async def run(ctx: StepContext) -> dict[str, Any]:
            ledger.write(ctx, "begin", at=time.time())
            if lingers:
                await turned_back(ctx.saga_id)
            if fails:
                await fail(ctx)
            return await act(ctx)

        return Step(name=name, action=run, compensation=undo)

    def step(name: str, *, fails: bool = False, undone: bool = False) -> Step:
        return Step(name=name, action=fail if fails else act, compensation=undo if undone else None)

    def fan(*, m2_fails: bool = False) -> Parallel:
        return Parallel(
            "fan",
            [member("m1", lingers=m2_fails), member("m2", fails=m2_fails), member("m3")],
            limit=2,
        )

    def child(name: str, saga: str) -> Step:
        return Step(
            name=name,
            wait=ChildSaga(saga, input=child_input, on_parent_close=ParentClose.CANCEL),
        )

    reserve = step("reserve", undone=True)
    return [
        SagaDefinition("fan_ok", [reserve, fan(), step("finish")]),
        SagaDefinition("fan_member_fails", [reserve, fan(m2_fails=True), step("finish")]),
        SagaDefinition(
            "fan_after_fails",
            [reserve, fan(), step("charge", undone=True), step("bill", fails=True)],
        ),
        SagaDefinition("child_ok", [step("pack", undone=True), step("label")]),
        SagaDefinition("child_fail", [step("pack", undone=True), step("label", fails=True)]),
        SagaDefinition(
            "child_wait",
            [
                step("pack", undone=True),
                Step(name="approve", wait=WaitForSignal("approve")),
                step("label"),
            ],
        ),
        SagaDefinition(
            "middle", [step("plan", undone=True), child("sub", "child_wait"), step("note")]
        ),
        SagaDefinition("parent_ok", [reserve, child("ship", "child_ok"), step("notify")]),
        SagaDefinition("parent_doomed", [reserve, child("ship", "child_fail")]),
        SagaDefinition("parent_waits", [reserve, child("ship", "child_wait"), step("notify")]),
        SagaDefinition("chain", [reserve, child("ship", "middle"), step("notify")]),
    ]


async def run(args: argparse.Namespace) -> Counter[str]:
    counts: Counter[str] = Counter()

    async def drive(coordinator: Coordinator, saga_id: str) -> None:
        # Idempotent: an instance a killed run started is taken up, not started again.
        handle = await coordinator.start(SAGAS[saga_id][0], saga_id, {"id": saga_id})
        outcome = await handle.outcome()
        counts[outcome.status.value] += 1

    async with (
        open_store(args.url) as store,
        Coordinator(
            store,
            build(Ledger(args.ledger), store),
            node=NODE,
            leases=LEASES,
            passivate_after=args.passivate_after,
        ) as coordinator,
    ):
        async with anyio.create_task_group() as tg:
            for saga_id, (_, wave) in SAGAS.items():
                if wave <= args.wave:
                    tg.start_soon(drive, coordinator, saga_id)
        # A cancelled parent ends once its children heard of it, not once they ended:
        # wait for every instance, children and grandchildren too.
        while True:
            active = [r.saga_id for r in await store.instances() if r.status in ACTIVE_STATUSES]
            if not active:
                break
            for saga_id in active:
                await coordinator.handle(saga_id).outcome()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--wave", type=int, required=True)
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
