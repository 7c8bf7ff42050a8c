"""What ``start`` gives back: a handle on one instance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from saga._core.state import SagaState, Status
from saga._core.view import SagaView
from saga._runtime.history import RecordedEvent

if TYPE_CHECKING:
    from saga._runtime.coordinator import Coordinator

__all__ = ["SagaHandle", "SagaOutcome"]


@attrs.frozen(kw_only=True)
class SagaOutcome:
    """How an instance ended.

    Attributes:
        saga_id: the instance.
        status: one of the terminal statuses.
        results: the recorded result of every step that completed.
        reason: why it did not complete (the failure, or the cancellation's reason).
        pending: for ``FAILED``, the steps still to undo, newest first.
        continued_as: for a saga that continued as new, the id of its next run.
    """

    saga_id: str
    status: Status
    results: Mapping[str, Any]
    reason: str | None = None
    pending: tuple[str, ...] = ()
    continued_as: str | None = None

    @classmethod
    def of(cls, state: SagaState) -> SagaOutcome:
        return cls(
            saga_id=state.saga_id,
            status=state.status,
            results=dict(state.results),
            reason=state.reason,
            pending=state.pending,
            continued_as=state.continued_as,
        )


@attrs.frozen
class SagaHandle:
    """A handle on one instance; cheap to make, holds no resources."""

    saga_id: str
    _coordinator: Coordinator = attrs.field(repr=False)

    async def outcome(self, *, follow: bool = True) -> SagaOutcome:
        """Wait until the instance is terminal, then say how it ended.

        A suspended instance is not terminal: this waits until an operator resumes it
        and it finishes. A saga that continued as new is followed to its last run (its
        ``saga_id`` says which); with ``follow=False``, this run's outcome is given.

        Raises:
            NotFoundError: there is no such instance.
        """
        outcome = await self._coordinator.wait(self.saga_id)
        while follow and outcome.continued_as is not None:
            outcome = await self._coordinator.wait(outcome.continued_as)
        return outcome

    async def settle(self) -> Status:
        """Wait until the instance is terminal or suspended; return that status.

        Unlike ``outcome``, this also returns for an instance parked for an operator.

        Raises:
            NotFoundError: there is no such instance.
        """
        return await self._coordinator.settle(self.saga_id)

    async def state(self) -> SagaState:
        """The instance's current state, replayed from its history.

        Raises:
            NotFoundError: there is no such instance.
            CorruptHistoryError: its history cannot be replayed.
        """
        return await self._coordinator.load_state(self.saga_id)

    async def signal(
        self, name: str, payload: Any = None, *, message_id: str | None = None
    ) -> None:
        """Send signal ``name`` to the instance; see ``Coordinator.signal``."""
        await self._coordinator.signal(self.saga_id, name, payload, message_id=message_id)

    async def query(self) -> SagaView:
        """What the instance is doing, without disturbing it; see ``Coordinator.query``."""
        return await self._coordinator.query(self.saga_id)

    async def status(self) -> Status:
        """The instance's current status, from the store's instance row.

        Raises:
            NotFoundError: there is no such instance.
        """
        return await self._coordinator.status(self.saga_id)

    async def history(self) -> list[RecordedEvent]:
        """Every event of the instance, in order.

        Raises:
            NotFoundError: there is no such instance.
            CorruptHistoryError: a stored event cannot be decoded.
        """
        return await self._coordinator.history(self.saga_id)
