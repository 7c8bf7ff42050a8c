"""The pytest plugin: registered by entry point, fixtures on the store the test asks for."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from saga import Coordinator, MemoryStore, SagaDefinition, Status, Step, StepContext
from saga.testing import SagaTestKit
from saga_adapters.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


async def _noop(ctx: StepContext) -> None:
    return None


SAGA = SagaDefinition("plugin_check", [Step(name="only", action=_noop)])


@pytest.fixture
def saga_definitions() -> list[SagaDefinition]:
    return [SAGA]


async def test_the_kit_is_on_a_sqlite_file_in_the_tests_tmp_path(
    saga_kit: SagaTestKit, tmp_path: Path
) -> None:
    assert isinstance(saga_kit.store.inner, SQLiteStore)
    assert Path(saga_kit.store.inner.path) == tmp_path / "sagas.db"


@pytest.mark.saga_store("memory")
async def test_a_marker_asks_for_the_memory_store(saga_kit: SagaTestKit) -> None:
    assert isinstance(saga_kit.store.inner, MemoryStore)


async def test_the_coordinator_runs_the_definitions_on_the_kit(
    saga_coordinator: Coordinator, saga_kit: SagaTestKit
) -> None:
    assert saga_coordinator.clock is saga_kit.clock
    outcome = await (await saga_coordinator.start(SAGA, "p-1")).outcome()
    assert outcome.status is Status.COMPLETED
    assert await saga_kit.store.inner.instance("p-1") is not None


def _pytest(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on one test file, in a directory with no conftest and no configuration:
    the fixtures can only come from the installed plugin."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_user.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


USER_TEST = """
    import pytest
    from saga import SagaDefinition, Status, Step

    pytestmark = pytest.mark.anyio

    async def step(ctx):
        return {"ok": True}

    SAGA = SagaDefinition("user_saga", [Step(name="only", action=step, timeout=3600)])

    @pytest.fixture
    def saga_definitions():
        return [SAGA]

    async def test_it(saga_kit, saga_faults, saga_coordinator):
        saga_faults.time_out("only")
        outcome = await (await saga_coordinator.start(SAGA, "u-1")).outcome()
        assert outcome.status is Status.COMPLETED
        assert saga_kit.clock.now() >= 1_767_225_600 + 3600
"""


def test_a_users_suite_gets_the_fixtures_from_the_entry_point(tmp_path: Path) -> None:
    done = _pytest(tmp_path, USER_TEST)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout  # on every backend anyio finds


def test_misuse_is_reported_with_what_to_do(tmp_path: Path) -> None:
    done = _pytest(
        tmp_path,
        """
        import pytest
        pytestmark = pytest.mark.anyio

        async def test_no_definitions(saga_coordinator):
            pass

        @pytest.mark.saga_store("postgres")
        async def test_unknown_store(saga_kit):
            pass
        """,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "define a 'saga_definitions' fixture" in out
    assert "saga_store must be one of sqlite, memory, got 'postgres'" in out
    assert " passed" not in out
