"""The store contract for sleeping instances: ``wake_at``, ``claim(due=)``, ``next_wake``.

Runs against each kind in ``tests.conftest.STORES`` through the ``store`` fixture, on
asyncio and trio, like ``test_contract_ownership.py``. Wake-up times are on the
coordinator's clock (any float the store keeps as it is given); lease times on the store's.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from saga._store.port import NewInstance
from saga.errors import ConflictError, FencedError
from tests.adapters.test_contract import _commit
from tests.adapters.test_contract_ownership import (
    EXPIRED,
    LIVE,
    SAGAS,
    _lease_of,
    _message,
    _reply,
    _row,
)
from tests.adapters.test_contract_ownership import _new as _new_leased

pytestmark = pytest.mark.anyio

#: A coordinator's time with a fraction: a store that rounds it (float4, seconds) shows.
T = 1_767_225_600.125
HOUR = 3600.0


def _new(saga_id: str, wake_at: float | None, **kw: Any) -> NewInstance:
    """An instance (unowned unless ``owner`` is given) whose wake-up time is ``wake_at``."""
    base = _new_leased(saga_id, **kw)
    return attrs.evolve(base, transition=attrs.evolve(base.transition, wake_at=wake_at))


async def _claimed(store: Any, **kw: Any) -> list[str]:
    kw.setdefault("lease", LIVE)
    kw.setdefault("limit", 100)
    kw.setdefault("sagas", SAGAS)
    return [r.saga_id for r in await store.claim(kw.pop("owner", "B"), **kw)]


# -- wake_at round trip -----------------------------------------------------------------


@pytest.mark.parametrize("wake_at", [T, None, 0.0])
async def test_create_keeps_the_wake_up_time(store: Any, wake_at: float | None) -> None:
    await store.create(_new("s1", wake_at))
    assert (await _row(store, "s1")).wake_at == wake_at
    loaded = await store.load("s1")
    assert loaded is not None and loaded[0].wake_at == wake_at
    [listed] = await store.instances()
    assert listed.wake_at == wake_at


async def test_each_commit_sets_the_wake_up_time_it_carries(store: Any) -> None:
    await store.create(_new("s1", T, owner="A"))
    seen = []
    for sequence, wake_at in enumerate([T + 3600.5, None, T + 0.25, T + 0.25], start=2):
        await store.commit(attrs.evolve(_commit("s1", sequence, epoch=1), wake_at=wake_at))
        row = await _row(store, "s1")
        loaded = await store.load("s1")
        assert loaded is not None and loaded[0] == row
        seen.append(row.wake_at)
    assert seen == [T + 3600.5, None, T + 0.25, T + 0.25]


async def test_a_refused_commit_leaves_the_wake_up_time_alone(store: Any) -> None:
    await store.create(_new("s1", T, owner="A"))
    stale_epoch = attrs.evolve(_commit("s1", 2, epoch=7), wake_at=T + 1)
    stale_sequence = attrs.evolve(_commit("s1", 5, epoch=1), wake_at=T + 2)
    for refused in (stale_epoch, stale_sequence):
        with pytest.raises((FencedError, ConflictError)):
            await store.commit(refused)
    assert (await _row(store, "s1")).wake_at == T


async def test_leases_taken_and_given_back_leave_the_wake_up_time_alone(store: Any) -> None:
    await store.create(_new("s1", T))
    acquired = await store.acquire("s1", "A", lease=LIVE)
    assert acquired is not None and acquired.wake_at == T
    await store.renew("A", {"s1": 1}, lease=LIVE)
    await store.release("A", {"s1": 1})
    [claimed] = await store.claim("B", lease=LIVE, limit=10, sagas=SAGAS, due=T)
    assert claimed.wake_at == T
    assert (await _row(store, "s1")).wake_at == T


# -- claim(due=) ------------------------------------------------------------------------


async def test_claim_when_due_takes_only_instances_due_by_then_or_messaged(store: Any) -> None:
    instances = {
        "a-overdue": T - 60,
        "b-due-now": T,  # at or before: due
        "c-later": T + 0.001,
        "d-message-only": None,  # a signal wait without a timeout
        "e-messaged": None,
        "f-answered": None,
        "g-messaged-later": T + 3600,
    }
    for saga_id, wake_at in instances.items():
        await store.create(_new(saga_id, wake_at))
    await store.send(_message("m1", "e-messaged"))
    await store.send(_message("m2", "f-answered"))
    await store.answer([_reply("m2", "done")])
    await store.send(_message("m3", "g-messaged-later"))

    assert await _claimed(store, due=T) == [
        "a-overdue",
        "b-due-now",
        "e-messaged",
        "g-messaged-later",
    ]
    for saga_id in ("c-later", "d-message-only", "f-answered"):
        assert _lease_of(await _row(store, saga_id)) == (None, 0)
    # Later, the sleeping one is due too; without a due time, whatever is left.
    assert await _claimed(store, owner="C", due=T + 1) == ["c-later"]
    assert await _claimed(store, owner="C") == ["d-message-only", "f-answered"]


async def test_claim_when_due_still_skips_what_it_would_skip_otherwise(store: Any) -> None:
    await store.create(_new("live", T - 1, owner="A", lease=LIVE))
    await store.create(_new("expired", T - 1, owner="A", lease=EXPIRED))
    await store.create(_new("done", T - 1, status="completed"))
    await store.create(_new("parked", T - 1, status="suspended"))
    await store.create(_new("other", T - 1, version=4))
    for saga_id in ("live", "done", "parked", "other"):
        await store.send(_message(f"m-{saga_id}", saga_id))
    assert await _claimed(store, due=T) == ["expired"]
    # With ``own``, the caller's live leases count as free, when due.
    assert await _claimed(store, owner="A", own=True, due=T) == ["live"]


async def test_claim_with_own_takes_back_the_callers_leases_whether_due_or_not(
    store: Any,
) -> None:
    # The caller's own live leases are those of its previous incarnation: nobody else will
    # take them, nor wake them (``next_wake`` skips held rows), until they expire.
    await store.create(_new("mine-asleep", T + HOUR, owner="A", lease=LIVE))
    await store.create(_new("mine-waiting", None, owner="A", lease=LIVE))
    await store.create(_new("free-asleep", T + HOUR))
    assert await _claimed(store, owner="A", own=True, due=T) == ["mine-asleep", "mine-waiting"]


async def test_claim_when_due_honours_limit_and_cursor(store: Any) -> None:
    for i in range(5):
        await store.create(_new(f"s{i}", T if i % 2 == 0 else T + 10))
    assert await _claimed(store, due=T, limit=2) == ["s0", "s2"]
    assert await _claimed(store, owner="C", due=T + 10, after="s1") == ["s3", "s4"]
    assert await _claimed(store, owner="C", due=T + 10) == ["s1"]


async def test_an_answered_message_no_longer_makes_an_instance_due(store: Any) -> None:
    await store.create(_new("s1", None, owner="A", lease=EXPIRED))
    await store.send(_message("m1", "s1"))
    await store.answer([_reply("m1", "ok")])
    assert await _claimed(store, due=T) == []
    await store.send(_message("m2", "s1"))
    assert await _claimed(store, due=T) == ["s1"]


# -- next_wake ---------------------------------------------------------------------------


async def test_next_wake_is_the_earliest_later_wake_up_of_sleeping_instances(store: Any) -> None:
    rows: list[tuple[str, float | None, dict[str, Any]]] = [
        ("free-late", T + 50, {}),
        ("free-early", T + 30, {}),
        ("live-lease", T + 10, {"owner": "A", "lease": LIVE}),  # its owner's alarm
        ("expired-lease", T + 40, {"owner": "A", "lease": EXPIRED}),
        ("completed", T + 1, {"status": "completed"}),
        ("suspended", T + 2, {"status": "suspended"}),
        ("compensating", T + 35, {"status": "compensating"}),
        ("other-version", T + 3, {"version": 4}),
        ("other-saga", T + 4, {"saga": "payment"}),
        ("at-after", T, {}),  # not later than ``after``: due already, claimed by the beat
        ("before-after", T - 5, {}),
        ("message-only", None, {}),
    ]
    for saga_id, wake_at, kw in rows:
        await store.create(_new(saga_id, wake_at, **kw))

    assert await store.next_wake(sagas=SAGAS, after=T) == T + 30
    assert await store.next_wake(sagas=SAGAS, after=T + 30) == T + 35
    assert await store.next_wake(sagas=SAGAS, after=T + 35) == T + 40
    assert await store.next_wake(sagas=SAGAS, after=T + 40) == T + 50
    assert await store.next_wake(sagas=SAGAS, after=T + 50) is None
    assert await store.next_wake(sagas=[], after=T) is None
    both = [*SAGAS, ("order", 4), ("payment", 3)]
    assert await store.next_wake(sagas=both, after=T) == T + 3


async def test_next_wake_follows_leases_and_commits(store: Any) -> None:
    await store.create(_new("s1", T + 10))
    assert await store.next_wake(sagas=SAGAS, after=T) == T + 10
    taken = await store.acquire("s1", "A", lease=LIVE)
    assert taken is not None
    assert await store.next_wake(sagas=SAGAS, after=T) is None  # held: its owner wakes it
    await store.commit(attrs.evolve(_commit("s1", 2, epoch=taken.epoch), wake_at=T + 20))
    await store.release("A", {"s1": taken.epoch})
    assert await store.next_wake(sagas=SAGAS, after=T) == T + 20
    await store.commit(
        attrs.evolve(_commit("s1", 3, epoch=taken.epoch, status="completed"), wake_at=None)
    )
    assert await store.next_wake(sagas=SAGAS, after=T) is None
