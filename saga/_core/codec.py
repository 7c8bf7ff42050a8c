"""One converter for everything persisted: events to JSON text and back.

Events are stored as ``(type, schema, data)``: the class name, a schema version and a JSON
object. A stored event of an older schema is upcast by registered functions before it is
structured, so old histories keep replaying after an event's shape changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import cattrs

from saga._core import events as ev
from saga._core import messages as msg
from saga.errors import PayloadError

__all__ = [
    "SCHEMA",
    "check_payload",
    "decode_command",
    "decode_event",
    "dumps",
    "encode_command",
    "encode_event",
    "upcaster",
]

#: Current schema version of every event type. Bump one and register an upcaster for it.
SCHEMA: dict[str, int] = {name: 1 for name in ev.EVENT_TYPES} | {"SagaStarted": 2}


converter = cattrs.Converter(forbid_extra_keys=True)


Upcast = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[tuple[str, int], Upcast] = {}


def upcaster(type_name: str, from_schema: int) -> Callable[[Upcast], Upcast]:
    """Register ``fn(data) -> data`` taking ``type_name`` from ``from_schema`` to the next."""

    def register(fn: Upcast) -> Upcast:
        _UPCASTERS[(type_name, from_schema)] = fn
        return fn

    return register


# One encoder, not one per call: json.dumps builds a new JSONEncoder whenever it is given
# options, and every event and input goes through here.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, no NaN. Equal values give equal text."""
    return _ENCODER.encode(value)


def check_payload(value: Any, path: str) -> Any:
    """Return ``value`` as plain JSON data (tuples become lists), or raise PayloadError.

    Raises:
        PayloadError: naming the first place (e.g. ``input['items'][2]``) that is not a
            JSON value: str, int, float (finite), bool, None, list, tuple, or dict with
            str keys.
    """
    if isinstance(value, str):
        if "\x00" in value:
            raise PayloadError(
                "a string may not contain NUL ('\\x00'): stores refuse it", path=path
            )
        return value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(f"{value!r} has no JSON form", path=path)
        return value
    if isinstance(value, list | tuple):
        return [check_payload(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or "\x00" in key:
                raise PayloadError(f"dict keys must be str without NUL, got {key!r}", path=path)
            out[key] = check_payload(item, f"{path}[{key!r}]")
        return out
    raise PayloadError(
        f"{type(value).__name__} is not JSON data (use str, int, float, bool, None, list or dict)",
        path=path,
    )


@upcaster("SagaStarted", 1)
def _started_has_a_parent(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 names the parent of a child saga; older instances have none."""
    return {**data, "parent": None}


def encode_event(event: ev.Event) -> tuple[str, int, str]:
    """``(type, schema, json)`` for storage."""
    name = type(event).__name__
    return name, SCHEMA[name], dumps(converter.unstructure(event))


def decode_event(type_name: str, schema: int, data: str) -> ev.Event:
    """The event stored as ``(type, schema, json)``.

    Raises:
        ValueError: the type is unknown, the schema is newer than this code knows, or the
            data does not fit the type. Callers turn it into ``CorruptHistoryError``.
    """
    cls = ev.EVENT_TYPES.get(type_name)
    if cls is None:
        raise ValueError(f"unknown event type {type_name!r}")
    if schema > SCHEMA[type_name]:
        raise ValueError(
            f"{type_name} schema {schema} is newer than this code's {SCHEMA[type_name]}"
        )
    raw = json.loads(data)
    if not isinstance(raw, dict):
        raise ValueError(f"{type_name} data is not a JSON object")
    while schema < SCHEMA[type_name]:
        upcast = _UPCASTERS.get((type_name, schema))
        if upcast is None:
            raise ValueError(f"{type_name} schema {schema}: no upcaster to schema {schema + 1}")
        raw = upcast(raw)
        schema += 1
    try:
        event: ev.Event = converter.structure(raw, cls)
    except (cattrs.BaseValidationError, TypeError, KeyError) as exc:
        raise ValueError(f"{type_name} data does not fit: {exc}") from exc
    return event


#: Commands that may travel between coordinators (through a store's inbox).
_COMMANDS: dict[
    str,
    type[msg.SignalSaga | msg.ChildFinished | msg.CancelSaga | msg.SuspendSaga | msg.ResumeSaga],
] = {
    cls.__name__: cls
    for cls in (msg.SignalSaga, msg.ChildFinished, msg.CancelSaga, msg.SuspendSaga, msg.ResumeSaga)
}


def encode_command(command: msg.Message) -> str:
    """JSON text for a command sent to an instance's owner."""
    name = type(command).__name__
    if name not in _COMMANDS:
        raise TypeError(f"{name} is not a command that can be sent")
    return dumps({"type": name, "data": converter.unstructure(command)})


def decode_command(text: str) -> msg.Message:
    """The command ``encode_command`` gave ``text`` for.

    Raises:
        ValueError: it is not one.
    """
    raw = json.loads(text)
    cls = _COMMANDS.get(str(raw.get("type"))) if isinstance(raw, dict) else None
    if cls is None:
        raise ValueError(f"not a command: {text[:200]!r}")
    try:
        command: msg.Message = converter.structure(raw.get("data"), cls)
    except (cattrs.BaseValidationError, TypeError, KeyError) as exc:
        raise ValueError(f"{cls.__name__} does not fit: {exc}") from exc
    return command
