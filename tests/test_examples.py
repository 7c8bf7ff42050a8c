"""The examples run, as a user would run them, and say what they should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
