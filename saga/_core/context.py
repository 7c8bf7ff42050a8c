"""What a step's action or compensation is handed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from saga._core.events import Phase

__all__ = ["StepContext"]


@attrs.frozen(kw_only=True)
class StepContext:
    """The context of one attempt of a step's action or compensation.

    Attributes:
        saga_id: the instance's id.
        saga: the saga's name.
        step: this step's name.
        phase: ``Phase.ACTION`` or ``Phase.COMPENSATION``.
        attempt: 1 for the first try, then 2, 3...; a re-run after a crash repeats the
            attempt number it re-runs.
        idempotency_key: the same for every attempt and every re-run of this step's action
            (or compensation) in this instance; give it to the service you call so it can
            drop duplicates.
        input: the saga's input.
        results: the recorded results of the steps completed so far, by name.
    """

    saga_id: str
    saga: str
    step: str
    phase: Phase
    attempt: int
    idempotency_key: str
    input: Any
    results: Mapping[str, Any]

    @property
    def result(self) -> Any:
        """This step's own recorded result (what a compensation undoes), or None."""
        return self.results.get(self.step)
