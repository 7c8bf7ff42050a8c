"""Hypothesis strategies shared by the property tests of the pure core."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from saga._core.definition import RetryPolicy, SagaDefinition, Step, StepKind

__all__ = ["definitions", "json_results", "names", "policies", "saga_ids"]


async def _action(ctx: Any) -> None:  # never called: the decider only names steps
    raise AssertionError("the decider must not call step functions")


async def _compensation(ctx: Any) -> None:
    raise AssertionError("the decider must not call step functions")


_HEAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
names = st.text(_HEAD + "0123456789.-", max_size=10).map(lambda tail: "s" + tail)
saga_ids = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=20
)
json_results = st.none() | st.booleans() | st.integers() | st.text(max_size=5)


# Floats from short lists: drawing arbitrary floats costs more than it finds here.
policies = st.builds(
    RetryPolicy,
    max_attempts=st.none() | st.integers(1, 4),
    initial_interval=st.sampled_from([0.01, 0.5, 1.0, 7.25]),
    multiplier=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    max_interval=st.sampled_from([0.5, 5.0, 60.0, 100.0]),
    jitter=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
)


@st.composite
def definitions(
    draw: st.DrawFn,
    *,
    pivot_then_retriable: bool = False,
    compensations: st.SearchStrategy[bool] | None = None,
) -> SagaDefinition:
    """``compensatable* pivot? retriable*``, 1 to 6 steps, some with compensations.

    With ``pivot_then_retriable``, there is a pivot and at least one step after it.
    ``compensations`` draws, for each compensatable step, whether it has a compensation
    (by default, a fair coin).
    """
    has_compensation = st.booleans() if compensations is None else compensations
    if pivot_then_retriable:
        size = draw(st.integers(2, 6))
        compensatable = draw(st.integers(0, min(2, size - 2)))
        rest = size - compensatable
        pivot = True
    else:
        size = draw(st.integers(1, 6))
        compensatable = draw(st.integers(0, size))
        rest = size - compensatable
        pivot = rest > 0 and draw(st.booleans())
    kinds = (
        [StepKind.COMPENSATABLE] * compensatable
        + [StepKind.PIVOT] * pivot
        + [StepKind.RETRIABLE] * (rest - pivot)
    )
    step_names = draw(st.lists(names, min_size=size, max_size=size, unique=True))
    steps = [
        Step(
            name=name,
            action=_action,
            compensation=(
                _compensation if kind is StepKind.COMPENSATABLE and draw(has_compensation) else None
            ),
            kind=kind,
            retry=draw(policies),
            compensation_retry=draw(policies),
        )
        for name, kind in zip(step_names, kinds, strict=True)
    ]
    return SagaDefinition(draw(names), steps, version=draw(st.integers(1, 3)))
