"""Between decisions and store records: encoding transitions, decoding histories."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import attrs

from saga._core import events as ev
from saga._core import messages as msg
from saga._core.codec import decode_event, encode_command, encode_event
from saga._core.decide import Decision, wake_at
from saga._core.definition import SagaDefinition
from saga._core.effects import Finish
from saga._core.events import Phase
from saga._core.fit import check_fits
from saga._core.snapshot import encode_snapshot
from saga._core.state import SagaState, Status, evolve, fold
from saga._store.port import (
    ACTIVE_STATUSES,
    EventRecord,
    InboxRecord,
    InstanceRecord,
    Reply,
    TaskRecord,
    Transition,
)
from saga.errors import CorruptHistoryError

__all__ = [
    "RecordedEvent",
    "decode_history",
    "record",
    "replay",
    "replay_after",
    "snapshot_for",
    "task_id",
    "transition",
]


@attrs.frozen(kw_only=True)
class RecordedEvent:
    """One event of an instance's history, as read back from the store."""

    sequence: int
    recorded_at: float
    event: Any


def task_id(saga_id: str, phase: Phase, step: str, attempt: int) -> str:
    return f"{saga_id}/{phase.value}/{step}/{attempt}"


def _work(
    saga_id: str, events: Sequence[ev.Event]
) -> tuple[tuple[TaskRecord, ...], tuple[str, ...]]:
    """The work items the events create, and the ids of those they settle."""
    new: list[TaskRecord] = []
    done: list[str] = []
    for event in events:
        match event:
            case ev.StepScheduled() | ev.CompensationScheduled():
                phase = Phase.ACTION if isinstance(event, ev.StepScheduled) else Phase.COMPENSATION
                new.append(
                    TaskRecord(
                        task_id=task_id(saga_id, phase, event.step, event.attempt),
                        saga_id=saga_id,
                        kind=phase.value,
                        step=event.step,
                        attempt=event.attempt,
                        run_after=event.run_after,
                    )
                )
            case ev.StepCompleted() | ev.StepFailed():
                done.append(task_id(saga_id, Phase.ACTION, event.step, event.attempt))
            case ev.CompensationCompleted() | ev.CompensationFailed():
                done.append(task_id(saga_id, Phase.COMPENSATION, event.step, event.attempt))
    # Created and settled by one transition (a wait whose signal had come): never stored.
    settled = set(done)
    return tuple(t for t in new if t.task_id not in settled), tuple(done)


def transition(
    definition: SagaDefinition,
    before: int,
    decision: Decision,
    *,
    at: float,
    epoch: int,
    replies: tuple[Reply, ...] = (),
    snapshot: str | None = None,
) -> Transition:
    """The store transition of ``decision``, taken when the instance was at ``before``
    (with ``snapshot``, the encoded ``decision.state``, if one is due). A child saga's
    transition to its end carries the message that tells its parent."""
    state = decision.state
    t = record(
        state.saga_id,
        before,
        decision.events,
        status=state.status,
        at=at,
        epoch=epoch,
        replies=replies,
        wake_at=wake_at(definition, state, at),
        snapshot=snapshot,
    )
    if state.parent is not None and any(isinstance(e, Finish) for e in decision.effects):
        t = attrs.evolve(t, messages=(parent_notice(state, at),))
    return t


def inbox_key(kind: str, *parts: str) -> str:
    """An inbox message id, one per ``(kind, *parts)`` whatever their lengths: a resend
    writes nothing."""
    raw = "\x00".join((kind, *parts)).encode()
    return f"{kind}:{hashlib.blake2b(raw, digest_size=16).hexdigest()}"


def signal_key(saga_id: str, message_id: str) -> str:
    """The inbox key of a signal: one per (instance, message id)."""
    return inbox_key("signal", saga_id, message_id)


def parent_notice(state: SagaState, at: float) -> InboxRecord:
    """The inbox message telling a child saga's parent how the child ended."""
    assert state.parent is not None
    finished = msg.ChildFinished(
        step=state.parent.step,
        child_id=state.saga_id,
        status=state.status.value,
        results=dict(state.results),
        reason=state.reason,
    )
    return InboxRecord(
        message_id=inbox_key("child", state.saga_id),
        saga_id=state.parent.saga_id,
        sender=state.saga_id,  # nobody waits for an answer
        body=encode_command(finished),
        created_at=at,
    )


def snapshot_for(
    definition: SagaDefinition,
    before: int,
    state: SagaState,
    *,
    every: int | None,
    stale: bool = False,
    vouched: bool = True,
) -> str | None:
    """The snapshot a commit taking an instance from ``before`` events to ``state`` carries,
    or None: one every ``every`` events (the commit crosses a multiple of it), and one
    whenever the instance's latest snapshot is ``stale`` (see ``Coordinator._load``).
    ``vouched``: the history is known to fit ``definition``; else the snapshot vouches for
    no definition."""
    crosses = every is not None and before // every != state.sequence // every
    if not (crosses or stale):
        return None
    return encode_snapshot(state, definition if vouched else None)


def record(
    saga_id: str,
    before: int,
    events: Sequence[ev.Event],
    *,
    status: Status,
    at: float,
    epoch: int,
    replies: tuple[Reply, ...] = (),
    wake_at: float | None = None,
    snapshot: str | None = None,
) -> Transition:
    """The store transition appending ``events`` after sequence ``before``, written by the
    holder of lease ``epoch``; it ends the lease when the instance needs no driver, and
    wakes it at ``wake_at`` (see ``Transition.wake_at``)."""
    records = tuple(
        EventRecord(
            saga_id=saga_id,
            sequence=before + i,
            type=type_name,
            schema=schema,
            data=data,
            recorded_at=at,
        )
        for i, (type_name, schema, data) in enumerate(map(encode_event, events), 1)
    )
    new, done = _work(saga_id, events)
    return Transition(
        saga_id=saga_id,
        expected_sequence=before,
        events=records,
        status=status.value,
        at=at,
        new_tasks=new,
        done_tasks=done,
        epoch=epoch,
        ends_lease=status.value not in ACTIVE_STATUSES,
        replies=replies,
        wake_at=wake_at,
        snapshot=snapshot,
    )


def decode_history(
    saga_id: str, records: Sequence[EventRecord], *, first: int = 1
) -> list[RecordedEvent]:
    """Decoded events, checked to run ``first``, ``first + 1``... (1, 2, 3... for a whole
    history) without a gap.

    Raises:
        CorruptHistoryError: a row cannot be decoded, or a sequence is missing.
    """
    out = []
    for expected, record in enumerate(records, first):
        if record.sequence != expected:
            raise CorruptHistoryError(
                saga_id, sequence=expected, reason=f"gap: next stored sequence is {record.sequence}"
            )
        try:
            event = decode_event(record.type, record.schema, record.data)
        except ValueError as exc:
            raise CorruptHistoryError(saga_id, sequence=expected, reason=str(exc)) from exc
        out.append(RecordedEvent(sequence=expected, recorded_at=record.recorded_at, event=event))
    return out


def replay(
    saga_id: str,
    records: Sequence[EventRecord],
    row: InstanceRecord | None = None,
    *,
    definition: SagaDefinition | None = None,
) -> SagaState:
    """The state a history leads to, checked against the instance row when given, and
    against ``definition`` (the one to drive it with) when given.

    Raises:
        CorruptHistoryError: the history does not decode, does not replay, or disagrees
            with the instance row.
        NonDeterminismError: it does not fit ``definition`` (see ``saga._core.fit``).
    """
    events = [r.event for r in decode_history(saga_id, records)]
    if not events:
        raise CorruptHistoryError(saga_id, sequence=1, reason="the history is empty")
    try:
        state = fold(saga_id, events)
    except (ValueError, TypeError, AssertionError) as exc:
        raise CorruptHistoryError(saga_id, sequence=1, reason=f"does not replay: {exc}") from exc
    if row is not None:
        _check_row(state, row)
    if definition is not None:
        check_fits(definition, saga_id, events)
    return state


def replay_after(
    snapshot: SagaState, records: Sequence[EventRecord], row: InstanceRecord
) -> SagaState:
    """The state the events after a snapshot lead to, checked against the instance row.

    ``records`` must run on from the snapshot's sequence without a gap. Not checked against
    a definition: that is the snapshot's fingerprint's business (see ``Coordinator._load``).

    Raises:
        CorruptHistoryError: the events do not decode, do not follow the snapshot, or do not
            apply to it; or the result disagrees with the row.
    """
    saga_id = snapshot.saga_id
    state = snapshot
    for recorded in decode_history(saga_id, records, first=snapshot.sequence + 1):
        try:
            state = evolve(state, recorded.event)
        except (ValueError, TypeError, AssertionError) as exc:
            raise CorruptHistoryError(
                saga_id, sequence=recorded.sequence, reason=f"does not replay: {exc}"
            ) from exc
    _check_row(state, row)
    return state


def _check_row(state: SagaState, row: InstanceRecord) -> None:
    if (row.sequence, row.status) != (state.sequence, state.status.value):
        raise CorruptHistoryError(
            state.saga_id,
            sequence=state.sequence,
            reason=f"replay gives {state.status.value} at {state.sequence}, "
            f"the instance row says {row.status} at {row.sequence}",
        )
