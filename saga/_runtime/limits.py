"""Limits on what one instance may keep in the store: history length and payload size."""

from __future__ import annotations

import logging
from typing import Any

import attrs

from saga.errors import HistoryTooLongError, PayloadTooLargeError

__all__ = ["HistoryLimits"]

log = logging.getLogger("saga")


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"HistoryLimits.{attribute.name} must be an int >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class HistoryLimits:
    """How long a history and how large a payload may grow (defaults in Temporal's spirit).

    Past a ``warn_`` limit a warning is logged; past a ``max_`` limit the write is refused
    with a typed error: ``PayloadTooLargeError`` for an input, a signal's payload or a
    step's result (sizes are of their JSON text, in bytes); ``HistoryTooLongError`` for a
    history, whose instance is then parked ``suspended``.
    """

    warn_events: int = attrs.field(default=10_000, validator=_count)
    max_events: int = attrs.field(default=50_000, validator=_count)
    warn_payload_bytes: int = attrs.field(default=256 * 1024, validator=_count)
    max_payload_bytes: int = attrs.field(default=2 * 1024 * 1024, validator=_count)

    def __attrs_post_init__(self) -> None:
        if self.warn_events > self.max_events:
            raise ValueError("HistoryLimits.warn_events must not exceed max_events")
        if self.warn_payload_bytes > self.max_payload_bytes:
            raise ValueError("HistoryLimits.warn_payload_bytes must not exceed max_payload_bytes")

    def check_payload(self, encoded: str, path: str, *, saga_id: Any = None) -> None:
        """Refuse (or warn about) the JSON text ``encoded`` of the payload at ``path``.

        Raises:
            PayloadTooLargeError: it is larger than ``max_payload_bytes``.
        """
        if len(encoded) <= self.warn_payload_bytes // 4:  # at most 4 bytes per character
            return
        size = len(encoded.encode())
        if size > self.max_payload_bytes:
            raise PayloadTooLargeError(path=path, size=size, limit=self.max_payload_bytes)
        if size > self.warn_payload_bytes:
            log.warning(
                "saga %s: %s is %d bytes of JSON (warning at %d, refused past %d)",
                saga_id,
                path,
                size,
                self.warn_payload_bytes,
                self.max_payload_bytes,
            )

    def check_events(self, saga_id: str, before: int, after: int) -> None:
        """Refuse a history growing from ``before`` to ``after`` events past the limit;
        warn once, when it crosses ``warn_events``.

        Raises:
            HistoryTooLongError: ``after`` is larger than ``max_events``.
        """
        if after > self.max_events:
            raise HistoryTooLongError(saga_id, events=after, limit=self.max_events)
        if before <= self.warn_events < after:
            log.warning(
                "saga %s: its history holds %d events (warning at %d, refused past %d)",
                saga_id,
                after,
                self.warn_events,
                self.max_events,
            )
