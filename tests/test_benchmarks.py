"""The benchmarks keep running: a tiny run of each prints the JSON its README promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("store", "backend"), [("sqlite", "asyncio"), ("memory", "trio")])
def test_throughput_prints_its_json(store: str, backend: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/throughput.py",
            "--store",
            store,
            "--backend",
            backend,
            "--sagas",
            "40",
            "--steps",
            "3",
            "--warmup",
            "5",
            "--baseline-runs",
            "1",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["store"], result["sagas"], result["steps"]) == (store, 40, 3)
    assert result["not_completed"] == 0
    assert result["transitions"] == 40 * 4
    assert result["sagas_per_s"] > 0
    assert result["p50_ms"] <= result["p99_ms"]
    if store == "sqlite":
        assert result["baseline_raw_sqlite_txn_per_s"] > 0
        assert result["ratio_to_baseline"] > 0
