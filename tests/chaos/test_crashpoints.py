"""The crash points: configured from the environment, loud on typos, placed in the library."""

from __future__ import annotations

import ast
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from saga._crashpoints import POINTS, CrashpointConfigError, parse
from tests.chaos.procs import REPO, env


def test_parse_names_wildcards_and_overrides() -> None:
    assert parse("") == {}
    assert parse("before_commit:0.02, step_effect_done:0.1") == {
        "before_commit": 0.02,
        "step_effect_done": 0.1,
    }
    assert parse("after_commit") == {"after_commit": 1.0}
    everything = parse("*:0.01,lease_renewed:0.5,after_create:0")
    assert everything == {
        **dict.fromkeys(set(POINTS) - {"lease_renewed", "after_create"}, 0.01),
        "lease_renewed": 0.5,
    }


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("before_comit:0.1", "unknown crash point 'before_comit'"),
        ("before_commit:1.5", "must be in [0, 1]"),
        ("before_commit:nan", "must be in [0, 1]"),
        ("before_commit:often", "must be a number"),
    ],
)
def test_a_bad_spec_is_an_error(spec: str, says: str) -> None:
    with pytest.raises(CrashpointConfigError, match=re.escape(says)):
        parse(spec)


def _python(code: str, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env(**environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_typo_fails_the_import_of_saga() -> None:
    """A misspelt point must not silently switch chaos off: importing saga fails."""
    done = _python("import saga", SAGA_CRASHPOINTS="step_efect_done:0.1")
    assert done.returncode != 0
    assert "unknown crash point 'step_efect_done'" in done.stderr


def test_an_armed_point_logs_its_name_then_kills_the_process(tmp_path: Path) -> None:
    log = tmp_path / "fired.log"
    code = (
        "from saga._crashpoints import crashpoint\n"
        "crashpoint('before_commit')\n"  # not armed: goes on
        "print('before', flush=True)\n"
        "crashpoint('after_commit')\n"
        "print('after', flush=True)\n"
    )
    done = _python(
        code,
        SAGA_CRASHPOINTS="after_commit:1",
        SAGA_CRASHPOINT_SEED="7",
        SAGA_CRASHPOINT_LOG=str(log),
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout == "before\n"
    assert log.read_text() == "after_commit\n"


def test_points_are_off_without_the_environment() -> None:
    code = "from saga._crashpoints import crashpoint\nfor n in range(1000): crashpoint('before_commit')"
    assert _python(code, SAGA_CRASHPOINTS="").returncode == 0


def _placed() -> dict[str, list[str]]:
    """Every ``crashpoint("...")`` call in saga/ and adapters/: name -> where."""
    found: dict[str, list[str]] = {}
    for root in ("saga", "adapters"):
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name != "crashpoint":
                    continue
                names = [
                    c.value
                    for arg in node.args
                    for c in ast.walk(arg)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                ]
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                assert names, f"{where}: crashpoint() without a literal name"
                for point in names:
                    found.setdefault(point, []).append(where)
    return found


def test_every_point_is_placed_and_every_placement_is_a_point() -> None:
    placed = _placed()
    assert sorted(set(placed) - set(POINTS)) == [], placed
    assert sorted(set(POINTS) - set(placed)) == []
    # The group commit of each adapter has its point.
    assert {where.split(":")[0] for where in placed["group_commit_written"]} == {
        "adapters/saga_adapters/sqlite/_store.py",
        "adapters/saga_adapters/postgres/_store.py",
    }
