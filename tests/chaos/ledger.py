"""The outside world of the process tests: fsync'd JSON lines that survive a SIGKILL.

A step's action or compensation writes one line to the ledger per attempt (its side
effect); a workload appends each saga id to its "acked" file once ``start()`` returned.
Each line is one ``write(2)`` on an ``O_APPEND`` descriptor, then ``fsync``: it is in the
file, whole, before anything else happens, whatever happens to the process next.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from saga import StepContext

COMPENSATION_MARK = b'"phase": "compensation"'


class AppendOnly:
    """A file that takes whole lines, each durable when ``append`` returns."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())
        os.fsync(self.fd)


class Ledger(AppendOnly):
    """Side effects in the outside world: one line per attempt of an action or a
    compensation (``saga_id, step, phase, attempt, idempotency_key, outcome, pid``, and the
    ``fields`` given here, e.g. the node), plus what ``write`` is given."""

    def __init__(self, path: Path, **fields: Any) -> None:
        super().__init__(path)
        self.fields = fields

    def write(self, ctx: StepContext, outcome: str, **more: Any) -> None:
        self.append(
            json.dumps(
                {
                    "saga_id": ctx.saga_id,
                    "step": ctx.step,
                    "phase": ctx.phase.value,
                    "attempt": ctx.attempt,
                    "idempotency_key": ctx.idempotency_key,
                    "outcome": outcome,
                    "pid": os.getpid(),
                    **self.fields,
                    **more,
                },
                sort_keys=True,
            )
        )


def read_lines(path: Path) -> list[str]:
    """The whole lines of a file (none if it is not there)."""
    return path.read_text().splitlines() if path.exists() else []


def read_ledger(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_lines(path)]


def count_lines(path: Path, *, compensations: bool = False) -> int:
    """Ledger lines so far (only compensations' if asked); cheap enough to poll."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    return data.count(COMPENSATION_MARK if compensations else b"\n")
