"""Several coordinators on one store, in one process: leases, fencing, takeover, inbox.

The multi-process versions (SIGKILL, SIGSTOP, pg_terminate_backend) are in tests/fencing.
Here the "other process" is a second coordinator, or a thief that takes a lease through
the store's own API, so every interleaving is forced by events rather than by timing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from saga import (
    Coordinator,
    LeasePolicy,
    MemoryStore,
    RetryPolicy,
    SagaDefinition,
    Status,
    Step,
    StepContext,
)
from saga import events as ev
from saga._core import messages as msg
from saga._core.codec import dumps
from saga._core.decide import start as decide_start
from saga._runtime.history import record, transition
from saga._store.port import NewInstance
from saga.errors import CommandRejected, StoreUnavailableError

pytestmark = pytest.mark.anyio

FAST = LeasePolicy(duration=30.0, renew_every=10.0, poll_interval=0.05)


class Gate:
    """A step that waits until the test lets it through, counting its calls."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, ctx: StepContext) -> str:
        self.calls.append((ctx.saga_id, ctx.attempt))
        self.entered.set()
        await self.release.wait()
        return "gated"


def saga_of(gate: Gate, undo: list[str] | None = None) -> SagaDefinition:
    async def first(ctx: StepContext) -> int:
        return 1

    async def undo_first(ctx: StepContext) -> None:
        if undo is not None:
            undo.append(ctx.saga_id)

    return SagaDefinition(
        "shared",
        [
            Step(name="first", action=first, compensation=undo_first),
            Step(name="gated", action=gate, retry=RetryPolicy(max_attempts=1)),
        ],
    )


async def _create(store: Any, saga: SagaDefinition, saga_id: str, *, owner: str) -> None:
    """An instance started by ``owner`` (a node that is not a coordinator of this test)."""
    decision = decide_start(saga, saga_id, msg.StartSaga(input=None), now=0.0)
    await store.create(
        NewInstance(
            saga=saga.name,
            version=saga.version,
            input=dumps(None),
            transition=transition(saga, 0, decision, at=0.0, epoch=1),
            owner=owner,
            lease=600.0,
        )
    )


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll ``check`` (sync or async) until it is truthy; fail after ``timeout``."""
    with anyio.fail_after(timeout):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(0.01)


def node(name: str, **kw: Any) -> dict[str, Any]:
    return {"node": name, "leases": FAST, **kw}


async def test_a_command_for_another_owner_goes_through_the_inbox(store: Any) -> None:
    gate, undone = Gate(), []
    saga = saga_of(gate, undone)
    async with (
        Coordinator(store, [saga], **node("a")) as a,
        Coordinator(store, [saga], **node("b")) as b,
    ):
        await a.start(saga, "s1")
        await gate.entered.wait()
        assert (await store.instance("s1")).owner == "a"

        # Recorded by a's actor, which owns the instance, and answered through the inbox.
        await b.cancel("s1", "customer changed their mind")
        assert "s1" not in b._actors
        gate.release.set()  # the attempt that had begun finishes first
        outcome = await b.handle("s1").outcome()
        assert "s1" not in b._actors
    assert outcome.status is Status.CANCELLED
    assert undone == ["s1"]
    types = [type(e.event).__name__ for e in await a.history("s1")]
    assert types.count("CancelRequested") == 1
    assert await store.inbox() == []  # answered and taken


async def test_a_rejected_command_comes_back_through_the_inbox(store: Any) -> None:
    gate = Gate()
    saga = saga_of(gate)
    async with (
        Coordinator(store, [saga], **node("a")) as a,
        Coordinator(store, [saga], **node("b")) as b,
    ):
        await a.start(saga, "s1")
        await gate.entered.wait()
        with pytest.raises(CommandRejected, match="only a suspended saga") as caught:
            await b.resume("s1")
        assert caught.value.status == "running"
        gate.release.set()
        assert (await a.handle("s1").outcome()).status is Status.COMPLETED


async def test_a_graceful_exit_hands_instances_over_at_once(store: Any) -> None:
    gate = Gate()
    saga = saga_of(gate)
    # A lease far longer than the test: only the release at exit lets b take over.
    slow_expiry = LeasePolicy(duration=600.0, renew_every=200.0, poll_interval=0.05)
    async with Coordinator(store, [saga], node="b", leases=slow_expiry) as b:
        async with Coordinator(store, [saga], node="a", leases=slow_expiry) as a:
            await a.start(saga, "s1")
            await gate.entered.wait()
        row = await store.instance("s1")
        assert row.owner in (None, "b")
        gate.calls.clear()
        gate.release.set()
        outcome = await b.handle("s1").outcome()
        assert b._keeper.claimed >= 1
    assert outcome.status is Status.COMPLETED
    assert gate.calls == [("s1", 1)]  # re-run by b with the same attempt number


async def test_a_commit_from_a_stale_owner_is_refused_and_its_actor_stops(store: Any) -> None:
    # (recover=False below: "a" takes nothing over by itself, so it cannot claim the lease
    # back between the thief's release and acquire.)
    gate = Gate()
    saga = saga_of(gate)
    async with Coordinator(store, [saga], recover=False, **node("a")) as a:
        await a.start(saga, "s1")
        await gate.entered.wait()
        before = await store.load("s1")
        # Another node takes the lease while a is "frozen" inside the step.
        await store.release("a", {"s1": before[0].epoch})
        stolen = await store.acquire("s1", "thief", lease=600.0)
        assert stolen.owner == "thief" and stolen.epoch == before[0].epoch + 1
        gate.release.set()  # a's step completes; its commit carries the old epoch
        await eventually(lambda: "s1" not in a._actors)
        assert a.fenced == 1
        assert a._keeper.lost == 1
        assert a.restarts == 0  # lost, not crashed: never restarted
        after = await store.load("s1")
        assert after[0] == stolen
        assert [r.sequence for r in after[1]] == [r.sequence for r in before[1]]


async def test_renewal_stops_an_actor_whose_lease_was_taken(store: Any) -> None:
    gate = Gate()
    saga = saga_of(gate)
    async with Coordinator(store, [saga], recover=False, **node("a")) as a:
        await a.start(saga, "s1")
        await gate.entered.wait()
        row = await store.instance("s1")
        await store.release("a", {"s1": row.epoch})
        await store.acquire("s1", "thief", lease=600.0)
        await a._keeper.renew()
        await eventually(lambda: "s1" not in a._actors)
        assert a._keeper.lost == 1
        assert a.fenced == 0  # stopped before it tried to write
        assert (await store.instance("s1")).owner == "thief"


async def test_a_lease_taken_back_is_finished_by_whoever_claims_it(store: Any) -> None:
    gate = Gate()
    saga = saga_of(gate)
    async with Coordinator(store, [saga], recover=False, **node("a")) as a:
        await a.start(saga, "s1")
        await gate.entered.wait()
        row = await store.instance("s1")
        await store.release("a", {"s1": row.epoch})
        thief = await store.acquire("s1", "thief", lease=600.0)
        await a._keeper.renew()  # a's actor stops
        await eventually(lambda: "s1" not in a._actors)
        gate.release.set()
        await store.release("thief", {"s1": thief.epoch})
        assert await a.recover() == 1  # ...and a claims it again
        outcome = await a.handle("s1").outcome()
    assert outcome.status is Status.COMPLETED
    history = [type(e.event).__name__ for e in await a.history("s1")]
    assert history.count("StepCompleted") == 2


async def test_a_command_reaches_an_instance_whose_owner_is_gone(store: Any) -> None:
    gate, undone = Gate(), []
    saga = saga_of(gate, undone)
    # An instance left by a dead node whose lease is still live: the command waits in
    # the inbox until the lease is free, then the sender takes the instance and handles it.
    await _create(store, saga, "s1", owner="ghost")
    async with Coordinator(store, [saga], **node("b")) as b:
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.cancel, "s1", "the ghost will not do it")
            await eventually(lambda: store.inbox(saga_id="s1"))
            assert "s1" not in b._actors  # still the ghost's
            await store.release("ghost", {"s1": 1})
        outcome = await b.handle("s1").outcome()
    assert outcome.status is Status.CANCELLED
    assert gate.calls == []  # cancelled before its second step began


async def test_resume_from_another_node_takes_the_suspended_instance(store: Any) -> None:
    gate = Gate()
    gate.release.set()
    saga = saga_of(gate)
    # Parked by node "a" (its lease ended with the suspension), then "a" went away.
    await _create(store, saga, "s1", owner="a")
    await store.commit(
        record(
            "s1",
            2,
            (ev.SagaSuspended(reason="operator"),),
            status=Status.SUSPENDED,
            at=1.0,
            epoch=1,
        )
    )
    assert (await store.instance("s1")).owner is None
    async with Coordinator(store, [saga], **node("b")) as b:
        await b.resume("s1")
        outcome = await b.handle("s1").outcome()
        row = await store.instance("s1")
    assert outcome.status is Status.COMPLETED
    assert row.epoch == 2  # b took it (epoch 1 was a's)
    assert row.owner is None


async def test_start_of_an_instance_another_node_owns_does_not_take_it(store: Any) -> None:
    gate = Gate()
    saga = saga_of(gate)
    async with (
        Coordinator(store, [saga], **node("a")) as a,
        Coordinator(store, [saga], **node("b")) as b,
    ):
        await a.start(saga, "s1")
        await gate.entered.wait()
        await b.start(saga, "s1")
        assert "s1" not in b._actors
        row = await store.instance("s1")
        assert (row.owner, row.epoch) == ("a", 1)
        gate.release.set()
        assert (await b.handle("s1").outcome()).status is Status.COMPLETED
    assert gate.calls == [("s1", 1)]


async def test_ended_instances_hold_no_lease(store: Any) -> None:
    gate = Gate()
    gate.release.set()
    saga = saga_of(gate)
    async with Coordinator(store, [saga], **node("a")) as a:
        await a.start(saga, "s1")
        await a.handle("s1").outcome()
        row = await store.instance("s1")
    assert (row.owner, row.lease_until) == (None, None)
    assert row.epoch == 1
    assert isinstance((await a.history("s1"))[-1].event, ev.SagaCompleted)


class _Partitioned(MemoryStore):
    """A store this node cannot renew its leases on while ``cut`` is set: the renewal
    fails at once, or (``hang``) never answers, as over a network that drops packets."""

    def __init__(self, hang: bool) -> None:
        super().__init__()
        self.cut = False
        self.hang = hang
        self.healed = anyio.Event()

    async def renew(self, *args: Any, **kw: Any) -> Any:
        if self.cut:
            if not self.hang:
                raise StoreUnavailableError("network partition")
            await self.healed.wait()
        return await super().renew(*args, **kw)


@pytest.mark.parametrize("hang", [False, True], ids=["fails", "hangs"])
async def test_a_node_that_cannot_renew_stops_its_actors_by_itself(hang: bool) -> None:
    store = _Partitioned(hang)
    gate = Gate()
    saga = saga_of(gate)
    short = LeasePolicy(duration=0.3, renew_every=0.1, poll_interval=0.02)
    async with Coordinator(store, [saga], node="a", leases=short) as a:
        await a.start(saga, "s1")
        await gate.entered.wait()
        store.cut = True
        # Past its lease it can no longer assume the instance is its own: it stops the
        # actor rather than let a step it runs overlap with a successor's.
        await eventually(lambda: "s1" not in a._actors)
        assert a._keeper.lost == 1
        assert a._keeper.renew_failures >= (0 if hang else 1)
        store.cut = False
        store.healed.set()
        gate.release.set()
        outcome = await a.handle("s1").outcome()  # taken back once the lease lapsed
    assert outcome.status is Status.COMPLETED
    assert gate.calls == [("s1", 1), ("s1", 1)]


async def test_a_restarted_node_takes_back_more_than_a_batch_of_its_own_at_once(
    store: Any,
) -> None:
    # Its previous run (same node name) left more live leases than one claim batch: the
    # new run takes each back once (one new epoch each), instead of the first batch over
    # and over, and finishes them all without waiting for a lease to expire.
    gate = Gate()
    gate.release.set()
    saga = saga_of(gate)
    ids = [f"own-{i}" for i in range(7)]
    for saga_id in ids:
        await _create(store, saga, saga_id, owner="a")
    policy = LeasePolicy(duration=600.0, renew_every=200.0, poll_interval=0.05, claim_batch=2)
    with anyio.fail_after(30):  # the entry looped forever before the claim cursor
        async with Coordinator(store, [saga], node="a", leases=policy) as c:
            for saga_id in ids:
                assert (await c.handle(saga_id).outcome()).status is Status.COMPLETED
    assert {(await store.instance(i)).epoch for i in ids} == {2}
