"""Snapshots: a state survives encoding exactly, the fingerprint follows the fit rules, and
anything that is not a snapshot of this format is refused with ValueError."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from functools import reduce
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga._core import messages as msg
from saga._core.decide import decide, start
from saga._core.definition import (
    ChildSaga,
    OnTimeout,
    Parallel,
    ParentClose,
    RetryPolicy,
    SagaDefinition,
    Sleep,
    Step,
    StepKind,
    WaitForSignal,
)
from saga._core.events import ErrorInfo, ParentRef, Phase, SignalReceived
from saga._core.snapshot import FORMAT, decode_snapshot, encode_snapshot, fingerprint
from saga._core.state import Attempt, SagaState, Status, evolve, fold
from saga.errors import CommandRejected
from tests.core.strategies import definitions, policies
from tests.core.test_properties import Run, runs

SETTINGS = settings(max_examples=200, deadline=None)


async def _fn(ctx: Any) -> None:  # never called
    raise AssertionError


async def _other(ctx: Any) -> None:  # never called
    raise AssertionError


def assert_round_trip(state: SagaState, definition: SagaDefinition | None) -> None:
    text = encode_snapshot(state, definition)
    decoded, found = decode_snapshot(text)
    assert decoded == state
    assert found == ("" if definition is None else fingerprint(definition))
    # Field by field too: == on attrs classes compares tuples to tuples, so a list or a set
    # where the state holds a tuple or a frozenset would show here.
    for field in attrs.fields(SagaState):
        ours, theirs = getattr(state, field.name), getattr(decoded, field.name)
        assert type(theirs) is type(ours), field.name
        assert theirs == ours, field.name
    assert encode_snapshot(decoded, definition) == text  # canonical: the same text again


# -- the round trip, on states the decider reaches ----------------------------------------


@SETTINGS
@given(runs())
def test_every_state_of_a_run_survives_a_snapshot(run: Run) -> None:
    for _, state in run.checkpoints():
        assert_round_trip(state, run.definition)


@SETTINGS
@given(runs(), st.data())
def test_a_snapshot_and_the_events_after_it_replay_to_the_live_state(
    run: Run, data: st.DataObject
) -> None:
    checkpoints = list(run.checkpoints())
    events, state = data.draw(st.sampled_from(checkpoints))
    assert fold(run.saga_id, events) == state
    decoded, _ = decode_snapshot(encode_snapshot(state, run.definition))
    tail = run.history[len(events) :]
    assert reduce(evolve, tail, decoded) == run.state == fold(run.saga_id, run.history)


def _waiting_saga() -> SagaDefinition:
    return SagaDefinition(
        "approval",
        [
            Step(name="reserve", action=_fn, compensation=_fn),
            Step(name="approve", wait=WaitForSignal("approve", timeout=30.0)),
            Step(name="cool_off", wait=Sleep(5.0)),
            Step(
                name="confirm",
                wait=WaitForSignal(
                    "confirm", timeout=10.0, on_timeout=OnTimeout.CONTINUE, timeout_result=[1]
                ),
            ),
            Step(name="ship", action=_fn),
        ],
    )


_payloads = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@st.composite
def waiting_states(draw: st.DrawFn) -> list[SagaState]:
    """Every state of an instance of a saga with waits, fed signals (early, late, repeated,
    unknown), timers, outcomes, suspensions and cancels."""
    definition = _waiting_saga()
    decision = start(definition, "w-1", msg.StartSaga(input=draw(_payloads)), now=0.0)
    state, states, now = decision.state, [decision.state], 0.0
    ids = ["m1", "m2", "m3", "m4"]
    for _ in range(draw(st.integers(0, 25))):
        now += draw(st.sampled_from([0.0, 1.0, 20.0]))
        kind = draw(st.sampled_from(["signal", "outcome", "timer", "suspend", "cancel"]))
        message: msg.Message
        if kind == "signal":
            message = msg.SignalSaga(
                name=draw(st.sampled_from(["approve", "confirm", "other"])),
                payload=draw(_payloads),
                message_id=draw(st.sampled_from(ids)),
            )
        elif kind in ("outcome", "timer") and state.in_flight:
            a = draw(st.sampled_from(state.in_flight))
            if kind == "timer":
                message = msg.FireTimer(step=a.step, attempt=a.attempt)
            elif draw(st.booleans()):
                message = msg.CompleteAttempt(
                    phase=a.phase, step=a.step, attempt=a.attempt, result=draw(_payloads)
                )
            else:
                message = msg.FailAttempt(
                    phase=a.phase,
                    step=a.step,
                    attempt=a.attempt,
                    error=ErrorInfo("builtins.RuntimeError", "boom"),
                    retryable=draw(st.booleans()),
                )
        elif kind == "suspend":
            message = (
                msg.ResumeSaga()
                if state.status is Status.SUSPENDED
                else msg.SuspendSaga(reason="op")
            )
        else:
            message = msg.CancelSaga(reason="user")
        try:
            decision = decide(definition, state, message, now)
        except CommandRejected:
            continue
        state = decision.state
        states.append(state)
    return states


@SETTINGS
@given(waiting_states())
def test_states_with_signals_and_waits_survive_a_snapshot(states: list[SagaState]) -> None:
    for state in states:
        assert_round_trip(state, _waiting_saga())


_names = st.text("abcxyz_", min_size=1, max_size=4)

#: Any state at all, with every field away from its default at times.
any_states = st.builds(
    SagaState,
    saga_id=st.text(min_size=1, max_size=8),
    saga=_names,
    version=st.integers(1, 5),
    input=_payloads,
    status=st.sampled_from(Status),
    sequence=st.integers(1, 10**6),
    results=st.dictionaries(_names, _payloads, max_size=3),
    completed=st.lists(_names, max_size=3).map(tuple),
    compensated=st.lists(_names, max_size=3).map(tuple),
    in_flight=st.lists(
        st.builds(
            Attempt,
            phase=st.sampled_from(Phase),
            step=_names,
            attempt=st.integers(1, 100),
            run_after=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        ),
        max_size=3,
    ).map(tuple),
    cancel_reason=st.none() | st.text(max_size=5),
    cancelled=st.booleans(),
    reason=st.none() | st.text(max_size=5),
    pending=st.lists(_names, max_size=3).map(tuple),
    resume_to=st.none() | st.sampled_from(Status),
    suspension=st.none() | st.text(max_size=5),
    signals=st.lists(
        st.builds(SignalReceived, name=_names, payload=_payloads, message_id=st.text(max_size=5)),
        max_size=3,
    ).map(tuple),
    signal_ids=st.frozensets(st.text(max_size=5), max_size=4),
    parent=st.none() | st.builds(ParentRef, saga_id=st.text(min_size=1, max_size=8), step=_names),
    cancelling=st.lists(st.text(max_size=8), max_size=3).map(tuple),
)


@SETTINGS
@given(any_states, st.booleans())
def test_any_state_survives_a_snapshot(state: SagaState, vouched: bool) -> None:
    assert_round_trip(state, _waiting_saga() if vouched else None)


def test_a_snapshot_is_canonical_json() -> None:
    state = SagaState(
        saga_id="s-1",
        saga="approval",
        version=1,
        input={"b": 1, "a": [1.5, None]},
        signal_ids=frozenset({"z", "a"}),
    )
    text = encode_snapshot(state, None)
    raw = json.loads(text)
    assert raw["format"] == FORMAT and raw["fingerprint"] == ""
    assert raw["state"]["signal_ids"] == ["a", "z"]
    assert " " not in text and text == json.dumps(raw, sort_keys=True, separators=(",", ":"))


# -- the fingerprint ---------------------------------------------------------------------


def shop(**changes: Any) -> SagaDefinition:
    """reserve (undo) -> approve (signal) -> charge (pivot) -> email (retriable)."""
    steps = {
        "reserve": Step(name="reserve", action=_fn, compensation=_fn),
        "approve": Step(name="approve", wait=WaitForSignal("ok")),
        "charge": Step(name="charge", action=_fn, kind=StepKind.PIVOT),
        "email": Step(name="email", action=_fn, kind=StepKind.RETRIABLE),
    }
    for name, change in changes.items():
        steps[name] = change(steps[name])
    return SagaDefinition("shop", list(steps.values()))


def _evolve(**fields: Any) -> Callable[[Step], Step]:
    return lambda step: attrs.evolve(step, **fields)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(shop(reserve=_evolve(retry=RetryPolicy(max_attempts=9))), id="retry"),
        pytest.param(
            shop(reserve=_evolve(compensation_retry=RetryPolicy(initial_interval=3.0))),
            id="compensation-retry",
        ),
        pytest.param(shop(charge=_evolve(timeout=5.0)), id="timeout"),
        pytest.param(shop(reserve=_evolve(action=_other, compensation=_other)), id="functions"),
        pytest.param(
            shop(approve=_evolve(wait=WaitForSignal("ok", timeout=9.0))), id="wait-timeout"
        ),
        pytest.param(
            shop(
                approve=_evolve(
                    wait=WaitForSignal(
                        "ok", timeout=9.0, on_timeout=OnTimeout.CONTINUE, timeout_result=1
                    )
                )
            ),
            id="wait-on-timeout",
        ),
    ],
)
def test_the_fingerprint_ignores_what_the_fit_rules_ignore(changed: SagaDefinition) -> None:
    assert fingerprint(changed) == fingerprint(shop())


def _renamed(step: Step) -> Step:
    return attrs.evolve(step, name="approve_v2")


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(SagaDefinition("shop2", shop().steps), id="saga-name"),
        pytest.param(SagaDefinition("shop", shop().steps, version=2), id="version"),
        pytest.param(shop(approve=_renamed), id="step-renamed"),
        pytest.param(
            SagaDefinition("shop", [shop().steps[i] for i in (1, 0, 2, 3)]), id="reordered"
        ),
        pytest.param(
            SagaDefinition("shop", [shop().steps[i] for i in (0, 1, 3)]), id="step-removed"
        ),
        pytest.param(
            SagaDefinition(
                "shop", [*shop().steps, Step(name="log", action=_fn, kind=StepKind.RETRIABLE)]
            ),
            id="step-appended",
        ),
        pytest.param(shop(reserve=_evolve(compensation=None)), id="compensation-dropped"),
        pytest.param(
            SagaDefinition(
                "shop",
                [
                    Step(name="reserve", action=_fn, compensation=_fn),
                    Step(name="approve", wait=WaitForSignal("ok")),
                    Step(name="charge", action=_fn, compensation=_fn),
                    Step(name="email", action=_fn, kind=StepKind.RETRIABLE),
                ],
            ),
            id="pivot-made-compensatable",
        ),
        pytest.param(shop(charge=_evolve(kind=StepKind.RETRIABLE)), id="kind"),
        pytest.param(shop(approve=_evolve(wait=WaitForSignal("yes"))), id="signal-renamed"),
        pytest.param(shop(approve=_evolve(wait=Sleep(1.0))), id="wait-kind"),
        pytest.param(shop(approve=_evolve(wait=None, action=_fn)), id="wait-to-action"),
        pytest.param(shop(approve=_evolve(wait=ChildSaga("approval"))), id="wait-to-child"),
        pytest.param(
            SagaDefinition("shop", [Parallel("both", shop().steps[:2]), *shop().steps[2:]]),
            id="grouped",
        ),
    ],
)
def test_the_fingerprint_changes_with_what_the_fit_rules_check(changed: SagaDefinition) -> None:
    assert fingerprint(changed) != fingerprint(shop())


def _child(**options: Any) -> SagaDefinition:
    return shop(approve=_evolve(wait=ChildSaga("approval", **options)))


def _grouped(limit: int | None) -> SagaDefinition:
    return SagaDefinition(
        "shop", [Parallel("both", shop().steps[:2], limit=limit), *shop().steps[2:]]
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(_child(), _child(on_parent_close=ParentClose.ABANDON), id="parent-close"),
        pytest.param(_child(), shop(approve=_evolve(wait=ChildSaga("other"))), id="child-saga"),
        pytest.param(_grouped(None), _grouped(2), id="group-limit"),
    ],
)
def test_the_fingerprint_tells_children_and_groups_apart(
    a: SagaDefinition, b: SagaDefinition
) -> None:
    assert fingerprint(a) != fingerprint(b)


def test_the_fingerprint_ignores_how_a_child_gets_its_input() -> None:
    assert fingerprint(_child()) == fingerprint(_child(input=lambda ctx: ctx.input))


@SETTINGS
@given(definitions(), st.data())
def test_the_fingerprint_is_stable_under_new_retry_policies(
    definition: SagaDefinition, data: st.DataObject
) -> None:
    redrawn = SagaDefinition(
        definition.name,
        [
            attrs.evolve(
                step,
                retry=data.draw(policies),
                compensation_retry=data.draw(policies),
                timeout=data.draw(st.none() | st.sampled_from([0.5, 30.0])),
            )
            for step in definition.steps
        ],
        version=definition.version,
    )
    assert fingerprint(redrawn) == fingerprint(definition)
    assert len(fingerprint(definition)) == 16 and int(fingerprint(definition), 16) >= 0


@SETTINGS
@given(definitions(), definitions())
def test_definitions_of_another_shape_have_another_fingerprint(
    a: SagaDefinition, b: SagaDefinition
) -> None:
    def shape(d: SagaDefinition) -> Any:
        return (
            d.name,
            d.version,
            [(s.name, s.kind, s.compensation is not None, s.group, s.group_limit) for s in d.steps],
        )

    assert (fingerprint(a) == fingerprint(b)) == (shape(a) == shape(b))


# -- what is not a snapshot ----------------------------------------------------------------


def _valid() -> dict[str, Any]:
    state = SagaState(
        saga_id="s-1",
        saga="shop",
        version=1,
        input=None,
        in_flight=(Attempt(phase=Phase.ACTION, step="reserve", attempt=1),),
    )
    raw: dict[str, Any] = json.loads(encode_snapshot(state, shop()))
    return raw


def _broken(change: Callable[[dict[str, Any]], Any]) -> str:
    raw = _valid()
    change(raw)
    return json.dumps(raw)


def _malformed() -> Iterator[Any]:
    yield pytest.param("", id="empty")
    yield pytest.param("{", id="not-json")
    yield pytest.param("null", id="null")
    yield pytest.param("[1, 2]", id="a-list")
    yield pytest.param('"text"', id="a-string")
    yield pytest.param(_broken(lambda r: r.pop("format")), id="no-format")
    yield pytest.param(_broken(lambda r: r.update(format=2)), id="newer-format")
    yield pytest.param(_broken(lambda r: r.update(format=True)), id="format-true")
    yield pytest.param(_broken(lambda r: r.update(fingerprint=7)), id="fingerprint-not-str")
    yield pytest.param(_broken(lambda r: r.update(extra=1)), id="extra-key")
    yield pytest.param(_broken(lambda r: r.update(state=[])), id="state-not-object")
    yield pytest.param(_broken(lambda r: r["state"].pop("status")), id="field-missing")
    yield pytest.param(_broken(lambda r: r["state"].update(color="red")), id="field-extra")
    yield pytest.param(_broken(lambda r: r["state"].update(status="asleep")), id="bad-enum")
    yield pytest.param(_broken(lambda r: r["state"].update(sequence="7")), id="str-for-int")
    yield pytest.param(_broken(lambda r: r["state"].update(sequence=None)), id="null-for-int")
    yield pytest.param(_broken(lambda r: r["state"].update(completed="ab")), id="str-for-tuple")
    yield pytest.param(_broken(lambda r: r["state"].update(signal_ids=3)), id="int-for-set")
    yield pytest.param(
        _broken(lambda r: r["state"].update(signal_ids=["b", "a"])), id="set-not-canonical"
    )
    yield pytest.param(_broken(lambda r: r["state"].update(results=[1])), id="list-for-map")
    yield pytest.param(
        _broken(lambda r: r["state"]["in_flight"][0].update(phase="sideways")), id="bad-phase"
    )
    yield pytest.param(
        _broken(lambda r: r["state"]["in_flight"][0].pop("step")), id="attempt-field-missing"
    )
    yield pytest.param(
        _broken(lambda r: r["state"].update(signals=[{"name": "x"}])), id="signal-fields-missing"
    )


@pytest.mark.parametrize("text", list(_malformed()))
def test_what_is_not_a_snapshot_is_refused_with_value_error(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is ValueError, any message
        decode_snapshot(text)


def test_the_valid_snapshot_the_malformed_ones_come_from_decodes() -> None:
    state, found = decode_snapshot(json.dumps(_valid()))
    assert found == fingerprint(shop()) and state.in_flight[0].step == "reserve"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.binary(max_size=30).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_decodes_or_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        decode_snapshot(text)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_valid()["state"])), _json)
def test_a_state_field_replaced_by_other_data_is_refused_or_exact(field: str, value: Any) -> None:
    """Whatever a field holds, decoding refuses it or gives back exactly that data."""
    raw = _valid()
    raw["state"][field] = value
    try:
        state, _ = decode_snapshot(json.dumps(raw))
    except ValueError:
        return
    assert json.loads(encode_snapshot(state, shop()))["state"] == raw["state"]
