"""Wake-up callbacks a store keeps for the coordinators of its own process."""

from __future__ import annotations

from collections.abc import Callable

from saga._store.port import Wake

__all__ = ["Subscribers"]


class Subscribers:
    """Who wants to hear of wake-ups, by owner; see ``Store.subscribe``."""

    def __init__(self) -> None:
        self._wakes: dict[object, tuple[str, Wake]] = {}

    def subscribe(self, owner: str, wake: Wake) -> Callable[[], None]:
        key = object()
        self._wakes[key] = (owner, wake)

        def unsubscribe() -> None:
            self._wakes.pop(key, None)

        return unsubscribe

    def wake(self, owner: str | None, kind: str) -> None:
        """Wake ``owner``'s subscribers, or everyone's when ``owner`` is None."""
        for subscriber, wake in list(self._wakes.values()):
            if owner is None or subscriber == owner:
                wake(kind)
