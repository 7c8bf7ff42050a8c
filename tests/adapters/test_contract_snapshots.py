"""The store contract for snapshots: written with their commit, the latest wins, and
``load_recent`` reads the row, the snapshot and only the events after it, together.

Runs against each kind in ``tests.conftest.STORES`` through the ``store`` fixture, on
asyncio and trio, like ``test_contract.py``. Snapshot data is compared decoded, since a
store may keep it as JSONB and hand back equivalent text.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import attrs
import pytest

from saga._store.port import EventRecord, InstanceRecord, SnapshotRecord
from saga.errors import ConflictError, FencedError
from tests.adapters.test_contract import _commit, _new, decoded, history

pytestmark = pytest.mark.anyio


def _state(n: int, **more: Any) -> str:
    """Some JSON text to snapshot (a store never looks inside)."""
    return json.dumps({"format": 1, "state": {"n": n, **more}})


async def _recent(
    store: Any, saga_id: str
) -> tuple[InstanceRecord, SnapshotRecord | None, list[EventRecord]]:
    loaded = await store.load_recent(saga_id)
    assert loaded is not None, saga_id
    row, snapshot, events = loaded
    return row, snapshot, list(events)


def _snapshot(found: SnapshotRecord | None) -> tuple[str, int, Any] | None:
    return None if found is None else (found.saga_id, found.sequence, json.loads(found.data))


async def test_without_a_snapshot_load_recent_is_the_whole_history(store: Any) -> None:
    await store.create(_new("s1"))
    await store.commit(_commit("s1", 2, 3))
    row, snapshot, events = await _recent(store, "s1")
    assert snapshot is None
    assert row == await store.instance("s1")
    assert decoded(events) == decoded(await history(store, "s1"))
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]


async def test_load_recent_of_an_unknown_id_is_none(store: Any) -> None:
    assert await store.load_recent("ghost") is None


async def test_a_snapshot_is_written_with_its_commit_at_the_sequence_it_reaches(
    store: Any,
) -> None:
    await store.create(_new("s1"))
    await store.commit(_commit("s1", 2, 3, snapshot=_state(5)))
    row, snapshot, events = await _recent(store, "s1")
    assert row.sequence == 5
    assert _snapshot(snapshot) == ("s1", 5, json.loads(_state(5)))
    assert events == []
    # load is unchanged: the whole history.
    assert [e.sequence for e in await history(store, "s1")] == [1, 2, 3, 4, 5]


async def test_load_recent_returns_only_the_events_after_the_snapshot(store: Any) -> None:
    await store.create(_new("s1"))
    await store.commit(_commit("s1", 2, 2, snapshot=_state(4)))
    await store.commit(_commit("s1", 4, 3, status="compensating"))
    row, snapshot, events = await _recent(store, "s1")
    assert (row.sequence, row.status) == (7, "compensating")
    assert _snapshot(snapshot) == ("s1", 4, json.loads(_state(4)))
    assert decoded(events) == decoded((await history(store, "s1"))[4:])
    assert [e.sequence for e in events] == [5, 6, 7]


async def test_the_latest_snapshot_wins(store: Any) -> None:
    await store.create(_new("s1"))
    await store.commit(_commit("s1", 2, 1, snapshot=_state(3)))
    await store.commit(_commit("s1", 3, 2))
    await store.commit(_commit("s1", 5, 1, snapshot=_state(6, big=[1, 2, 3])))
    await store.commit(_commit("s1", 6, 1))
    _, snapshot, events = await _recent(store, "s1")
    assert _snapshot(snapshot) == ("s1", 6, json.loads(_state(6, big=[1, 2, 3])))
    assert [e.sequence for e in events] == [7]


async def test_a_create_may_carry_a_snapshot(store: Any) -> None:
    new = _new("s1", events=3)
    await store.create(attrs.evolve(new, transition=attrs.evolve(new.transition, snapshot="{}")))
    _, snapshot, events = await _recent(store, "s1")
    assert _snapshot(snapshot) == ("s1", 3, {})
    assert events == []


async def test_a_conflicting_commit_writes_no_snapshot(store: Any) -> None:
    await store.create(_new("s1"))
    await store.commit(_commit("s1", 2, 1, snapshot=_state(3)))
    with pytest.raises(ConflictError):
        await store.commit(_commit("s1", 2, 5, snapshot=_state(99)))
    with pytest.raises(ConflictError):
        await store.commit(_commit("ghost", 0, 1, snapshot=_state(99)))
    _, snapshot, events = await _recent(store, "s1")
    assert _snapshot(snapshot) == ("s1", 3, json.loads(_state(3)))
    assert events == []
    assert await store.load_recent("ghost") is None


async def test_a_fenced_commit_writes_no_snapshot(store: Any) -> None:
    await store.create(_new("s1"))  # unowned: epoch 0
    taken = await store.acquire("s1", "B", lease=60.0)
    assert taken is not None and taken.epoch == 1
    with pytest.raises(FencedError):
        await store.commit(_commit("s1", 2, 1, epoch=0, snapshot=_state(3)))
    row, snapshot, events = await _recent(store, "s1")
    assert (row.sequence, snapshot) == (2, None)
    assert [e.sequence for e in events] == [1, 2]


async def test_concurrent_commits_each_write_their_own_snapshot(store: Any) -> None:
    """Commits that share a transaction (group commit) keep their snapshots apart, and a
    refused batch-mate takes no one's snapshot down with it."""
    for i in range(20):
        await store.create(_new(f"s{i:02}"))
    refused: list[str] = []

    async def commit(saga_id: str, expected: int, n: int) -> None:
        try:
            await store.commit(_commit(saga_id, expected, 2, snapshot=_state(n, id=saga_id)))
        except ConflictError:
            refused.append(saga_id)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            # Every third one is stale: it must change nothing.
            tg.start_soon(commit, f"s{i:02}", 2 if i % 3 else 1, i)
    assert sorted(refused) == [f"s{i:02}" for i in range(20) if i % 3 == 0]
    for i in range(20):
        saga_id = f"s{i:02}"
        row, snapshot, events = await _recent(store, saga_id)
        if i % 3 == 0:
            assert (row.sequence, snapshot, len(events)) == (2, None, 2)
        else:
            assert row.sequence == 4 and events == []
            assert _snapshot(snapshot) == (saga_id, 4, json.loads(_state(i, id=saga_id)))


async def test_a_large_snapshot_survives(store: Any) -> None:
    data = _state(3, results={f"step{i}": "x" * 1000 for i in range(300)}, text="naïve ☃")
    await store.create(_new("s1"))
    await store.commit(_commit("s1", 2, 1, snapshot=data))
    _, snapshot, _ = await _recent(store, "s1")
    assert _snapshot(snapshot) == ("s1", 3, json.loads(data))
