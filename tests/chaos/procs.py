"""Helpers for tests that run real processes: their environment, their stderr, Postgres."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

#: Tried in order when SAGA_TEST_POSTGRES_DSN is not set: the local server, trust auth.
LOCAL_DSNS = (
    "postgresql://127.0.0.1:5432/test",
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)


def env(**extra: str) -> dict[str, str]:
    """This process's environment, with the repository and ``adapters`` importable."""
    out = dict(os.environ)
    paths = [str(REPO), str(REPO / "adapters")]
    if out.get("PYTHONPATH"):
        paths.append(out["PYTHONPATH"])
    out["PYTHONPATH"] = os.pathsep.join(paths)
    out.update(extra)
    return out


def tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""


def poll(condition: Callable[[], bool], *, deadline: float, every: float = 0.001) -> bool:
    """Check ``condition`` every ``every`` s until it holds (True) or ``deadline`` passes."""
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def with_query(url: str, **options: str) -> str:
    extra = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


async def connect_postgres() -> tuple[str, Any]:
    """A DSN that reaches the test server (``SAGA_TEST_POSTGRES_DSN``, else the local one)
    and an asyncpg connection on it.

    Raises:
        ConnectionError: no server answered; the message says what each DSN said.
    """
    import asyncpg

    configured = os.environ.get("SAGA_TEST_POSTGRES_DSN")
    errors = []
    for dsn in (configured,) if configured else LOCAL_DSNS:
        try:
            return dsn, await asyncpg.connect(dsn, timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            errors.append(f"{dsn}: {type(exc).__name__}: {exc}")
    raise ConnectionError(
        f"Postgres is not reachable (set SAGA_TEST_POSTGRES_DSN): {'; '.join(errors)}"
    )
