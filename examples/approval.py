"""Expense approval: reserve the budget, wait for the manager, pay, tell the employee.

A saga that waits for a person. The manager's answer comes as a signal (from a web
handler, say); without an answer in time, the reservation is released. Four claims run on
a SQLite file: one is approved and paid; one is rejected, so the payment step refuses and
the budget is released; one gets no answer and times out; one is withdrawn (cancelled)
while it waits. Prints what each step does, then each claim's terminal status.

    python examples/approval.py                 # a database in a temporary directory
    python examples/approval.py approvals.db    # or in a file you keep

While a claim waits, it costs no task and, after ``passivate_after`` (60 s by default), no
memory: it sleeps in the store, and the manager's signal, or its timeout, wakes it even
after a restart. Run again on the same file, the claims are found finished: starting them
and sending the same decisions again (same message ids) changes nothing.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from saga import (
    Coordinator,
    OnTimeout,
    PendingWait,
    RetryPolicy,
    SagaDefinition,
    SagaHandle,
    Status,
    Step,
    StepContext,
    StepKind,
    WaitForSignal,
)
from saga.errors import CommandRejected, NonRetryableError
from saga_adapters import open_store

#: How long a manager has to answer. Days in real life; two seconds here, so that the
#: example ends quickly.
APPROVAL_TIMEOUT = 2.0


class Rejected(NonRetryableError):
    """The manager said no: paying is not tried again, and the saga turns back."""


# The "outside world": in a real application these would call the budget and payment
# services, passing ctx.idempotency_key so that a step re-run after a crash is not done
# twice over there.
async def reserve_budget(ctx: StepContext) -> dict[str, Any]:
    claim = ctx.input
    print(f"  [{ctx.saga_id}] reserving {claim['amount']} EUR of the {claim['team']} budget")
    return {"reservation": f"R-{ctx.saga_id}", "amount": claim["amount"]}


async def release_budget(ctx: StepContext) -> None:
    # ctx.result is what reserve_budget returned.
    print(f"  [{ctx.saga_id}] releasing reservation {ctx.result['reservation']}")


async def pay(ctx: StepContext) -> dict[str, Any]:
    # The signal's payload is the waiting step's result.
    decision = ctx.results["manager_approval"]
    if not decision["approved"]:
        raise Rejected(f"rejected by {decision['by']}: {decision.get('note', 'no reason given')}")
    print(f"  [{ctx.saga_id}] paying {ctx.input['amount']} EUR to {ctx.input['employee']}")
    return {"payment": f"P-{ctx.idempotency_key[:8]}"}


async def notify(ctx: StepContext) -> None:
    payment = ctx.results["pay"]["payment"]
    print(f"  [{ctx.saga_id}] telling {ctx.input['employee']}: reimbursed ({payment})")


expense_approval = SagaDefinition(
    "expense_approval",
    [
        Step(name="reserve_budget", action=reserve_budget, compensation=release_budget),
        # No action: the step completes with the payload of the first "decision" signal.
        # No answer in time fails it for good, and the reservation is released.
        Step(
            name="manager_approval",
            wait=WaitForSignal(
                "decision", timeout=APPROVAL_TIMEOUT, on_timeout=OnTimeout.COMPENSATE
            ),
        ),
        # The point of no return: money that went out is not taken back by this saga.
        # Until it completes the saga can still turn back (a rejection fails it here).
        Step(
            name="pay",
            action=pay,
            kind=StepKind.PIVOT,
            retry=RetryPolicy(max_attempts=5, initial_interval=0.1),
        ),
        # After the pivot: retried until it succeeds.
        Step(name="notify", action=notify, kind=StepKind.RETRIABLE),
    ],
)


async def until_waiting(handle: SagaHandle) -> PendingWait | None:
    """Wait until the claim waits for its manager; ``None`` if it finished already.

    ``query()`` shows what an instance waits for without disturbing it (a manager's list
    of claims to approve would be built from it); here it tells when to answer.
    """
    while True:
        view = await handle.query()
        if view.waits or view.status is not Status.RUNNING:
            return view.waits[0] if view.waits else None
        await anyio.sleep(0.01)


async def main(db: Path) -> dict[str, str]:
    """Run the four claims; return their terminal statuses by id."""
    claims = {
        "exp-1": {"employee": "ana", "team": "sales", "amount": 120},
        "exp-2": {"employee": "ben", "team": "sales", "amount": 2400},
        "exp-3": {"employee": "chloe", "team": "ops", "amount": 80},
        "exp-4": {"employee": "dev", "team": "ops", "amount": 45},
    }
    async with (
        open_store(f"sqlite:///{db}") as store,
        Coordinator(store, [expense_approval]) as coordinator,
    ):
        handles = {}
        for claim_id, claim in claims.items():
            handles[claim_id] = await coordinator.start(expense_approval, claim_id, claim)
            wait = await until_waiting(handles[claim_id])
            if wait is not None:
                print(f"  [{claim_id}] waiting for signal {wait.signal!r}")

        # The manager's answers. Each carries the id of the decision it records, so a
        # callback delivered twice is taken once.
        await coordinator.signal(
            "exp-1", "decision", {"approved": True, "by": "mia"}, message_id="decision-exp-1"
        )
        await coordinator.signal(
            "exp-2",
            "decision",
            {"approved": False, "by": "mia", "note": "over the travel limit"},
            message_id="decision-exp-2",
        )
        # exp-3 gets no answer. exp-4 is withdrawn by the employee while it waits.
        try:
            await coordinator.cancel("exp-4", "withdrawn by the employee")
        except CommandRejected as exc:  # a second run on the same file: finished already
            print(f"  [exp-4] not cancelled: {exc}")

        statuses = {}
        for claim_id, handle in handles.items():
            outcome = await handle.outcome()
            statuses[claim_id] = outcome.status.value
            print(f"{claim_id}: {outcome.status.value}")
            if outcome.reason:
                print(f"  reason: {outcome.reason}")
    return statuses


if __name__ == "__main__":
    if len(sys.argv) > 1:
        anyio.run(main, Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            anyio.run(main, Path(tmp) / "approvals.db")
