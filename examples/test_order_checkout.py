"""Every compensation path of the order checkout, tested on SQLite in virtual time.

Uses saga's pytest plugin (installed with saga): ``saga_kit`` is a test kit on a SQLite file
in the test's temporary directory, with a virtual clock, so minutes of retry backoff and an
hour-long timeout take no real time. Run it with:

    pytest examples/test_order_checkout.py
"""

from __future__ import annotations

from typing import Any

import pytest

from examples.order_checkout import HOUR, MINUTE, checkout
from saga import Coordinator, Phase, SagaDefinition, Status, idempotency_key
from saga.testing import (
    CompensationPath,
    SagaTestKit,
    compensation_paths,
    compensations,
    completed_steps,
)

pytestmark = pytest.mark.anyio

ORDER = {"sku": "book", "qty": 1, "amount": 25, "card": "4242424242424242"}
DECLINED = {**ORDER, "card": "4000000000000002"}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
def saga_definitions() -> list[SagaDefinition]:
    return [checkout]  # what saga_coordinator runs


@pytest.mark.parametrize("path", compensation_paths(checkout), ids=str)
async def test_every_compensation_path(saga_kit: SagaTestKit, path: CompensationPath) -> None:
    # Fails the path's step for good, then checks the terminal status and that exactly the
    # steps before it were undone, newest first.
    await path.check(saga_kit, ORDER)


async def test_a_declined_card_releases_the_stock(saga_coordinator: Coordinator) -> None:
    handle = await saga_coordinator.start(checkout, "order-1", DECLINED)
    outcome = await handle.outcome()
    assert outcome.status is Status.COMPENSATED
    assert "CardDeclined" in (outcome.reason or "")
    assert compensations(await handle.history()) == ["reserve_stock"]


async def test_a_flaky_payment_provider_is_retried_for_minutes(
    saga_kit: SagaTestKit, saga_coordinator: Coordinator
) -> None:
    saga_kit.faults.fail("charge_card", times=4)
    began = saga_kit.clock.now()
    outcome = await (await saga_coordinator.start(checkout, "order-2", ORDER)).outcome()
    assert outcome.status is Status.COMPLETED
    waited = saga_kit.clock.now() - began
    assert 0.9 * 15 * MINUTE <= waited <= 1.1 * 15 * MINUTE  # 1 + 2 + 4 + 8 minutes, jittered


async def test_a_payment_provider_that_stays_down_ends_in_compensation(
    saga_kit: SagaTestKit, saga_coordinator: Coordinator
) -> None:
    saga_kit.faults.fail("charge_card", times=None)  # every attempt
    handle = await saga_coordinator.start(checkout, "order-3", ORDER)
    outcome = await handle.outcome()
    assert outcome.status is Status.COMPENSATED
    assert compensations(await handle.history()) == ["reserve_stock"]


async def test_a_courier_that_never_answers_times_out_and_everything_is_undone(
    saga_kit: SagaTestKit, saga_coordinator: Coordinator
) -> None:
    saga_kit.faults.time_out("ship", times=None)  # hangs until its one-hour timeout
    began = saga_kit.clock.now()
    handle = await saga_coordinator.start(checkout, "order-4", ORDER)
    outcome = await handle.outcome()
    assert outcome.status is Status.COMPENSATED
    assert "StepTimeoutError" in (outcome.reason or "")
    assert compensations(await handle.history()) == ["charge_card", "reserve_stock"]
    assert saga_kit.clock.now() - began >= 3 * HOUR  # three attempts of an hour each


async def test_a_crash_after_charging_reruns_the_charge_with_the_same_key(
    saga_kit: SagaTestKit, saga_coordinator: Coordinator
) -> None:
    saga_kit.faults.crash_after("charge_card")  # charged, then the process "dies"
    handle = await saga_coordinator.start(checkout, "order-5", ORDER)
    outcome = await handle.outcome()
    assert outcome.status is Status.COMPLETED
    history = await handle.history()
    assert completed_steps(history).count("charge_card") == 1  # recorded once
    # The re-run got the same idempotency key, so the provider can tell it is the same
    # charge (the example's provider makes its charge id from it).
    key = idempotency_key("order-5", "charge_card", Phase.ACTION)
    assert outcome.results["charge_card"]["charge"] == f"C-{key[:8]}"
