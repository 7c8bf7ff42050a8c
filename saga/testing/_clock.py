"""A virtual clock: time that moves only when a test says so, or when nothing else can happen."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import sniffio

__all__ = ["VirtualClock"]

#: 2026-01-01T00:00:00Z: a fixed start, so that recorded times are the same on every run.
DEFAULT_START = 1_767_225_600.0


@attrs.define(eq=False)
class _Timer:
    wake: Callable[[], object]
    live: bool = True


class VirtualClock:
    """A :class:`saga.Clock` whose time stands still until it is moved.

    Everything a saga schedules on its coordinator's clock (retry backoff, step timeouts,
    supervisor restarts) waits on this clock, so an hour-long timeout or a backoff measured
    in minutes takes no real time at all.

    Time moves in two ways:

    * **by hand**: :meth:`advance` moves it forward, firing every timer that falls due on the
      way in deadline order, and lets the program settle after each one;
    * **by itself** (*autojump*): while :meth:`autojump` runs, whenever every task is
      blocked and no I/O marked with :meth:`busy` is in flight, time jumps to the next
      deadline. Events stay ordered: a timer fires only after everything that earlier
      timers set off has settled.

    The test kit's stores mark their I/O as busy. Code that waits for something the clock
    cannot see (a thread, a socket) should do the same, or time may jump past it.

    Args:
        start: the time at the start, in seconds since the epoch (default 2026-01-01 UTC).
    """

    def __init__(self, start: float = DEFAULT_START) -> None:
        if (
            isinstance(start, bool)
            or not isinstance(start, int | float)
            or not math.isfinite(start)
        ):
            raise TypeError(f"start must be a finite number of seconds, got {start!r}")
        self._now = float(start)
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self._busy = 0
        self._unbusy: anyio.Event | None = None
        self._added: anyio.Event | None = None
        #: How many times autojump has moved the time.
        self.jumps = 0

    # -- the Clock protocol -------------------------------------------------------------

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        timer = self._add(deadline, woken.set)
        try:
            await woken.wait()
        finally:
            timer.live = False

    @contextmanager
    def move_on_at(self, deadline: float) -> Iterator[anyio.CancelScope]:
        scope = anyio.CancelScope()
        timer = self._add(deadline, scope.cancel)
        if deadline <= self._now:
            scope.cancel()
        try:
            with scope:
                yield scope
        finally:
            timer.live = False

    # -- for tests ----------------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of virtual time (for fake services in tests)."""
        await self.sleep_until(self._now + seconds)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing what falls due on the way, in order.

        After each timer fires, waits until every task is blocked again, so that what the
        timer set off (a retry, a timeout and the commits they make) has happened before
        the next one fires. Returns once the program has settled at the new time.
        """
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not (math.isfinite(seconds) and seconds >= 0)
        ):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        target = self._now + seconds
        while (due := self._next_deadline()) is not None and due <= target:
            self._fire(due)
            await self.wait_idle()
        self._now = max(self._now, target)
        await self.wait_idle()

    async def autojump(self) -> None:
        """Jump to the next deadline whenever everything is blocked; runs until cancelled.

        Start it in a task group next to the code under test (the test kit does).
        """
        while True:
            await self.wait_idle()
            due = self._next_deadline()
            if due is None:
                self._added = added = anyio.Event()
                await added.wait()
                continue
            self.jumps += 1
            self._fire(due)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark I/O in flight: time does not jump while any is."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0 and self._unbusy is not None:
                self._unbusy.set()
                self._unbusy = None

    async def wait_idle(self) -> None:
        """Wait until every other task is blocked and no I/O marked busy is in flight."""
        while True:
            await _all_tasks_blocked()
            if not self._busy:
                return
            if self._unbusy is None:
                self._unbusy = anyio.Event()
            await self._unbusy.wait()

    # -- internals ----------------------------------------------------------------------

    def _add(self, deadline: float, wake: Callable[[], object]) -> _Timer:
        timer = _Timer(wake)
        heapq.heappush(self._timers, (deadline, next(self._order), timer))
        if self._added is not None:
            self._added.set()
            self._added = None
        return timer

    def _next_deadline(self) -> float | None:
        timers = self._timers
        while timers and not timers[0][2].live:  # left behind by sleeps that ended early
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def _fire(self, deadline: float) -> None:
        """Move to ``deadline`` and wake every live timer due by then, oldest first."""
        self._now = max(self._now, deadline)
        timers = self._timers
        while timers and timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(timers)
            if timer.live:
                timer.live = False
                timer.wake()


async def _all_tasks_blocked() -> None:
    """Return once every other task waits on something.

    anyio's own check naps 0.1 s of real time on asyncio whenever a task is runnable; a
    test that fires many timers would spend seconds in those naps. Here one task per loop
    checks, yielding to the others until they all wait, and any other caller waits on its
    result (waiting, it counts as blocked, so two callers cannot hold each other up).
    """
    if sniffio.current_async_library() != "asyncio":
        await anyio.wait_all_tasks_blocked()
        return
    import asyncio

    loop = asyncio.get_running_loop()
    while (checking := _checks.get(loop)) is not None:
        await asyncio.wait({checking})
        if not checking.cancelled():
            return
    result = _checks[loop] = loop.create_future()
    me = asyncio.current_task()
    try:
        while True:
            await asyncio.sleep(0)
            if getattr(loop, "_ready", None):  # callbacks due to run: not idle yet
                continue
            if all(task is me or _waiting(task) for task in asyncio.all_tasks(loop)):
                result.set_result(None)
                return
    finally:
        if not result.done():
            result.cancel()
        if _checks.get(loop) is result:
            del _checks[loop]


#: The future of the check in progress, per event loop.
_checks: dict[object, Any] = {}


def _waiting(task: object) -> bool:
    waiter = getattr(task, "_fut_waiter", None)
    return waiter is not None and not waiter.done()
