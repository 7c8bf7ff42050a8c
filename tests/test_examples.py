"""The examples run, as a user would run them, and say what they should."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_order_checkout_example() -> None:
    done = subprocess.run(
        [sys.executable, "examples/order_checkout.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "order-1001: completed" in out
    assert "order-1002: compensated" in out
    assert "releasing reservation R-order-1002" in out
    assert "SagaCompensated()" in out
    assert "CompensationScheduled(step='reserve_stock'" in out


def test_approval_example() -> None:
    done = subprocess.run(
        [sys.executable, "examples/approval.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # Approved: paid; rejected and timed out: the reservation released; withdrawn: cancelled.
    statuses = re.findall(r"^(exp-\d): (\w+)$", out, re.MULTILINE)
    assert statuses == [
        ("exp-1", "completed"),
        ("exp-2", "compensated"),
        ("exp-3", "compensated"),
        ("exp-4", "cancelled"),
    ], out
    assert "[exp-1] paying 120 EUR to ana" in out
    assert "rejected by mia: over the travel limit" in out
    assert "saga.SignalTimeout: no signal 'decision'" in out
    assert "reason: withdrawn by the employee" in out
    for released in ("exp-2", "exp-3", "exp-4"):
        assert f"[{released}] releasing reservation R-{released}" in out
    assert "[exp-1] releasing" not in out


async def _postgres_url(schema: str) -> str:
    """The test server's DSN with ``schema`` (skips if it is unreachable)."""
    from tests.fencing.cluster import postgres_admin, with_query

    dsn, admin = await postgres_admin()
    await admin.close()
    return with_query(dsn, schema=schema)


async def _drop_schema(schema: str) -> None:
    from tests.fencing.cluster import postgres_admin

    _, admin = await postgres_admin()
    try:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await admin.close()


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_multi_process_example(store: str, tmp_path: Path) -> None:
    """Three workers, one killed midway: every saga finishes, and the survivors say so."""
    schema = f"example_{secrets.token_hex(4)}"
    if store == "sqlite":
        url = f"sqlite:///{tmp_path / 'orders.db'}"
    else:
        url = anyio.run(_postgres_url, schema)
    try:
        done = subprocess.run(
            [sys.executable, "examples/multi_process.py", url, "--workers", "3", "--sagas", "24"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        if store == "postgres":
            anyio.run(_drop_schema, schema)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.search(r"killed worker-1 with SIGKILL; it held [1-9]\d* sagas in flight", out), out
    # Every fifth order cannot be shipped and is undone; the others complete.
    assert re.search(r"all 24 sagas finished, .*: compensated=4, completed=20\n", out), out
    assert re.search(r"taken over from worker-1: order-\d{4}", out), out
