"""Snapshots at run time: an instance is rebuilt from its latest snapshot and the events
after it, and ends exactly as without one; a definition changed in place is checked against
the whole history, as without snapshots.

Every store, on asyncio and trio. A "restart" is a coordinator leaving and another one
entering on the same store: the second rebuilds the instance (``load_recent``) and goes on.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import attrs
import pytest

from saga import (
    Coordinator,
    RetryPolicy,
    SagaDefinition,
    Status,
    Step,
    StepContext,
    SupervisionPolicy,
)
from saga._core.snapshot import decode_snapshot, fingerprint
from saga._store.port import EventRecord, InstanceRecord, SnapshotRecord, Transition

pytestmark = pytest.mark.anyio

#: The flaky step's failures: enough retries to take the history past a few snapshots.
FAILURES = 11
#: Retried at once, forever: the history grows by two events (failed, scheduled) a try.
FAST = RetryPolicy(max_attempts=None, initial_interval=0.001, max_interval=0.001, jitter=0.0)
QUICK = SupervisionPolicy(max_restarts=2, within=60, initial_backoff=0.001, max_backoff=0.001)


async def ok(ctx: StepContext) -> str:
    return ctx.step


async def flaky(ctx: StepContext) -> int:
    if ctx.attempt <= FAILURES:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return ctx.attempt


class Gate:
    """A step action that hangs: the process "stops" while it runs."""

    def __init__(self) -> None:
        self.began = anyio.Event()

    async def __call__(self, ctx: StepContext) -> None:
        self.began.set()
        await anyio.sleep_forever()


def order(
    *, hold: Any = ok, end: Any = ok, renamed: dict[str, str] | None = None
) -> SagaDefinition:
    """first (undo) -> flaky (retried) -> hold -> last -> end, steps renamed as asked (the
    version stays 1: a definition changed in place)."""
    names = {"first": "first", "last": "last", "hold": "hold", **(renamed or {})}
    return SagaDefinition(
        "order",
        [
            Step(name=names["first"], action=ok, compensation=ok),
            Step(name="flaky", action=flaky, retry=FAST),
            Step(name=names["hold"], action=hold),
            Step(name=names["last"], action=ok),
            Step(name="end", action=end),
        ],
    )


@attrs.define
class Recorder:
    """Wraps a store: keeps what ``load_recent`` and ``load`` returned, and every commit."""

    inner: Any
    recent: list[tuple[InstanceRecord, SnapshotRecord | None, list[EventRecord]]] = attrs.field(
        factory=list
    )
    loads: list[str] = attrs.field(factory=list)
    commits: list[Transition] = attrs.field(factory=list)

    async def load_recent(
        self, saga_id: str
    ) -> tuple[InstanceRecord, SnapshotRecord | None, list[EventRecord]] | None:
        found = await self.inner.load_recent(saga_id)
        if found is not None:
            self.recent.append((found[0], found[1], list(found[2])))
        return found  # type: ignore[no-any-return]

    async def load(self, saga_id: str) -> Any:
        self.loads.append(saga_id)
        return await self.inner.load(saga_id)

    async def commit(self, transition: Transition) -> None:
        await self.inner.commit(transition)
        self.commits.append(transition)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def shape(history: Any) -> list[tuple[str, Any, Any]]:
    """A history without its times (backoff jitter depends on the saga id)."""
    return [
        (type(e.event).__name__, getattr(e.event, "step", None), getattr(e.event, "attempt", None))
        for e in history
    ]


async def interrupted(store: Any, saga_id: str, every: int | None, **options: Any) -> Gate:
    """Start ``saga_id`` and stop the coordinator while its step ``hold`` runs."""
    gate = Gate()
    async with Coordinator(store, [order(hold=gate)], snapshot_every=every, **options) as c:
        await c.start("order", saga_id)
        await gate.began.wait()
    return gate


async def test_an_instance_is_rebuilt_from_its_snapshot_and_ends_as_without_one(
    store: Any,
) -> None:
    recorder = Recorder(store)
    outcomes = {}
    histories = {}
    for saga_id, every in (("with", 5), ("without", None)):
        await interrupted(recorder, saga_id, every)
        async with Coordinator(recorder, [order()], snapshot_every=every) as c:
            outcomes[saga_id] = await c.handle(saga_id).outcome()
            histories[saga_id] = await c.history(saga_id)

    (row, snapshot, tail), (_, none, everything) = (
        next(r for r in recorder.recent if r[0].saga_id == saga_id)
        for saga_id in ("with", "without")
    )
    # 2 events to start, 2 for "first", 2 per failure of "flaky", 2 when it succeeds: 28.
    # Snapshots were taken at the commits crossing 5, 10...: the last one reached 26.
    assert row.sequence == 28 and snapshot is not None
    assert snapshot.sequence == 26
    assert [e.sequence for e in tail] == [27, 28]  # not the whole history
    assert none is None and len(everything) == 28
    assert recorder.loads.count("with") == 1  # only by history(): not to rebuild it

    # Ends exactly as without snapshots: same events, same outcome.
    assert shape(histories["with"]) == shape(histories["without"])
    assert [e.sequence for e in histories["with"]] == list(range(1, 35))
    a, b = outcomes["with"], outcomes["without"]
    assert (
        (a.status, a.results)
        == (b.status, b.results)
        == (
            Status.COMPLETED,
            {"first": "first", "flaky": FAILURES + 1, "hold": "hold", "last": "last", "end": "end"},
        )
    )
    # The finished instance keeps its latest snapshot; the one without has none.
    latest = (await store.load_recent("with"))[1]
    assert latest is not None and latest.sequence == 30
    state, vouched = decode_snapshot(latest.data)
    assert (state.sequence, vouched) == (30, fingerprint(order()))
    assert (await store.load_recent("without"))[1] is None


async def test_query_and_load_state_use_the_snapshot_too(store: Any) -> None:
    recorder = Recorder(store)
    await interrupted(recorder, "s1", 5)
    async with Coordinator(recorder, [order()], snapshot_every=5, recover=False) as c:
        view = await c.query("s1")
        state = await c.load_state("s1")
        full = await c.history("s1")
    assert (view.status, state.sequence, len(full)) == (Status.RUNNING, 28, 28)
    assert state.completed == ("first", "flaky")
    assert recorder.loads == ["s1"]  # only history() read it all


@pytest.mark.parametrize("step", ["first", "hold"])
async def test_a_definition_changed_in_place_ignores_the_snapshot_and_parks(
    store: Any, step: str
) -> None:
    """``first`` completed long before the snapshot: only the whole history shows it ran.
    ``hold`` was in flight: the snapshot's state names it, the definition does not."""
    recorder = Recorder(store)
    await interrupted(recorder, "s1", 5)
    changed = order(renamed={step: f"{step}_v2"})
    async with Coordinator(recorder, [changed], snapshot_every=5, supervision=QUICK) as c:
        handle = c.handle("s1")
        assert await handle.settle() is Status.SUSPENDED
        state = await handle.state()
    assert recorder.recent[0][1] is not None  # there was a snapshot, and it was not used:
    assert recorder.loads[0] == "s1"  # the whole history was read and checked instead
    assert state.suspension is not None
    assert "NonDeterminismError" in state.suspension
    assert f"'{step}'" in state.suspension


async def test_events_written_by_another_definition_are_checked_after_a_snapshot(
    store: Any,
) -> None:
    """A process with a definition changed in place (``last`` renamed: the history still
    fits it) drives the instance on; an old process then finds events its definition does
    not have after the snapshot it wrote. The newer process's first commit replaced that
    snapshot, so the old one checks the whole history and parks the instance, instead of
    taking the events after its own snapshot on trust and driving on."""
    recorder = Recorder(store)
    # Every 13 events: the old definition's snapshot is at 26, and the newer process
    # takes the history from 28 to 32 without reaching the next multiple.
    await interrupted(recorder, "s1", 13)
    newer = Gate()
    changed = order(end=newer, renamed={"last": "last_v2"})
    async with Coordinator(recorder, [changed], snapshot_every=13) as c:
        await newer.began.wait()  # "hold" and "last_v2" completed, "end" runs
    assert recorder.recent[-1][1] is not None and recorder.recent[-1][1].sequence == 26
    first, second = (t for t in recorder.commits if t.expected_sequence >= 28)
    assert first.snapshot is not None  # at once, not at the next multiple of 13
    assert decode_snapshot(first.snapshot)[1] == fingerprint(changed)
    assert second.snapshot is None

    async with Coordinator(recorder, [order()], snapshot_every=13, supervision=QUICK) as c:
        handle = c.handle("s1")
        assert await handle.settle() is Status.SUSPENDED
        state = await handle.state()
    assert state.suspension is not None
    assert "NonDeterminismError" in state.suspension and "'last_v2'" in state.suspension


async def test_a_resume_by_another_definition_writes_a_snapshot_that_vouches_for_none(
    store: Any,
) -> None:
    """An instance parked by a definition it does not fit is resumed by a process with one
    it fits: the resume is decided without checking the history (the actor it starts checks
    it), so the snapshot it writes vouches for no definition; the actor's first commit then
    writes one that vouches for its own."""
    recorder = Recorder(store)
    await interrupted(recorder, "s1", 5)
    async with Coordinator(
        recorder, [order(renamed={"first": "first_v2"})], supervision=QUICK
    ) as c:
        assert await c.handle("s1").settle() is Status.SUSPENDED
    fixed = order(renamed={"last": "last_v2"})  # fits: "last" never ran
    recorder.commits.clear()
    async with Coordinator(recorder, [fixed], snapshot_every=5) as c:
        await c.resume("s1")
        outcome = await c.handle("s1").outcome()
    assert outcome.status is Status.COMPLETED and "last_v2" in outcome.results
    resumed, after = recorder.commits[0], recorder.commits[1]
    assert resumed.snapshot is not None and decode_snapshot(resumed.snapshot)[1] == ""
    assert after.snapshot is not None and decode_snapshot(after.snapshot)[1] == fingerprint(fixed)


async def test_a_snapshot_that_cannot_be_used_is_ignored_with_a_warning(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await interrupted(store, "s1", 5)
    row = await store.instance("s1")
    assert row is not None and row.owner is None
    # A snapshot of another format, written with an empty commit (no events, same row).
    await store.commit(
        Transition(
            saga_id="s1",
            expected_sequence=row.sequence,
            events=(),
            status=row.status,
            at=row.updated_at,
            epoch=row.epoch,
            wake_at=row.wake_at,
            snapshot='{"format": 99}',
        )
    )
    with caplog.at_level(logging.WARNING, logger="saga"):
        async with Coordinator(store, [order()], snapshot_every=5) as c:
            outcome = await c.handle("s1").outcome()
    assert outcome.status is Status.COMPLETED
    assert any("snapshot at event 28 not used" in r.getMessage() for r in caplog.records)
    latest = (await store.load_recent("s1"))[1]
    assert latest is not None and latest.sequence == 30  # replaced by the next commit
    assert decode_snapshot(latest.data)[1] == fingerprint(order())


async def test_with_snapshot_every_none_none_are_taken(store: Any) -> None:
    async with Coordinator(store, [order()], snapshot_every=None) as c:
        assert (await (await c.start("order", "s1")).outcome()).status is Status.COMPLETED
    row, snapshot, events = await store.load_recent("s1")
    assert (row.sequence, snapshot, len(events)) == (34, None, 34)


async def test_every_commit_may_take_one(store: Any) -> None:
    async with Coordinator(store, [order()], snapshot_every=1) as c:
        await (await c.start("order", "s1")).outcome()
        state = await c.load_state("s1", definition=order())
    _, snapshot, events = await store.load_recent("s1")
    assert snapshot is not None and (snapshot.sequence, events) == (34, [])
    assert decode_snapshot(snapshot.data)[0] == state


@pytest.mark.parametrize("every", [0, -1, True, 2.5, "5"])
async def test_snapshot_every_is_checked(store: Any, every: Any) -> None:
    with pytest.raises(ValueError, match="snapshot_every"):
        Coordinator(store, [order()], snapshot_every=every)
