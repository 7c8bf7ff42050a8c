"""Ownership across processes: leases, fencing epochs, takeover, and the inbox.

Every live instance is leased to one coordinator (its *node*). The lease keeper of each
coordinator renews the leases of the actors it runs, claims instances whose lease nobody
holds (released at a graceful shutdown, or expired with a dead or frozen owner), and hands
its actors the commands other coordinators left in the store's inbox for them. A command
for an instance another node owns goes through that inbox (see ``ask``).

Stores wake the keeper when something may be waiting (``Store.subscribe``); it also polls,
so a lost wake-up costs at most one ``poll_interval``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import socket
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import attrs

from saga._core import messages as msg
from saga._core.codec import decode_command, dumps, encode_command
from saga._crashpoints import crashpoint
from saga._store.port import ACTIVE_STATUSES, InboxRecord, Reply
from saga.errors import CommandRejected, CoordinatorError, SagaError, StoreError

if TYPE_CHECKING:
    from saga._runtime.actor import Actor
    from saga._runtime.coordinator import Coordinator

__all__ = ["LeasePolicy", "LeaseKeeper", "default_node", "decode_reply", "encode_reply"]

log = logging.getLogger("saga")

OK = dumps({"ok": True})


def _positive(name: str) -> Callable[[object, attrs.Attribute[float], float], None]:
    def check(_: object, __: attrs.Attribute[float], value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number of seconds, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class LeasePolicy:
    """How a coordinator holds, renews and claims instance leases.

    Args:
        duration: how long a lease lasts unless renewed, in seconds of the store's clock.
            A dead or frozen owner's instances are taken over this long after its last
            renewal.
        renew_every: how often the leases are renewed (default: a third of ``duration``).
        poll_interval: how often to look for instances to claim, inbox messages and
            replies when no wake-up came.
        claim_batch: the most instances one claim takes.
    """

    duration: float = attrs.field(default=10.0, validator=_positive("duration"))
    renew_every: float = attrs.field(
        default=attrs.Factory(lambda self: self.duration / 3, takes_self=True),
        validator=_positive("renew_every"),
    )
    poll_interval: float = attrs.field(default=1.0, validator=_positive("poll_interval"))
    claim_batch: int = 100

    def __attrs_post_init__(self) -> None:
        if self.renew_every >= self.duration:
            raise ValueError(
                f"renew_every ({self.renew_every}) must be shorter than duration "
                f"({self.duration}), or leases lapse between renewals"
            )
        if isinstance(self.claim_batch, bool) or not (
            isinstance(self.claim_batch, int) and self.claim_batch >= 1
        ):
            raise ValueError(f"claim_batch must be an int >= 1, got {self.claim_batch!r}")


def default_node() -> str:
    """A name for this coordinator no other live one has: host, pid, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def encode_reply(error: Exception | None) -> str:
    """The inbox answer for a command: done, or why not."""
    if error is None:
        return OK
    if isinstance(error, CommandRejected):
        return dumps(
            {
                "error": "CommandRejected",
                "command": error.command,
                "status": error.status,
                "reason": error.reason,
            }
        )
    return dumps({"error": type(error).__name__, "message": str(error)})


def decode_reply(saga_id: str, body: str) -> Exception | None:
    """The error an inbox answer carries (``None`` when the command was recorded)."""
    raw = json.loads(body)
    if raw.get("ok") is True:
        return None
    if raw.get("error") == "CommandRejected":
        return CommandRejected(
            saga_id, command=raw["command"], status=raw["status"], reason=raw["reason"]
        )
    return CoordinatorError(f"saga {saga_id!r}: its owner failed: {raw['error']}: {raw['message']}")


class _Pulse:
    """An event that can be waited for again after it fired.

    A fire while nobody waits is kept for the next wait: the beat fires it for itself
    (a signal sent while it claims must not wait for the next poll).
    """

    def __init__(self) -> None:
        self._event = anyio.Event()

    def fire(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        event = self._event
        with anyio.move_on_after(timeout):
            await event.wait()
        if event.is_set() and self._event is event:  # consumed: later fires count anew
            self._event = anyio.Event()


class LeaseKeeper:
    """Renews, claims and delivers for one coordinator; see the module docstring."""

    def __init__(self, coordinator: Coordinator, node: str, policy: LeasePolicy) -> None:
        self.coordinator = coordinator
        self.node = node
        self.policy = policy
        self.store = coordinator.store
        #: Inbox messages handed to an actor and not answered yet.
        self.delivered: set[str] = set()
        self._work = _Pulse()  # something to claim or deliver
        self._replies = _Pulse()  # an answer may have come
        #: When the next instance nobody holds is due (a sleep, a timeout, a backoff).
        self._next_wake: float | None = None
        self._alarm_scope = anyio.CancelScope()
        #: Our clock when the last successful renewal began (it renewed every actor then).
        self._renewed_at = -math.inf
        #: Counters an operator (or a test) can read.
        self.claimed = 0
        self.lost = 0
        self.renew_failures = 0

    def nudge(self) -> None:
        """Claim and deliver now (a message was sent for an instance of ours)."""
        self._work.fire()

    def wake(self, kind: str) -> None:
        """The store's wake-up: called in the event loop, never blocks."""
        if kind == "reply":
            self._replies.fire()
        else:
            self._work.fire()

    async def run(self) -> None:
        """Renew, claim and deliver until cancelled; stop actors whose lease may be gone."""
        unsubscribe = self.store.subscribe(self.node, self.wake)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watchdog)
                if self.coordinator._recover_on_enter:
                    with contextlib.suppress(StoreError):  # else at the first beat
                        await self._plan_alarm()
                    tg.start_soon(self._alarm)
                await self._beat()
        finally:
            unsubscribe()

    async def _beat(self) -> None:
        next_renewal = anyio.current_time() + self.policy.renew_every
        while True:
            wait = min(self.policy.poll_interval, next_renewal - anyio.current_time())
            await self._work.wait(max(wait, 0.0))
            try:
                if anyio.current_time() >= next_renewal:
                    next_renewal = anyio.current_time() + self.policy.renew_every
                    await self.renew()
                if self.coordinator._recover_on_enter:
                    await self.claim()
                await self.deliver()
                if self.coordinator._recover_on_enter:
                    await self._plan_alarm()  # after deliver: claimed actors get their mail first
            except StoreError as exc:
                log.warning("node %s: store unavailable for leases: %s", self.node, exc)
                await anyio.sleep(self.policy.poll_interval)
            self._replies.fire()  # requesters poll on this beat too

    async def _alarm(self) -> None:
        """Claim when the next sleeping instance is due, on the coordinator's clock.

        The beat's claims find due instances too, within a ``poll_interval``; the alarm
        makes a timer fire on time, and lets a virtual clock jump straight to it.
        """
        clock = self.coordinator.clock
        while True:
            at = self._next_wake
            with anyio.CancelScope() as self._alarm_scope:
                with anyio.move_on_after(self.policy.poll_interval):  # real time: re-plan
                    if at is None:
                        await anyio.sleep_forever()
                    else:
                        await clock.sleep_until(at)
                        self._next_wake = None
                        self._work.fire()

    async def _plan_alarm(self) -> None:
        coordinator = self.coordinator
        at = await self.store.next_wake(
            sagas=list(coordinator._definitions), after=coordinator.clock.now()
        )
        if at != self._next_wake:
            self._next_wake = at
            self._alarm_scope.cancel()

    def _margin(self) -> float:
        """How long before its lease ends (by our clock) an actor that could not renew
        stops: a successor may claim the instance the moment the lease ends."""
        return min(self.policy.poll_interval, self.policy.renew_every)

    async def _watchdog(self) -> None:
        """Stop every actor whose lease we could not renew in time, by our own clock.

        Independent of the beat, so a store call that hangs (a silent network) does not
        keep a cut-off node's actors running past their leases. A lease counts from the
        start of the last renewal that covered it, or from when its actor was spawned.
        """
        keep = self.policy.duration - self._margin()
        while True:
            deadline = self._renewed_at + keep
            now = anyio.current_time()
            if now < deadline:
                await anyio.sleep(deadline - now)
                continue
            for actor in list(self.coordinator._actors.values()):
                if max(actor.leased_at, self._renewed_at) + keep <= now:
                    self.lose(actor, "its lease could not be renewed in time")
            # Until the next renewal, wake up for the next actor that would lapse.
            pending = [a.leased_at + keep for a in self.coordinator._actors.values() if not a.lost]
            wake_at = min([t for t in pending if t > now], default=now + self.policy.poll_interval)
            await anyio.sleep(max(min(wake_at, now + self.policy.poll_interval) - now, 0.0))

    # -- leases --------------------------------------------------------------------------

    async def claim(self, *, own: bool = False) -> int:
        """Take every claimable instance we have a definition for; returns how many."""
        coordinator = self.coordinator
        taken = 0
        after: str | None = None
        while True:
            # One pass over the ids: with ``own`` the rows we take stay claimable by us, so
            # without the cursor a node holding a full batch would take the same batch
            # again and again.
            rows = await self.store.claim(
                self.node,
                lease=self.policy.duration,
                limit=self.policy.claim_batch,
                sagas=list(coordinator._definitions),
                own=own,
                after=after,
                due=coordinator.clock.now(),
            )
            if rows:
                crashpoint("recovery_claimed")
            for row in rows:
                # If an actor runs it already, our lease lapsed and we took it back: the
                # actor carries on at the new epoch (had anyone written meanwhile, its
                # sequence check would catch it).
                definition = coordinator._definitions[(row.saga, row.version)]
                coordinator._spawn(row.saga_id, definition, None, row.epoch)
            taken += len(rows)
            if len(rows) < self.policy.claim_batch:
                break
            after = rows[-1].saga_id
        if taken:
            self.claimed += taken
            log.info("node %s: claimed %d instance(s)", self.node, taken)
            self._work.fire()  # their inbox may hold messages
        return taken

    async def renew(self) -> None:
        """Renew the leases of our actors; stop those whose lease passed to another."""
        actors = dict(self.coordinator._actors)
        epochs = {saga_id: actor.epoch for saga_id, actor in actors.items()}
        started = anyio.current_time()
        try:
            held = await self.store.renew(self.node, epochs, lease=self.policy.duration)
        except StoreError:
            self.renew_failures += 1
            raise
        crashpoint("lease_renewed")
        self._renewed_at = started
        for saga_id, actor in actors.items():
            if (
                saga_id not in held
                and not actor.done
                # Not passivated (its lease given back) or taken again by us meanwhile (a
                # newer epoch, which this renewal did not ask for) since the copy above.
                and self.coordinator._actors.get(saga_id) is actor
                and actor.epoch == epochs[saga_id]
            ):
                self.lose(actor, "its lease passed to another owner")

    def lose(self, actor: Actor, why: str) -> None:
        """Stop an actor whose instance is no longer ours."""
        if not actor.lost:
            log.warning("saga %s: stopped here: %s", actor.saga_id, why)
            self.lost += 1
            actor.lose()

    async def release(self, leases: dict[str, int]) -> None:
        """Give leases up at once (graceful shutdown, an actor that stopped early)."""
        if leases:
            await self.store.release(self.node, leases)

    # -- the inbox -----------------------------------------------------------------------

    async def deliver(self) -> None:
        """Hand our actors the commands waiting for them in the inbox."""
        from saga._runtime.actor import Envelope

        coordinator = self.coordinator
        for record in await self.store.inbox(self.node, limit=self.policy.claim_batch):
            if record.message_id in self.delivered:
                continue
            actor = coordinator._actors.get(record.saga_id)
            if actor is None:
                continue  # ours but not running yet (or stopping): the next beat
            try:
                command = decode_command(record.body)
            except ValueError as exc:
                error = CoordinatorError(f"undecodable command: {exc}")
                await self.store.answer(
                    [Reply(message_id=record.message_id, body=encode_reply(error))]
                )
                continue
            self.delivered.add(record.message_id)
            try:
                actor.send.send_nowait(Envelope(command, message_id=record.message_id))
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.delivered.discard(record.message_id)  # full or gone: next beat

    async def ask(self, saga_id: str, command: msg.Message) -> None:
        """Have the owner of ``saga_id`` (another node) handle ``command``; durable once
        sent. Returns when it was recorded; raises what the owner answered.

        If the owner dies meanwhile, whoever takes the instance over answers instead, and
        that may be us: while waiting we try to take it (it only succeeds once no one
        holds a live lease).
        """
        coordinator = self.coordinator
        message_id = uuid.uuid4().hex
        await self.store.send(
            InboxRecord(
                message_id=message_id,
                saga_id=saga_id,
                sender=self.node,
                body=encode_command(command),
                created_at=coordinator.clock.now(),
            )
        )
        while True:
            body = await self.store.take_reply(message_id)
            if body is not None:
                error = decode_reply(saga_id, body)
                if error is not None:
                    raise error
                return
            await self._replies.wait(self.policy.poll_interval)
            if saga_id in coordinator._actors:
                continue  # ours now: our own delivery hands it the message
            row = await self.store.acquire(saga_id, self.node, lease=self.policy.duration)
            if row is None or row.owner != self.node:
                continue
            if row.status in ACTIVE_STATUSES:
                definition = coordinator.definition(row.saga, row.version)
                coordinator._spawn(saga_id, definition, None, row.epoch)
                self._work.fire()
                continue
            # It ended or was parked before its owner read our message: answer it here.
            try:
                await coordinator._decide_here(row, command, message_id)
            except SagaError as exc:
                await self.store.take_reply(message_id)
                raise exc from None
            await self.store.take_reply(message_id)
            return
