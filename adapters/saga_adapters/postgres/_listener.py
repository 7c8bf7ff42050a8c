"""Wake-ups across processes: LISTEN on a dedicated connection, reconnecting when it drops.

Writers call ``pg_notify(channel, 'kind:owner')`` inside the transaction that makes the
wake-up true (Postgres delivers it on commit, never for a rollback); an empty owner is for
everyone. The listener hands each to the subscribers of this process.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from saga._store.wakeups import Subscribers
from saga_adapters.postgres._errors import DRIVER_ERRORS

__all__ = ["KINDS", "Listener", "channel_for"]

log = logging.getLogger("saga.postgres")

#: Every kind of wake-up; all are sent after a reconnection, as some may have been lost.
KINDS = ("inbox", "reply", "released")


def channel_for(schema: str) -> str:
    """The notification channel of one schema (a channel name has at most 63 bytes)."""
    channel = f"saga.{schema}"
    if len(channel) <= 63:
        return channel
    return f"saga.{schema[:40]}.{hashlib.blake2b(schema.encode(), digest_size=8).hexdigest()}"


class Listener:
    """Keeps one connection (not from the pool) LISTENing on ``channel``.

    A connection that is lost (terminated by the server, a network failure, a keepalive
    that goes unanswered) is replaced in the background, with backoff. Wake-ups sent while
    it was down are lost; coordinators also poll, and every subscriber is woken once it is
    back, in case.

    Args:
        connect: opens a new connection.
        channel: the channel to LISTEN on.
        subscribers: who to wake.
        keepalive: seconds between checks that the connection still answers.
        backoff: the first delay before reconnecting; it doubles up to ``max_backoff``.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        channel: str,
        subscribers: Subscribers,
        *,
        keepalive: float = 10.0,
        backoff: float = 0.05,
        max_backoff: float = 5.0,
    ) -> None:
        self._connect = connect
        self.channel = channel
        self._subscribers = subscribers
        self._keepalive = keepalive
        self._backoff = backoff
        self._max_backoff = max_backoff
        #: The current connection, None while there is none.
        self.connection: Any = None
        #: How many times the connection was replaced.
        self.reconnects = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Listen until cancelled. The first connection's failure is the caller's: it
        happens before ``task_status.started()``."""
        conn = await self._listen()
        task_status.started()
        try:
            while True:
                await self._until_lost(conn)
                log.warning(
                    "postgres listener on %s lost its connection; reconnecting", self.channel
                )
                self._drop(conn)
                conn = await self._reconnect()
                self.reconnects += 1
                for kind in KINDS:  # what was sent while we were away is lost
                    self._wake(None, kind)
        finally:
            self._drop(self.connection)

    async def _listen(self) -> Any:
        conn = await self._connect()
        try:
            await conn.add_listener(self.channel, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self.connection = conn
        return conn

    async def _reconnect(self) -> Any:
        delay = self._backoff
        while True:
            try:
                return await self._listen()
            except DRIVER_ERRORS as exc:
                log.warning("postgres listener: cannot reconnect (%s); retry in %.2fs", exc, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    async def _until_lost(self, conn: Any) -> None:
        lost = anyio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        while not (lost.is_set() or conn.is_closed()):
            with anyio.move_on_after(self._keepalive):
                await lost.wait()
            if lost.is_set() or conn.is_closed():
                return
            try:  # a half-open connection tells nothing until it is used
                with anyio.fail_after(self._keepalive):
                    await conn.execute("SELECT 1")
            except DRIVER_ERRORS:
                return

    def _drop(self, conn: Any) -> None:
        if conn is not None:
            conn.terminate()  # no await: nothing to say to a server that may be gone
        if conn is self.connection:
            self.connection = None

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        kind, _, owner = payload.partition(":")
        self._wake(owner or None, kind)

    def _wake(self, owner: str | None, kind: str) -> None:
        try:
            self._subscribers.wake(owner, kind)
        except Exception:  # a subscriber's bug must not stop the wake-ups of the others
            log.exception("a wake-up subscriber failed")
