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


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_idle_prints_its_json_and_waiting_sagas_hold_no_task(backend: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/idle.py",
            "--backend",
            backend,
            "--sagas",
            "60",
            "--warmup",
            "3",
            "--passivate-after",
            "0.1",
            "--top",
            "3",
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
    assert (result["store"], result["backend"], result["sagas"]) == ("sqlite", backend, 60)
    # Passivated: no actor, no task, no lease is left for a saga that waits.
    assert result["tasks_per_waiting_saga"] == 0
    assert (result["actors_in_memory"], result["leases_held"]) == (0, 0)
    assert "idle_timed_out" not in result
    assert result["bytes_per_waiting_saga"] > 0
    assert len(result["top_allocations"]) == 3
    # Kept in memory: one task per actor, and every signal wakes one actor when passivated.
    assert result["baseline_tasks_per_live_actor"] >= 1
    assert result["baseline_actors_in_memory"] == 60
    assert result["baseline_bytes_per_live_actor"] > result["bytes_per_waiting_saga"]
    assert result["actors_per_signal"] >= 1
    assert result["signals_per_s"] > 0 and result["baseline_signals_per_s"] > 0
