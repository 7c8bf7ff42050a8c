"""Where the runtime gets the time: one small port, so tests can bring their own.

Everything a saga schedules (retry backoff, step timeouts, supervisor restarts) is measured
on this clock. Leases are not: they measure whether a process is alive, in real time, on
the store's clock.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Protocol

import anyio

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Wall-clock time, sleeping until a wall-clock time, and deadlines on it."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return at ``deadline`` (seconds since the epoch) or soon after."""
        ...

    def move_on_at(self, deadline: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope that is cancelled at ``deadline`` (seconds since the epoch)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep(max(0.0, deadline - time.time()))

    def move_on_at(self, deadline: float) -> AbstractContextManager[anyio.CancelScope]:
        return anyio.move_on_after(max(0.0, deadline - time.time()))
