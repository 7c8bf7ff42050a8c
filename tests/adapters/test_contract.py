"""The store contract: every store behaves like the in-memory reference.

Runs against each kind in ``tests.conftest.STORES`` through the ``store`` fixture, on
asyncio and trio. JSON text (event data, instance input) is compared decoded, since a store
may keep it as JSONB and hand back equivalent text.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from saga._store.port import EventRecord, NewInstance, TaskRecord, Transition
from saga.errors import ConflictError

pytestmark = pytest.mark.anyio


def _events(
    saga_id: str, first: int, count: int, kind: str = "StepScheduled"
) -> tuple[EventRecord, ...]:
    return tuple(
        EventRecord(
            saga_id=saga_id,
            sequence=first + i,
            type=kind,
            schema=1,
            data=f'{{"n":{first + i}}}',
            recorded_at=100.0 + first + i,
        )
        for i in range(count)
    )


async def history(store: Any, saga_id: str) -> list[EventRecord]:
    loaded = await store.load(saga_id)
    return [] if loaded is None else list(loaded[1])


def decoded(events: Any) -> list[tuple[Any, ...]]:
    """Events as tuples with their data decoded: equal JSON, whatever its spelling."""
    return [
        (e.saga_id, e.sequence, e.type, e.schema, json.loads(e.data), e.recorded_at) for e in events
    ]


def _task(saga_id: str, step: str, attempt: int = 1, run_after: float | None = None) -> TaskRecord:
    return TaskRecord(
        task_id=f"{saga_id}/action/{step}/{attempt}",
        saga_id=saga_id,
        kind="action",
        step=step,
        attempt=attempt,
        run_after=run_after,
    )


def _new(saga_id: str, *, input: str = '{"x":1}', events: int = 2, at: float = 10.0) -> NewInstance:
    return NewInstance(
        saga="order",
        version=3,
        input=input,
        transition=Transition(
            saga_id=saga_id,
            expected_sequence=0,
            events=_events(saga_id, 1, events),
            status="running",
            at=at,
            new_tasks=(_task(saga_id, "a"),),
        ),
    )


def _commit(saga_id: str, expected: int, count: int = 1, **kw: Any) -> Transition:
    return Transition(
        saga_id=saga_id,
        expected_sequence=expected,
        events=_events(saga_id, expected + 1, count),
        status=kw.pop("status", "running"),
        at=kw.pop("at", 20.0),
        **kw,
    )


async def test_create_inserts_instance_events_and_tasks(store: Any) -> None:
    assert await store.create(_new("s1")) is None
    row = await store.instance("s1")
    assert row is not None
    assert (row.saga, row.version, row.status, row.sequence, json.loads(row.input)) == (
        "order",
        3,
        "running",
        2,
        {"x": 1},
    )
    assert (row.created_at, row.updated_at) == (10.0, 10.0)
    assert decoded(await history(store, "s1")) == decoded(_events("s1", 1, 2))
    assert list(await store.tasks("s1")) == [_task("s1", "a")]


async def test_create_of_existing_id_returns_it_and_writes_nothing(store: Any) -> None:
    await store.create(_new("s1"))
    existing = await store.create(_new("s1", input='{"x":2}', events=5, at=99.0))
    assert existing is not None
    assert (existing.saga_id, json.loads(existing.input), existing.sequence) == ("s1", {"x": 1}, 2)
    assert len(await history(store, "s1")) == 2
    assert (await store.instance("s1")).created_at == 10.0  # type: ignore[union-attr]


async def test_commit_appends_and_moves_the_row(store: Any) -> None:
    await store.create(_new("s1"))
    await store.commit(
        _commit(
            "s1",
            2,
            2,
            status="compensating",
            at=30.0,
            new_tasks=(_task("s1", "b"),),
            done_tasks=(_task("s1", "a").task_id,),
        )
    )
    row = await store.instance("s1")
    assert row is not None
    assert (row.status, row.sequence, row.updated_at, row.created_at) == (
        "compensating",
        4,
        30.0,
        10.0,
    )
    assert [e.sequence for e in await history(store, "s1")] == [1, 2, 3, 4]
    assert [t.step for t in await store.tasks("s1")] == ["b"]


async def test_commit_with_stale_sequence_is_a_conflict_and_writes_nothing(store: Any) -> None:
    await store.create(_new("s1"))
    await store.commit(_commit("s1", 2))
    with pytest.raises(ConflictError) as info:
        await store.commit(_commit("s1", 2, status="completed", done_tasks=("s1/action/a/1",)))
    assert (info.value.saga_id, info.value.expected, info.value.actual) == ("s1", 2, 3)
    row = await store.instance("s1")
    assert row is not None and (row.status, row.sequence) == ("running", 3)
    assert len(await history(store, "s1")) == 3
    assert len(await store.tasks("s1")) == 1


async def test_commit_to_a_missing_instance_is_a_conflict(store: Any) -> None:
    with pytest.raises(ConflictError) as info:
        await store.commit(_commit("nope", 0))
    assert info.value.actual is None
    assert list(await history(store, "nope")) == []


async def test_concurrent_writers_with_one_expected_sequence_one_wins(store: Any) -> None:
    await store.create(_new("s1"))
    outcomes: list[str] = []

    async def write(n: int) -> None:
        try:
            await store.commit(_commit("s1", 2, status=f"w{n}"))
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(write, n)
    assert sorted(outcomes) == ["conflict"] * 9 + ["ok"]
    assert [e.sequence for e in await history(store, "s1")] == [1, 2, 3]


async def test_concurrent_creates_of_one_id_create_it_once(store: Any) -> None:
    results: list[object] = []

    async def create(n: int) -> None:
        results.append(await store.create(_new("s1", input=f'{{"n":{n}}}')))

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(create, n)
    assert results.count(None) == 1
    assert len(await history(store, "s1")) == 2


async def test_many_concurrent_transitions_all_land(store: Any) -> None:
    async def run(i: int) -> None:
        await store.create(_new(f"s{i:03}", events=1))
        for seq in range(1, 4):
            await store.commit(_commit(f"s{i:03}", seq))

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(run, i)
    rows = await store.instances()
    assert len(rows) == 200
    assert {row.sequence for row in rows} == {4}
    for row in rows[:5]:
        assert [e.sequence for e in await history(store, row.saga_id)] == [1, 2, 3, 4]


async def test_instances_filters_orders_and_limits(store: Any) -> None:
    for saga_id, status in [("c", "completed"), ("a", "running"), ("b", "compensating")]:
        await store.create(_new(saga_id))
        if status != "running":
            await store.commit(_commit(saga_id, 2, status=status))
    assert [r.saga_id for r in await store.instances()] == ["a", "b", "c"]
    active = await store.instances(statuses=("running", "compensating"))
    assert [r.saga_id for r in active] == ["a", "b"]
    assert [r.saga_id for r in await store.instances(limit=1)] == ["a"]
    assert list(await store.instances(statuses=())) == []


async def test_reads_of_unknown_ids_are_empty(store: Any) -> None:
    assert await store.instance("ghost") is None
    assert list(await history(store, "ghost")) == []
    assert list(await store.tasks("ghost")) == []


async def test_tasks_across_instances_and_replacement(store: Any) -> None:
    await store.create(_new("s1"))
    await store.create(_new("s2"))
    await store.commit(_commit("s2", 2, new_tasks=(_task("s2", "a", run_after=5.0),)))
    tasks = await store.tasks()
    assert [(t.saga_id, t.run_after) for t in tasks] == [("s1", None), ("s2", 5.0)]
