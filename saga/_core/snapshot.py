"""Snapshots: an instance's state as JSON text, so a rebuild need not replay all its history.

A snapshot carries the fingerprint of the definition that vouches for it: a short hash of
what the fit rules (``saga._core.fit``) look at. Equal fingerprints mean the rules give
the same verdict on any history, so a history that fit the definition which wrote the
snapshot fits the one rebuilding from it, and the rebuild need not read it again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import cattrs

from saga._core.codec import converter, dumps
from saga._core.definition import (
    ChildSaga,
    ContinueAsNew,
    SagaDefinition,
    Sleep,
    Step,
    WaitForSignal,
)
from saga._core.fit import Rule
from saga._core.state import SagaState

__all__ = ["FORMAT", "decode_snapshot", "encode_snapshot", "fingerprint"]

#: The snapshot format this code writes and reads. Another one is not decoded: the instance
#: is replayed from its history instead (and a new snapshot written in this format).
FORMAT = 1

#: Bump when a fit rule changes what it checks (not only when one is added: their names are
#: hashed too), so that snapshots vouched for under the old rules are not trusted.
_RULES = 1


def _wait(step: Step) -> Any:
    """What ``step`` waits for, without its times: ``None`` for an action."""
    match step.wait:
        case None:
            return None
        case Sleep():
            return "sleep"
        case WaitForSignal(signal=signal):
            return ["signal", signal]
        case ChildSaga(saga=saga, on_parent_close=close):
            return ["child", saga, close.value]
        case ContinueAsNew():
            return "continue"


def fingerprint(definition: SagaDefinition) -> str:
    """A short hash of what the fit rules care about in ``definition``.

    Its saga name and version, and for each step in order: its name, kind, whether it has a
    compensation, what it waits for and its parallel group. Not retry policies, timeouts or
    function bodies: the fit rules do not look at them (a history recorded their outcomes
    instead). When in doubt, hash it: a needless difference only costs a rebuild that reads
    the whole history.
    """
    shape = {
        "rules": [_RULES, *(rule.value for rule in Rule)],
        "saga": definition.name,
        "version": definition.version,
        "steps": [
            [
                step.name,
                step.kind.value,
                step.compensation is not None,
                _wait(step),
                step.group,
                step.group_limit,
            ]
            for step in definition.steps
        ],
    }
    return hashlib.blake2b(dumps(shape).encode(), digest_size=8).hexdigest()


def _unstructure(state: SagaState) -> dict[str, Any]:
    data: dict[str, Any] = converter.unstructure(state)
    data["signal_ids"] = sorted(state.signal_ids)  # a set has no JSON form; sorted: canonical
    return data


def encode_snapshot(state: SagaState, definition: SagaDefinition | None) -> str:
    """JSON text of ``state``, vouched for by ``definition``: the history that led to it
    fits ``definition``. With ``None`` it is vouched for by no definition: it serves reads,
    and a rebuild replays the history to check it."""
    return dumps(
        {
            "format": FORMAT,
            "fingerprint": "" if definition is None else fingerprint(definition),
            "state": _unstructure(state),
        }
    )


def decode_snapshot(text: str) -> tuple[SagaState, str]:
    """The state ``encode_snapshot`` gave ``text`` for, and its fingerprint (``""``: none).

    Raises:
        ValueError: ``text`` is not a snapshot of this format, or its state does not
            decode to exactly what it says (a field missing, of another type, or extra).
    """
    try:
        raw = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a snapshot is JSON text: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) != {"format", "fingerprint", "state"}:
        raise ValueError("a snapshot is an object of format, fingerprint and state")
    if raw["format"] != FORMAT or isinstance(raw["format"], bool):
        raise ValueError(f"snapshot format {raw['format']!r}: this code reads {FORMAT}")
    found = raw["fingerprint"]
    if not isinstance(found, str):
        raise ValueError(f"a snapshot's fingerprint is a str, got {found!r}")
    data = raw["state"]
    if not isinstance(data, dict):
        raise ValueError("a snapshot's state is an object")
    try:
        state = converter.structure(data, SagaState)
        # The converter fills in defaults and coerces ("3" to 3): what decodes must give
        # back the very data it came from, or the snapshot is not trusted.
        exact = _unstructure(state) == data
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"a snapshot's state does not decode: {exc}") from exc
    if not exact:
        raise ValueError("a snapshot's state does not decode to the data it holds")
    return state, found
