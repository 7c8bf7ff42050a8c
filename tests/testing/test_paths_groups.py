"""Compensation paths of sagas with parallel groups: siblings may or may not have run."""

from __future__ import annotations

from typing import Any

import pytest

from saga import MemoryStore, Parallel, SagaDefinition, Status, Step, StepContext, StepKind
from saga.testing import SagaTestKit, compensation_paths

pytestmark = pytest.mark.anyio


async def act(ctx: StepContext) -> str:
    return ctx.step


async def undo(ctx: StepContext) -> None:
    return None


TRIP = SagaDefinition(
    "trip",
    [
        Step(name="quote", action=act, compensation=undo),
        Parallel(
            "book",
            [Step(name=n, action=act, compensation=undo) for n in ("flight", "hotel", "car")],
            limit=2,
        ),
        Step(name="pay", action=act, kind=StepKind.PIVOT),
    ],
)


def test_a_member_path_allows_its_siblings() -> None:
    paths = {str(p): p for p in compensation_paths(TRIP)}
    assert list(paths) == ["quote-fails", "flight-fails", "hotel-fails", "car-fails", "pay-fails"]
    hotel = paths["hotel-fails"]
    assert (hotel.completed, hotel.siblings, hotel.compensations) == (
        ("quote",),
        ("flight", "car"),
        ("quote",),
    )
    pay = paths["pay-fails"]
    assert pay.completed == ("quote", "flight", "hotel", "car")
    assert pay.compensations == ("car", "hotel", "flight", "quote")


@pytest.mark.parametrize("path", compensation_paths(TRIP), ids=str)
async def test_every_path_of_a_saga_with_a_group(path: Any) -> None:
    outcome = await path.check(SagaTestKit(MemoryStore()))
    assert outcome.status is Status.COMPENSATED


async def test_a_path_that_undid_a_step_twice_or_out_of_order_is_caught() -> None:
    (hotel,) = [p for p in compensation_paths(TRIP) if p.step == "hotel"]
    assert hotel._fits(("quote", "flight"), ("flight", "quote"))
    assert hotel._fits(("quote", "car", "flight"), ("flight", "car", "quote"))
    assert not hotel._fits(("quote", "flight"), ("quote", "flight"))  # the group first
    assert not hotel._fits(("quote", "pay"), ("quote",))  # not a sibling
    assert not hotel._fits(("quote", "flight"), ("quote",))  # flight not undone
