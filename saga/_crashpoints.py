"""Named crash points: places where the library may kill its own process, for chaos tests.

``crashpoint(name)`` does nothing unless the process was started with crash points
switched on; then, with the probability configured for ``name``, it appends ``name`` to
the log file (fsync'd), and kills its own process with SIGKILL: no ``finally``, no
``atexit``, no flush, exactly as a power cut or the OOM killer would. The configuration
is read once, at import, from the environment:

* ``SAGA_CRASHPOINTS``: comma-separated ``name:probability`` pairs (``name`` alone means
  probability 1), ``*`` for every point; a named point overrides ``*``. For example
  ``before_commit:0.02,step_effect_done:0.1`` or ``*:0.01``.
* ``SAGA_CRASHPOINT_SEED``: an integer seed for the dice (default: unseeded).
* ``SAGA_CRASHPOINT_LOG``: a file the name of a point is appended to before it fires.

An unknown name or a malformed probability is an error at import: a typo must not
silently switch chaos off. ``tests/chaos`` (``python -m tests.chaos``) drives processes
with these; see docs/explanation/chaos.md.

This module imports nothing from ``saga``, so that every layer can call it.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Mapping

__all__ = ["POINTS", "CrashpointConfigError", "configure", "crashpoint", "parse"]

#: Every crash point, and what a crash there tests. Each is placed in the library, and the
#: library names no other (tests/chaos/test_crashpoints.py checks, scanning the source).
POINTS: dict[str, str] = {
    "before_commit": (
        "Coordinator._commit, before a transition goes to the store: the decision is lost, "
        "its inputs are not (the attempt whose outcome it recorded is still in flight)."
    ),
    "after_commit": (
        "Actor._handle, after a transition is durable and before its effects are emitted "
        "(attempts started, callers answered): recovery must emit them from history."
    ),
    "group_commit_written": (
        "inside a group commit (SQLite and Postgres adapters): the whole batch is written "
        "in the open transaction, not committed: none of it may survive, and no caller "
        "was told it did."
    ),
    "after_create": (
        "Coordinator.start, after the create is durable and before start() returns: the "
        "caller never hears of it; starting it again must be idempotent."
    ),
    "step_effect_done": (
        "Actor._run_attempt, after a step's action returned or raised (its side effect "
        "happened) and before its outcome is reported: at least once, same attempt, "
        "same idempotency key."
    ),
    "compensation_started": (
        "Actor._call, a compensation is recorded as scheduled and about to run: it must "
        "run again after recovery, in the same place of the reverse order."
    ),
    "compensation_done": (
        "Actor._run_attempt, after a compensation returned or raised and before its "
        "outcome is reported: the undo is re-run, never skipped, never doubled in history."
    ),
    "backoff_elapsed": (
        "Actor._run_attempt, a retry's backoff (run_after) has just ended, before the "
        "attempt runs: the retry is re-issued from history with the same run_after."
    ),
    "timer_fired": (
        "Actor._timer, a sleep or a signal wait's timeout ran out and FireTimer is not "
        "reported yet: the timer is in the store and fires again (at once) after recovery."
    ),
    "lease_renewed": (
        "LeaseKeeper.renew, the store renewed our leases and we have not noted it: the "
        "next process under the same node takes them back at once."
    ),
    "recovery_claimed": (
        "LeaseKeeper.claim, instances were claimed at a new epoch and no actor runs them "
        "yet: they are leased to a dead process until it (or its lease) comes back."
    ),
    "recovery_loaded": (
        "Actor.run, an instance was rebuilt from history and its outstanding work "
        "computed, not re-issued yet: a crash during recovery is just another crash."
    ),
}

ENV_POINTS = "SAGA_CRASHPOINTS"
ENV_SEED = "SAGA_CRASHPOINT_SEED"
ENV_LOG = "SAGA_CRASHPOINT_LOG"


class CrashpointConfigError(ValueError):
    """Raised at import (or by ``configure``) when ``SAGA_CRASHPOINTS`` is not valid."""


def parse(spec: str) -> dict[str, float]:
    """The probability of each point named in ``spec`` (``*`` expanded, overridden by names).

    Raises:
        CrashpointConfigError: an unknown name, or a probability that is not in [0, 1].
    """
    wildcard: float | None = None
    named: dict[str, float] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, odds = item.partition(":")
        name = name.strip()
        try:
            p = float(odds) if sep else 1.0
        except ValueError:
            raise CrashpointConfigError(
                f"{ENV_POINTS}: {item!r}: the probability must be a number"
            ) from None
        if not 0.0 <= p <= 1.0:
            raise CrashpointConfigError(
                f"{ENV_POINTS}: {item!r}: the probability must be in [0, 1]"
            )
        if name == "*":
            wildcard = p
        elif name in POINTS:
            named[name] = p
        else:
            raise CrashpointConfigError(
                f"{ENV_POINTS}: unknown crash point {name!r}; known: {', '.join(sorted(POINTS))}"
            )
    odds_by_name = dict.fromkeys(POINTS, wildcard) if wildcard is not None else {}
    odds_by_name.update(named)
    return {name: p for name, p in odds_by_name.items() if p}


class _Armed:
    """The dice and the log of a process with crash points switched on."""

    def __init__(self, odds: dict[str, float], seed: int | None, log: str | None) -> None:
        self.odds = odds
        self.dice = random.Random(seed)
        self.log = log

    def hit(self, name: str) -> None:
        if name not in POINTS:  # a typo in the library: loud, in chaos runs
            raise AssertionError(f"crashpoint({name!r}) is not in saga._crashpoints.POINTS")
        p = self.odds.get(name)
        if p is None or self.dice.random() >= p:
            return
        if self.log:
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{name}\n".encode())
            os.fsync(fd)
        os.kill(os.getpid(), signal.SIGKILL)


_armed: _Armed | None = None


def crashpoint(name: str) -> None:
    """Maybe kill this process here (only if crash points were switched on at import)."""
    if _armed is not None:
        _armed.hit(name)


def configure(environ: Mapping[str, str]) -> None:
    """Switch crash points on (or off) from ``environ``; done at import with os.environ.

    Raises:
        CrashpointConfigError: the configuration is not valid.
    """
    global _armed  # noqa: PLW0603 - one module global: the whole cost of a disarmed point
    odds = parse(environ.get(ENV_POINTS, ""))
    raw_seed = environ.get(ENV_SEED) or None
    try:
        seed = None if raw_seed is None else int(raw_seed)
    except ValueError:
        raise CrashpointConfigError(f"{ENV_SEED}: {raw_seed!r} is not an integer") from None
    _armed = _Armed(odds, seed, environ.get(ENV_LOG) or None) if odds else None


configure(os.environ)
