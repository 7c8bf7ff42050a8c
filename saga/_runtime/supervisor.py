"""Supervision: restart a crashed actor from history; park it for an operator past a budget."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import attrs

from saga._core.decide import Decision
from saga._core.events import SagaSuspended
from saga._core.state import Status
from saga._runtime.history import record
from saga._store.port import ACTIVE_STATUSES
from saga.errors import (
    FencedError,
    HistoryTooLongError,
    NonDeterminismError,
    StoreError,
    StoreUnavailableError,
)

if TYPE_CHECKING:
    from saga._runtime.actor import Actor
    from saga._runtime.coordinator import Coordinator

__all__ = ["SupervisionPolicy", "supervise"]

log = logging.getLogger("saga")

#: Statuses whose instances have an actor working on them.
ACTIVE = ACTIVE_STATUSES


@attrs.frozen(kw_only=True)
class SupervisionPolicy:
    """How a crashed actor is restarted.

    A crash is any exception escaping an actor (a bug, a corrupt history, a store
    conflict). The actor is rebuilt from history after a backoff; more than
    ``max_restarts`` crashes within ``within`` seconds park the instance as ``suspended``
    with the reason recorded. An unavailable store does not count against the budget: it is
    retried with backoff for as long as it takes.
    """

    max_restarts: int = 5
    within: float = 60.0
    initial_backoff: float = 0.05
    max_backoff: float = 5.0

    def backoff(self, restart: int) -> float:
        return float(min(self.initial_backoff * 2 ** max(restart - 1, 0), self.max_backoff))


async def supervise(coordinator: Coordinator, actor: Actor, boot: Decision | None) -> None:
    """Run ``actor`` until it is done (or lost), restarting it from history when it crashes."""
    try:
        with actor.scope:
            await _restarting(coordinator, actor, boot)
    finally:
        if coordinator._actors.get(actor.saga_id) is actor:
            del coordinator._actors[actor.saga_id]
            # Whoever waits on it in memory now asks the store instead.
            coordinator._settled(actor.saga_id)
        actor.close()
        if not (actor.done or actor.lost or coordinator._closing):
            # Passivated (it sleeps in the store until its wake-up time or a message), or
            # stopped early (it could not even be parked): let any node take it when due.
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await coordinator._keeper.release({actor.saga_id: actor.epoch})
                except StoreError as exc:
                    log.warning("saga %s: lease not released: %s", actor.saga_id, exc)


async def _restarting(coordinator: Coordinator, actor: Actor, boot: Decision | None) -> None:
    policy = coordinator.supervision
    crashes: list[float] = []
    unavailable = 0
    while True:
        try:
            await actor.run(boot)
            return
        except Exception as exc:  # noqa: BLE001 - a crash: the supervisor's business
            boot = None
            error = _unwrap(exc)
            if isinstance(error, FencedError):
                if await _retaken(coordinator, actor):
                    continue  # we took the lease again ourselves: rebuild at its epoch
                coordinator._keeper.lose(actor, "a commit was refused: stale epoch")
                return
            coordinator.restarts += 1
            if isinstance(error, StoreUnavailableError):
                unavailable += 1
                delay = policy.backoff(unavailable)
                log.warning(
                    "saga %s: store unavailable (%s); retry in %.2fs",
                    actor.saga_id,
                    error,
                    delay,
                )
                await coordinator.clock.sleep_until(coordinator.clock.now() + delay)
                continue
            unavailable = 0
            now = coordinator.clock.now()
            crashes = [t for t in crashes if now - t < policy.within] + [now]
            # A history that does not fit its definition fits no better after a restart,
            # nor does one at its length limit get shorter.
            misfit = isinstance(error, NonDeterminismError | HistoryTooLongError)
            if misfit or len(crashes) > policy.max_restarts:
                reason = (
                    f"{type(error).__name__}: {error}"
                    if misfit
                    else f"{len(crashes)} crashes in {policy.within}s; "
                    f"last: {type(error).__name__}: {error}"
                )
                try:
                    await _park(coordinator, actor, reason)
                except Exception:
                    # One instance's trouble must not take its siblings down: its lease
                    # is released (see supervise) and a coordinator takes it up again.
                    log.exception("saga %s: could not be suspended", actor.saga_id)
                return
            delay = policy.backoff(len(crashes))
            log.warning(
                "saga %s: actor crashed (%r); restart in %.2fs", actor.saga_id, error, delay
            )
            await coordinator.clock.sleep_until(coordinator.clock.now() + delay)


async def _retaken(coordinator: Coordinator, actor: Actor) -> bool:
    """After a fenced commit: is the lease still ours, at a newer epoch? Then adopt it.

    That happens when this coordinator took its own instance again (a concurrent start
    or command acquiring it while its actor was being spawned).
    """
    try:
        row = await coordinator.store.instance(actor.saga_id)
    except StoreError:
        return False  # then the lease expires and someone claims it
    if row is None or row.owner != coordinator.node or row.status not in ACTIVE:
        return False
    actor.epoch = row.epoch
    return True


async def _park(coordinator: Coordinator, actor: Actor, reason: str) -> None:
    """Suspend the instance for an operator, without needing its history to decode."""
    log.error("saga %s: suspended: %s", actor.saga_id, reason)
    row = await coordinator.store.instance(actor.saga_id)
    if row is None or row.status not in ACTIVE:
        return
    at = coordinator.clock.now()
    suspended = SagaSuspended(reason=reason)
    await coordinator._commit(
        record(
            actor.saga_id,
            row.sequence,
            (suspended,),
            status=Status.SUSPENDED,
            at=at,
            epoch=actor.epoch,
        )
    )
    coordinator._settled(actor.saga_id)


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
