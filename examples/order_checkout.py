"""Order checkout: reserve stock, charge the card, ship.

Runs two sagas on a SQLite file in a temporary directory: one completes; in the other the
card is declined, so the stock reservation is released again. Prints each saga's id,
terminal status and history.

    python examples/order_checkout.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio

from saga import Coordinator, RetryPolicy, SagaDefinition, Step, StepContext
from saga_adapters import open_store


class CardDeclined(Exception):
    """The payment provider said no: trying again will not help."""


# The "outside world": in a real application these would call other services, passing
# ctx.idempotency_key so that a step re-run after a crash is not done twice over there.
async def reserve_stock(ctx: StepContext) -> dict[str, Any]:
    return {"reservation": f"R-{ctx.saga_id}", "sku": ctx.input["sku"], "qty": ctx.input["qty"]}


async def release_stock(ctx: StepContext) -> None:
    print(f"  [{ctx.saga_id}] releasing reservation {ctx.result['reservation']}")


async def charge_card(ctx: StepContext) -> dict[str, Any]:
    if ctx.input["card"].startswith("4000"):  # the test card numbers that decline
        raise CardDeclined(f"card ending {ctx.input['card'][-4:]} was declined")
    return {"charge": f"C-{ctx.idempotency_key[:8]}", "amount": ctx.input["amount"]}


async def refund_card(ctx: StepContext) -> None:
    print(f"  [{ctx.saga_id}] refunding {ctx.result['charge']}")


async def ship(ctx: StepContext) -> dict[str, Any]:
    return {"tracking": f"T-{ctx.saga_id}"}


MINUTE, HOUR = 60.0, 3600.0

checkout = SagaDefinition(
    "order_checkout",
    [
        Step(name="reserve_stock", action=reserve_stock, compensation=release_stock),
        Step(
            name="charge_card",
            action=charge_card,
            compensation=refund_card,
            # A payment provider that is down is tried again for about a quarter of an hour
            # (1, 2, 4 and 8 minutes apart); a declined card is not tried again.
            retry=RetryPolicy(
                max_attempts=5,
                initial_interval=1 * MINUTE,
                max_interval=15 * MINUTE,
                non_retryable=[CardDeclined],
            ),
        ),
        # Booking a courier may hang; after an hour we stop waiting and try again.
        Step(name="ship", action=ship, timeout=1 * HOUR),
    ],
    version=1,
)


async def main(directory: Path) -> list[str]:
    """Run both orders; return their terminal statuses."""
    orders = {
        "order-1001": {"sku": "book", "qty": 1, "amount": 25, "card": "4242424242424242"},
        "order-1002": {"sku": "lamp", "qty": 2, "amount": 80, "card": "4000000000000002"},
    }
    statuses = []
    async with (
        open_store(f"sqlite:///{directory / 'sagas.db'}") as store,
        Coordinator(store, [checkout]) as coordinator,
    ):
        handles = [await coordinator.start(checkout, oid, order) for oid, order in orders.items()]
        for handle in handles:
            outcome = await handle.outcome()
            statuses.append(outcome.status.value)
            print(f"{handle.saga_id}: {outcome.status.value}")
            if outcome.reason:
                print(f"  reason: {outcome.reason}")
            for recorded in await handle.history():
                print(f"  {recorded.sequence:>3}  {recorded.event!r}")
    return statuses


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(main, Path(tmp))
