"""The store contract for ownership and the inbox: leases, fencing epochs, commands, wake-ups.

Runs against each kind in ``tests.conftest.STORES`` through the ``store`` fixture, on
asyncio and trio, like ``test_contract.py``. Lease times are on the store's clock: a lease
of 0 s has expired by the next statement (free means ``lease_until <= now``), one of
``LIVE`` seconds outlives the test. JSON text (inbox and reply bodies) is compared decoded,
since a store may keep it as JSONB and hand back equivalent text.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import attrs
import pytest

from saga._store.port import InboxRecord, InstanceRecord, NewInstance, Reply
from saga.errors import ConflictError, FencedError
from tests.adapters.test_contract import _commit, _task, history
from tests.adapters.test_contract import _new as _new_unowned

pytestmark = pytest.mark.anyio

LIVE = 60.0  # a lease no test outlives
EXPIRED = 0.0  # lease_until = now: free again by the next statement
SAGAS = [("order", 3)]


def _new(
    saga_id: str,
    *,
    owner: str | None = None,
    lease: float = LIVE,
    saga: str = "order",
    version: int = 3,
    status: str = "running",
    ends_lease: bool = False,
) -> NewInstance:
    base = _new_unowned(saga_id)
    return attrs.evolve(
        base,
        saga=saga,
        version=version,
        owner=owner,
        lease=lease,
        transition=attrs.evolve(base.transition, status=status, ends_lease=ends_lease),
    )


def _message(
    message_id: str, saga_id: str, *, sender: str = "S", n: int = 1, at: float = 1.0
) -> InboxRecord:
    return InboxRecord(
        message_id=message_id,
        saga_id=saga_id,
        sender=sender,
        body=json.dumps({"command": "cancel", "n": n}),
        created_at=at,
    )


def _reply(message_id: str, answer: str) -> Reply:
    return Reply(message_id=message_id, body=json.dumps({"answer": answer}))


async def _answer_of(store: Any, message_id: str) -> str | None:
    """The decoded answer taken for ``message_id`` (``None`` if there is none)."""
    body = await store.take_reply(message_id)
    return None if body is None else json.loads(body)["answer"]


async def _row(store: Any, saga_id: str) -> InstanceRecord:
    row: InstanceRecord | None = await store.instance(saga_id)
    assert row is not None, saga_id
    return row


def _lease_of(row: InstanceRecord) -> tuple[str | None, int]:
    return (row.owner, row.epoch)


def _near(lease_until: float | None, seconds: float) -> bool:
    """``lease_until`` is ``seconds`` from now, in seconds since the Unix epoch.

    Loose: the store's clock may be another machine's; this catches wrong units and leases
    that were not set or not moved.
    """
    return lease_until is not None and abs(lease_until - (time.time() + seconds)) < 30.0


async def _pending(store: Any, **filters: Any) -> list[str]:
    return [m.message_id for m in await store.inbox(**filters)]


class Wakes:
    """A subscriber's wake-ups, in order; a store may deliver them after the call returns."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self._changed = anyio.Event()

    def __call__(self, kind: str) -> None:
        self.kinds.append(kind)
        self._changed.set()

    async def until(self, kind: str, count: int = 1) -> None:
        with anyio.fail_after(10):
            while self.kinds.count(kind) < count:
                self._changed = anyio.Event()
                await self._changed.wait()


# -- create -------------------------------------------------------------------------------


async def test_create_with_an_owner_leases_it_at_epoch_1(store: Any) -> None:
    assert await store.create(_new("s1", owner="A", lease=LIVE)) is None
    row = await _row(store, "s1")
    assert _lease_of(row) == ("A", 1)
    assert _near(row.lease_until, LIVE)
    assert (row.status, row.sequence) == ("running", 2)


async def test_create_without_an_owner_is_unowned_at_epoch_0(store: Any) -> None:
    assert await store.create(_new("s1")) is None
    row = await _row(store, "s1")
    assert (row.owner, row.epoch, row.lease_until) == (None, 0, None)


async def test_create_that_ends_its_lease_is_unowned(store: Any) -> None:
    # An instance finished by its first transition needs no driver.
    await store.create(_new("s1", owner="A", status="completed", ends_lease=True))
    row = await _row(store, "s1")
    assert (row.owner, row.epoch, row.lease_until, row.status) == (None, 0, None, "completed")


async def test_create_of_an_existing_id_leaves_its_lease_alone(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    before = await _row(store, "s1")
    existing = await store.create(_new("s1", owner="B"))
    assert existing == before
    assert await _row(store, "s1") == before


# -- commit: fencing, ends_lease, replies ----------------------------------------------


async def test_commit_at_the_current_epoch_keeps_the_lease(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    before = await _row(store, "s1")
    await store.commit(_commit("s1", 2, epoch=1, status="compensating"))
    row = await _row(store, "s1")
    assert (row.status, row.sequence) == ("compensating", 3)
    assert (row.owner, row.epoch, row.lease_until) == ("A", 1, before.lease_until)


async def test_commit_at_a_stale_epoch_is_fenced_and_writes_nothing(store: Any) -> None:
    await store.create(_new("s1", owner="A", lease=EXPIRED))
    await store.send(_message("m1", "s1"))
    taken = await store.acquire("s1", "B", lease=LIVE)  # A's lease had expired
    assert taken is not None and _lease_of(taken) == ("B", 2)
    before = (await _row(store, "s1"), await history(store, "s1"), await store.tasks("s1"))

    for epoch in (1, 0, 3):  # older, and newer, than the instance's epoch 2
        with pytest.raises(FencedError) as info:
            await store.commit(
                _commit(
                    "s1",
                    2,
                    epoch=epoch,
                    status="completed",
                    new_tasks=(_task("s1", "b"),),
                    done_tasks=(_task("s1", "a").task_id,),
                    ends_lease=True,
                    replies=(_reply("m1", "done"),),
                )
            )
        assert (info.value.saga_id, info.value.epoch, info.value.actual) == ("s1", epoch, 2)

    after = (await _row(store, "s1"), await history(store, "s1"), await store.tasks("s1"))
    assert after == before
    assert await _pending(store) == ["m1"]
    assert await store.take_reply("m1") is None


async def test_the_epoch_is_checked_before_the_sequence(store: Any) -> None:
    await store.create(_new("s1", owner="A", lease=EXPIRED))
    await store.commit(_commit("s1", 2, epoch=1))
    await store.acquire("s1", "B", lease=LIVE)
    # Stale on both counts: the writer must hear that it lost the instance.
    with pytest.raises(FencedError):
        await store.commit(_commit("s1", 2, epoch=1))
    # The right epoch with a stale sequence is still a conflict.
    with pytest.raises(ConflictError):
        await store.commit(_commit("s1", 2, epoch=2))
    assert [e.sequence for e in await history(store, "s1")] == [1, 2, 3]


async def test_commit_to_a_missing_instance_is_a_conflict_whatever_its_epoch(store: Any) -> None:
    with pytest.raises(ConflictError) as info:
        await store.commit(_commit("ghost", 0, epoch=7))
    assert info.value.actual is None
    assert await store.instance("ghost") is None


async def test_a_commit_that_ends_the_lease_clears_owner_and_lease(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    await store.commit(_commit("s1", 2, epoch=1, status="completed", ends_lease=True))
    row = await _row(store, "s1")
    assert (row.owner, row.lease_until, row.epoch, row.status) == (None, None, 1, "completed")
    # Nobody holds it: another owner gets it at once, at a new epoch.
    taken = await store.acquire("s1", "B", lease=LIVE)
    assert taken is not None and _lease_of(taken) == ("B", 2)


async def test_a_commit_answers_its_replies_with_it(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    await store.send(_message("m1", "s1", at=1.0))
    await store.send(_message("m2", "s1", at=2.0))
    await store.commit(_commit("s1", 2, epoch=1, replies=(_reply("m1", "cancelled"),)))
    assert await _pending(store) == ["m2"]
    assert await _answer_of(store, "m1") == "cancelled"
    assert await store.take_reply("m2") is None


async def test_a_conflicting_commit_answers_nothing(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    await store.send(_message("m1", "s1"))
    with pytest.raises(ConflictError):
        await store.commit(_commit("s1", 1, epoch=1, replies=(_reply("m1", "cancelled"),)))
    assert await _pending(store) == ["m1"]
    assert await store.take_reply("m1") is None


# -- acquire ------------------------------------------------------------------------------


async def test_acquire_of_an_unknown_id_is_none(store: Any) -> None:
    assert await store.acquire("ghost", "A", lease=LIVE) is None
    assert await store.instance("ghost") is None


async def test_acquire_takes_an_unowned_instance(store: Any) -> None:
    await store.create(_new("s1"))
    taken = await store.acquire("s1", "A", lease=LIVE)
    assert taken is not None and _lease_of(taken) == ("A", 1)
    assert _near(taken.lease_until, LIVE)
    assert await _row(store, "s1") == taken
    await store.commit(_commit("s1", 2, epoch=1))  # the new epoch is the one to write at


async def test_acquire_leaves_a_live_lease_of_another_alone(store: Any) -> None:
    await store.create(_new("s1", owner="A", lease=LIVE))
    before = await _row(store, "s1")
    refused = await store.acquire("s1", "B", lease=LIVE)
    assert refused == before  # the row, with its holder: A
    assert await _row(store, "s1") == before


async def test_acquire_takes_an_expired_lease(store: Any) -> None:
    await store.create(_new("s1", owner="A", lease=EXPIRED))
    taken = await store.acquire("s1", "B", lease=LIVE)
    assert taken is not None and _lease_of(taken) == ("B", 2)
    assert _near(taken.lease_until, LIVE)
    with pytest.raises(FencedError):
        await store.commit(_commit("s1", 2, epoch=1))


async def test_acquire_by_the_holder_takes_it_again_at_a_new_epoch(store: Any) -> None:
    await store.create(_new("s1", owner="A", lease=LIVE))
    taken = await store.acquire("s1", "A", lease=LIVE)
    assert taken is not None and _lease_of(taken) == ("A", 2)
    with pytest.raises(FencedError):  # A's older actor is fenced off
        await store.commit(_commit("s1", 2, epoch=1))
    await store.commit(_commit("s1", 2, epoch=2))


@pytest.mark.parametrize("status", ["completed", "compensated", "failed", "suspended"])
async def test_acquire_works_whatever_the_status(store: Any, status: str) -> None:
    await store.create(_new("s1", status=status))
    taken = await store.acquire("s1", "A", lease=LIVE)
    assert taken is not None and (taken.owner, taken.epoch, taken.status) == ("A", 1, status)


# -- claim --------------------------------------------------------------------------------


async def test_claim_takes_only_active_instances_of_the_listed_sagas(store: Any) -> None:
    instances: list[tuple[str, dict[str, Any]]] = [
        ("a-running", {}),
        ("b-compensating", {"status": "compensating"}),
        ("c-completed", {"status": "completed"}),
        ("d-suspended", {"status": "suspended"}),
        ("e-failed", {"status": "failed"}),
        ("f-other-version", {"version": 4}),
        ("g-other-saga", {"saga": "payment", "version": 3}),
        ("h-listed-saga", {"saga": "payment", "version": 1}),
    ]
    for saga_id, kw in instances:
        await store.create(_new(saga_id, **kw))
    rows = await store.claim("B", lease=LIVE, limit=100, sagas=[("order", 3), ("payment", 1)])
    assert sorted(r.saga_id for r in rows) == ["a-running", "b-compensating", "h-listed-saga"]
    for row in rows:
        assert _lease_of(row) == ("B", 1)
        assert _near(row.lease_until, LIVE)
        assert await _row(store, row.saga_id) == row
    for saga_id in ["c-completed", "d-suspended", "e-failed", "f-other-version", "g-other-saga"]:
        assert _lease_of(await _row(store, saga_id)) == (None, 0)
    assert list(await store.claim("C", lease=LIVE, limit=100, sagas=[])) == []


async def test_claim_takes_at_most_limit(store: Any) -> None:
    ids = [f"s{i}" for i in range(5)]
    for saga_id in ids:
        await store.create(_new(saga_id))
    batches = [
        [r.saga_id for r in await store.claim("B", lease=LIVE, limit=2, sagas=SAGAS)]
        for _ in range(4)
    ]
    assert [len(b) for b in batches] == [2, 2, 1, 0]
    assert sorted(saga_id for batch in batches for saga_id in batch) == ids


async def test_claim_skips_live_leases_and_takes_expired_ones(store: Any) -> None:
    await store.create(_new("live", owner="A", lease=LIVE))
    await store.create(_new("expired", owner="A", lease=EXPIRED))
    await store.create(_new("free"))
    live_before = await _row(store, "live")
    rows = await store.claim("B", lease=LIVE, limit=100, sagas=SAGAS)
    assert {r.saga_id: _lease_of(r) for r in rows} == {"expired": ("B", 2), "free": ("B", 1)}
    assert await _row(store, "live") == live_before
    with pytest.raises(FencedError):  # A lost "expired": its writes are refused
        await store.commit(_commit("expired", 2, epoch=1))


async def test_claim_with_own_takes_back_the_callers_live_leases(store: Any) -> None:
    await store.create(_new("mine", owner="A", lease=LIVE))
    await store.create(_new("theirs", owner="C", lease=LIVE))
    theirs = await _row(store, "theirs")
    assert list(await store.claim("A", lease=LIVE, limit=100, sagas=SAGAS)) == []
    assert _lease_of(await _row(store, "mine")) == ("A", 1)
    rows = await store.claim("A", lease=LIVE, limit=100, sagas=SAGAS, own=True)
    assert [(r.saga_id, *_lease_of(r)) for r in rows] == [("mine", "A", 2)]
    assert await _row(store, "theirs") == theirs


async def test_claim_after_a_cursor_takes_only_later_ids_in_order(store: Any) -> None:
    for saga_id in ("s1", "s2", "s3", "s4", "s5"):
        await store.create(_new(saga_id, owner="A", lease=LIVE))
    # With ``own`` the rows taken stay claimable by the taker: only the cursor moves on.
    first = await store.claim("A", lease=LIVE, limit=2, sagas=SAGAS, own=True)
    assert [r.saga_id for r in first] == ["s1", "s2"]
    again = await store.claim("A", lease=LIVE, limit=2, sagas=SAGAS, own=True)
    assert [r.saga_id for r in again] == ["s1", "s2"]
    rest = await store.claim("A", lease=LIVE, limit=2, sagas=SAGAS, own=True, after="s2")
    assert [r.saga_id for r in rest] == ["s3", "s4"]
    last = await store.claim("A", lease=LIVE, limit=2, sagas=SAGAS, own=True, after="s4")
    assert [(r.saga_id, r.epoch) for r in last] == [("s5", 2)]
    assert (
        list(await store.claim("A", lease=LIVE, limit=2, sagas=SAGAS, own=True, after="s5")) == []
    )


async def test_concurrent_claims_never_take_an_instance_twice(store: Any) -> None:
    ids = [f"s{i:02}" for i in range(40)]
    for saga_id in ids:
        await store.create(_new(saga_id))
    taken: dict[str, list[str]] = {"A": [], "B": []}

    async def claimer(owner: str) -> None:
        for _ in range(10):
            rows = await store.claim(owner, lease=LIVE, limit=3, sagas=SAGAS)
            assert all(r.owner == owner for r in rows)
            taken[owner].extend(r.saga_id for r in rows)

    async with anyio.create_task_group() as tg:
        tg.start_soon(claimer, "A")
        tg.start_soon(claimer, "B")
    a, b = taken["A"], taken["B"]
    assert len(a) + len(b) == len(set(a) | set(b))  # nobody took one twice
    for owner, claimed in taken.items():
        for saga_id in claimed:
            assert _lease_of(await _row(store, saga_id)) == (owner, 1)
    rest = [r.saga_id for r in await store.claim("C", lease=LIVE, limit=100, sagas=SAGAS)]
    assert sorted(a + b + rest) == ids


# -- renew --------------------------------------------------------------------------------


async def test_renew_renews_only_the_leases_still_held(store: Any) -> None:
    await store.create(_new("held", owner="A"))
    await store.create(_new("taken-over", owner="A", lease=EXPIRED))
    await store.acquire("taken-over", "B", lease=LIVE)
    await store.create(_new("ended", owner="A"))
    await store.commit(_commit("ended", 2, epoch=1, status="completed", ends_lease=True))
    await store.create(_new("retaken", owner="A"))
    await store.acquire("retaken", "A", lease=LIVE)  # now at epoch 2
    before = {s: await _row(store, s) for s in ("taken-over", "ended", "retaken")}

    leases = {"held": 1, "taken-over": 1, "ended": 1, "retaken": 1, "ghost": 1}
    renewed = await store.renew("A", leases, lease=LIVE)
    assert set(renewed) == {"held"}
    for saga_id, row in before.items():
        assert await _row(store, saga_id) == row
    assert set(await store.renew("A", {}, lease=LIVE)) == set()


async def test_renew_extends_the_lease(store: Any) -> None:
    await store.create(_new("s1", owner="A", lease=EXPIRED))
    # Expired but taken by nobody: still A's, so A may renew it.
    assert set(await store.renew("A", {"s1": 1}, lease=LIVE)) == {"s1"}
    row = await _row(store, "s1")
    assert _lease_of(row) == ("A", 1)
    assert _near(row.lease_until, LIVE)
    refused = await store.acquire("s1", "B", lease=LIVE)  # live again: B cannot take it
    assert refused is not None and _lease_of(refused) == ("A", 1)
    await store.commit(_commit("s1", 2, epoch=1))


# -- release ------------------------------------------------------------------------------


async def test_release_frees_the_leases_at_once(store: Any) -> None:
    await store.create(_new("s1", owner="A", lease=LIVE))
    await store.create(_new("s2", owner="A", lease=LIVE))
    s2 = await _row(store, "s2")
    await store.release("A", {"s1": 1})
    row = await _row(store, "s1")
    assert (row.owner, row.lease_until, row.epoch) == (None, None, 1)
    assert await _row(store, "s2") == s2
    rows = await store.claim("B", lease=LIVE, limit=100, sagas=SAGAS)
    assert [(r.saga_id, *_lease_of(r)) for r in rows] == [("s1", "B", 2)]


async def test_release_needs_the_holder_and_its_epoch(store: Any) -> None:
    await store.create(_new("s1", owner="A", lease=LIVE))
    await store.acquire("s1", "A", lease=LIVE)  # epoch 2
    before = await _row(store, "s1")
    await store.release("B", {"s1": 2})  # not B's
    await store.release("A", {"s1": 1})  # an older lease of A's
    await store.release("A", {"ghost": 1})
    assert await _row(store, "s1") == before
    assert list(await store.claim("B", lease=LIVE, limit=100, sagas=SAGAS)) == []


async def test_release_wakes_every_subscriber(store: Any) -> None:
    await store.create(_new("s1", owner="A", lease=LIVE))
    wakes = {owner: Wakes() for owner in ("A", "B", "C")}
    for owner, wake in wakes.items():
        store.subscribe(owner, wake)
    await store.release("A", {"s1": 1})
    for wake in wakes.values():
        await wake.until("released")


# -- the inbox ----------------------------------------------------------------------------


async def test_send_queues_a_message_id_once(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    await store.create(_new("s2", owner="A"))
    await store.send(_message("m1", "s1", sender="S", n=1))
    await store.send(_message("m1", "s2", sender="T", n=2, at=5.0))
    [message] = await store.inbox()
    assert (message.message_id, message.saga_id, message.sender, message.created_at) == (
        "m1",
        "s1",
        "S",
        1.0,
    )
    assert json.loads(message.body) == {"command": "cancel", "n": 1}


async def test_sending_an_answered_message_again_writes_nothing(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    await store.send(_message("m1", "s1"))
    await store.answer([_reply("m1", "cancelled")])
    await store.send(_message("m1", "s1", n=2))
    assert await _pending(store) == []
    assert await _answer_of(store, "m1") == "cancelled"


async def test_inbox_lists_unanswered_messages_oldest_first(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    await store.create(_new("s2", owner="B"))
    for n, (message_id, saga_id) in enumerate(
        [("m3", "s2"), ("m1", "s1"), ("m4", "s1"), ("m2", "s2")], start=1
    ):
        await store.send(_message(message_id, saga_id, n=n, at=float(n)))
    await store.answer([_reply("m4", "done")])
    listed = await store.inbox()
    assert [(m.message_id, m.saga_id, m.created_at) for m in listed] == [
        ("m3", "s2", 1.0),
        ("m1", "s1", 2.0),
        ("m2", "s2", 4.0),
    ]
    assert [json.loads(m.body)["n"] for m in listed] == [1, 2, 4]
    assert await _pending(store, limit=2) == ["m3", "m1"]
    assert await _pending(store, limit=1) == ["m3"]


async def test_inbox_filters_by_the_current_owner_and_the_instance(store: Any) -> None:
    await store.create(_new("s1", owner="A", lease=EXPIRED))
    await store.create(_new("s2", owner="B"))
    await store.create(_new("s3"))
    for n, (message_id, saga_id) in enumerate(
        [("m1", "s1"), ("m2", "s2"), ("m3", "s1"), ("m4", "s3")], start=1
    ):
        await store.send(_message(message_id, saga_id, at=float(n)))
    assert await _pending(store, owner="A") == ["m1", "m3"]
    assert await _pending(store, owner="B") == ["m2"]
    assert await _pending(store, owner="C") == []
    assert await _pending(store, saga_id="s1") == ["m1", "m3"]
    assert await _pending(store, saga_id="s3") == ["m4"]
    assert await _pending(store, owner="A", saga_id="s1") == ["m1", "m3"]
    assert await _pending(store, owner="B", saga_id="s1") == []
    assert await _pending(store, owner="A", limit=1) == ["m1"]
    # The filter is the owner now, not the owner when the message was sent.
    await store.acquire("s1", "B", lease=LIVE)
    assert await _pending(store, owner="A") == []
    assert await _pending(store, owner="B") == ["m1", "m2", "m3"]


async def test_the_first_answer_wins(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    await store.send(_message("m1", "s1"))
    await store.send(_message("m2", "s1"))
    await store.answer([_reply("m1", "first"), _reply("m2", "first")])
    await store.answer([_reply("m1", "second")])
    await store.commit(_commit("s1", 2, epoch=1, replies=(_reply("m2", "second"),)))
    assert await _answer_of(store, "m1") == "first"
    assert await _answer_of(store, "m2") == "first"


async def test_take_reply_gives_the_answer_once(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    await store.send(_message("m1", "s1"))
    assert await store.take_reply("m1") is None
    assert await _pending(store) == ["m1"]  # asking early takes nothing away
    await store.answer([_reply("m1", "cancelled")])
    assert await _answer_of(store, "m1") == "cancelled"
    assert await store.take_reply("m1") is None
    # The row is gone: a late answer has nothing to attach to.
    await store.answer([_reply("m1", "late")])
    assert await store.take_reply("m1") is None
    assert await _pending(store) == []
    assert await store.take_reply("ghost") is None


# -- wake-ups -----------------------------------------------------------------------------


async def test_send_wakes_the_owner_of_the_instance(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    await store.create(_new("s2", owner="B"))
    a, b = Wakes(), Wakes()
    store.subscribe("A", a)
    store.subscribe("B", b)
    await store.send(_message("m1", "s1"))
    await a.until("inbox")
    await store.send(_message("m2", "s2"))
    await b.until("inbox")
    # Each heard of its own message only.
    assert (a.kinds.count("inbox"), b.kinds.count("inbox")) == (1, 1)


async def test_an_answer_wakes_the_sender(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    await store.send(_message("m1", "s1", sender="S"))
    sender, owner = Wakes(), Wakes()
    store.subscribe("S", sender)
    store.subscribe("A", owner)
    await store.answer([_reply("m1", "cancelled")])
    await sender.until("reply")
    await store.send(_message("m2", "s1", sender="S"))
    await owner.until("inbox")
    assert "reply" not in owner.kinds


async def test_a_commit_with_replies_wakes_their_senders(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    await store.send(_message("m1", "s1", sender="S"))
    await store.send(_message("m2", "s1", sender="T"))
    s, t = Wakes(), Wakes()
    store.subscribe("S", s)
    store.subscribe("T", t)
    await store.commit(_commit("s1", 2, epoch=1, replies=(_reply("m1", "ok"),)))
    await s.until("reply")
    await store.commit(_commit("s1", 3, epoch=1, replies=(_reply("m2", "ok"),)))
    await t.until("reply")
    assert (s.kinds.count("reply"), t.kinds.count("reply")) == (1, 1)


async def test_unsubscribing_stops_the_wake_ups(store: Any) -> None:
    await store.create(_new("s1", owner="A"))
    gone, staying = Wakes(), Wakes()
    unsubscribe = store.subscribe("A", gone)
    store.subscribe("A", staying)
    unsubscribe()
    await store.send(_message("m1", "s1"))
    await staying.until("inbox")
    await store.release("A", {"s1": 1})
    await staying.until("released")
    assert gone.kinds == []
