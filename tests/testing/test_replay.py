"""Replay checks: histories made by real coordinators on real stores, checked against
changed definitions, from the store, from exported files and from the command line; and the
runtime parking an instance whose history no longer fits, with the same words."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from saga import (
    Coordinator,
    MemoryStore,
    RetryPolicy,
    SagaDefinition,
    Status,
    Step,
    StepContext,
    StepKind,
)
from saga import events as ev
from saga.errors import DefinitionError
from saga.testing import (
    EXPORT_FORMAT,
    DefinitionSpecError,
    HistoryFileError,
    ReplayCheckFailed,
    ReplayProblem,
    ReplayReport,
    check_replay,
    export_histories,
    load_definitions,
)
from saga.testing._replay import _file_name, _read_export
from saga_adapters.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent.parent
ONCE = RetryPolicy(max_attempts=1)


async def fine(ctx: StepContext) -> str:
    return ctx.step


def step(name: str, *, undo: bool = True, **kwargs: Any) -> Step:
    return Step(name=name, action=fine, compensation=fine if undo else None, **kwargs)


def shop(*steps: Step, version: int = 1) -> SagaDefinition:
    return SagaDefinition("shop", steps, version=version)


#: The definition the histories are made with: reserve (undo) -> charge (undo) -> ship.
V1 = shop(step("reserve"), step("charge"), step("ship", undo=False, retry=ONCE))


async def produce(store: Any) -> None:
    """Three histories of V1 (with real step functions), made by a real coordinator:

    * ``done-1``: completed;
    * ``undone-1``: ship failed for good, so charge then reserve were undone: compensated;
    * ``live-1``: running, its charge attempt in flight when the coordinator stopped.
    """
    began = anyio.Event()

    async def charge(ctx: StepContext) -> str:
        if ctx.input == "hang":
            began.set()
            await anyio.sleep_forever()
        return "charged"

    async def ship(ctx: StepContext) -> str:
        if ctx.input == "fail":
            raise RuntimeError("no courier")
        return "shipped"

    real = shop(
        step("reserve"),
        Step(name="charge", action=charge, compensation=fine),
        Step(name="ship", action=ship, retry=ONCE),
    )
    async with Coordinator(store, [real]) as coordinator:
        done = await coordinator.start(real, "done-1", "ok")
        assert (await done.outcome()).status is Status.COMPLETED
        undone = await coordinator.start(real, "undone-1", "fail")
        assert (await undone.outcome()).status is Status.COMPENSATED
        await coordinator.start(real, "live-1", "hang")
        await began.wait()
    assert [row.status for row in await store.instances()] == [
        "completed",
        "running",
        "compensated",
    ]


def report(checked: int, *failures: str, source: str = "store", skipped: int = 0) -> str:
    failed = sum(block.count("\nFAIL ") + block.startswith("FAIL ") for block in failures)
    head = (
        f"replay check of {source}: {checked} {'history' if checked == 1 else 'histories'}, "
        f"{checked - failed} replay, {failed} do not"
    )
    if skipped:
        head += f" ({skipped} finished, skipped)"
    return "\n".join([head, *failures])


def failing(*instances: str, problem: str = "does not fit its definition", detail: str) -> str:
    """The FAIL entries of ``instances`` (each "id (saga vN, status)"), one detail for all."""
    indented = "".join(f"\n  {line}" for line in detail.splitlines())
    return "\n".join(f"FAIL {instance}: {problem}{indented}" for instance in instances)


DONE, LIVE, UNDONE = (
    "done-1 (shop v1, completed)",
    "live-1 (shop v1, running)",
    "undone-1 (shop v1, compensated)",
)

#: Each change to V1 (same name and version), and exactly what the report says of the three
#: histories: the FAIL entries.
CHANGES: dict[str, tuple[SagaDefinition, tuple[str, ...]]] = {
    "rename a step": (
        shop(step("reserve"), step("pay"), step("ship", undo=False)),
        (
            failing(
                DONE,
                LIVE,
                UNDONE,
                detail="event 4 (StepScheduled 'charge'): step 2: the history ran 'charge', "
                "which the definition does not have (its step 2 is 'pay')\n"
                "  definition: reserve, pay, ship\n"
                "  history:    reserve, charge\n"
                "                       ^",
            ),
        ),
    ),
    "reorder steps": (
        shop(step("charge"), step("reserve"), step("ship", undo=False)),
        (
            failing(
                DONE,
                LIVE,
                UNDONE,
                detail="event 2 (StepScheduled 'reserve'): step 1: the history ran 'reserve', "
                "the definition's next step is 'charge'\n"
                "  definition: charge, reserve, ship\n"
                "  history:    reserve\n"
                "              ^",
            ),
        ),
    ),
    "remove a step": (
        shop(step("reserve"), step("ship", undo=False)),
        (
            failing(
                DONE,
                LIVE,
                UNDONE,
                detail="event 4 (StepScheduled 'charge'): step 2: the history ran 'charge', "
                "which the definition does not have (its step 2 is 'ship')\n"
                "  definition: reserve, ship\n"
                "  history:    reserve, charge\n"
                "                       ^",
            ),
        ),
    ),
    "insert a step before one that ran": (
        shop(step("reserve"), step("authorize"), step("charge"), step("ship", undo=False)),
        (
            failing(
                DONE,
                LIVE,
                UNDONE,
                detail="event 4 (StepScheduled 'charge'): step 2: the history ran 'charge', "
                "the definition's next step is 'authorize'\n"
                "  definition: reserve, authorize, charge, ship\n"
                "  history:    reserve, charge\n"
                "                       ^",
            ),
        ),
    ),
    "insert a step after the one running": (
        shop(step("reserve"), step("charge"), step("pack"), step("ship", undo=False)),
        (
            failing(
                DONE,
                UNDONE,
                detail="event 6 (StepScheduled 'ship'): step 3: the history ran 'ship', the "
                "definition's next step is 'pack'\n"
                "  definition: reserve, charge, pack, ship\n"
                "  history:    reserve, charge, ship\n"
                "                               ^",
            ),
        ),
    ),
    "drop a compensation": (
        shop(step("reserve"), step("charge", undo=False), step("ship", undo=False)),
        (
            failing(
                UNDONE,
                detail="event 9 (CompensationScheduled 'charge'): compensation 1: the history "
                "undid 'charge', which has no compensation in the definition\n"
                "  definition: undo reserve\n"
                "  history:    undo charge\n"
                "              ^",
            ),
        ),
    ),
    "move the pivot": (
        shop(
            step("reserve"),
            step("charge", undo=False, kind=StepKind.PIVOT),
            step("ship", undo=False, kind=StepKind.RETRIABLE),
        ),
        (
            failing(
                UNDONE,
                detail="event 8 (CompensationTriggered 'charge'): the history started "
                "compensating after 'charge' completed, but the definition makes 'charge' a "
                "pivot step: past the pivot a saga only goes forward\n"
                "  definition: reserve, charge (pivot), ship (retriable)\n"
                "  history:    reserve, charge, ship (failed), compensate",
            ),
        ),
    ),
    "change retry policies and timeouts only": (
        shop(
            step("reserve", retry=RetryPolicy(max_attempts=9)),
            step("charge", timeout=3.0, compensation_retry=ONCE),
            step("ship", undo=False, retry=RetryPolicy(max_attempts=None)),
        ),
        (),
    ),
    "append a step": (
        shop(step("reserve"), step("charge"), step("ship", undo=False), step("invoice")),
        (),
    ),
}


def cases() -> Iterator[Any]:
    for name, (definition, failures) in CHANGES.items():
        yield pytest.param(definition, report(3, *failures), id=name)


# -- from a store ------------------------------------------------------------------------


@pytest.fixture
async def histories(store: Any) -> Any:
    """Each store kind (memory, SQLite file, Postgres), holding the three histories."""
    await produce(store)
    return store


async def test_the_definition_that_made_them_replays_them(histories: Any) -> None:
    result = await check_replay(histories, [V1])
    assert (result.ok, result.checked, result.passed, result.failures) == (True, 3, 3, ())
    assert str(result) == report(3, source=type(histories).__name__)
    result.raise_for_failures()  # returns


@pytest.mark.parametrize(("definition", "expected"), list(cases()))
async def test_a_changed_definition(
    histories: Any, definition: SagaDefinition, expected: str
) -> None:
    result = await check_replay(histories, [definition], label="store")
    assert str(result) == expected
    for failure in result.failures:
        assert failure.problem is ReplayProblem.DIVERGED
        assert failure.divergence is not None
        assert failure.detail == str(failure.divergence)


async def test_each_history_is_checked_against_its_own_version(histories: Any) -> None:
    v2 = shop(step("reserve"), step("pay"), step("ship", undo=False), version=2)
    assert str(await check_replay(histories, [v2, V1], label="store")) == report(3)
    assert str(await check_replay(histories, [v2], label="store")) == report(
        3,
        failing(
            DONE,
            LIVE,
            UNDONE,
            problem="no definition of its version",
            detail="no definition of 'shop' v1 (given: v2)",
        ),
    )
    other = SagaDefinition("other", [step("x")])
    result = await check_replay(histories, [other], label="store")
    assert [f.problem for f in result.failures] == [ReplayProblem.NO_DEFINITION] * 3
    assert (
        result.failures[0].detail == "no definition of 'shop' v1 (no version of 'shop' was given)"
    )


async def test_only_active_skips_finished_instances(histories: Any) -> None:
    renamed = CHANGES["rename a step"][0]
    result = await check_replay(histories, [renamed], only_active=True, label="store")
    assert (result.checked, result.skipped) == (1, 2)
    assert str(result) == report(
        1,
        failing(
            LIVE,
            detail="event 4 (StepScheduled 'charge'): step 2: the history ran 'charge', "
            "which the definition does not have (its step 2 is 'pay')\n"
            "  definition: reserve, pay, ship\n"
            "  history:    reserve, charge\n"
            "                       ^",
        ),
        skipped=2,
    )


async def test_raise_for_failures_fails_a_test_with_the_report(histories: Any) -> None:
    result = await check_replay(histories, [CHANGES["drop a compensation"][0]], label="store")
    with pytest.raises(ReplayCheckFailed) as caught:
        result.raise_for_failures()
    assert isinstance(caught.value, AssertionError)
    assert caught.value.report is result
    assert str(caught.value) == str(result)


async def test_bad_definitions_are_refused() -> None:
    store = MemoryStore()
    with pytest.raises(TypeError, match=r"check_replay\(source, \[saga\]\)"):
        await check_replay(store, V1)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="two different definitions of 'shop' v1"):
        await check_replay(store, [V1, shop(step("other"))])
    assert (await check_replay(store, [V1, V1])).ok  # the same one twice is fine


# -- through files -------------------------------------------------------------------------


async def test_export_then_check_the_files(histories: Any, tmp_path: Path) -> None:
    folder = tmp_path / "exported"
    written = await export_histories(histories, folder)
    assert written == [folder / "done-1.json", folder / "live-1.json", folder / "undone-1.json"]
    assert sorted(folder.iterdir()) == written  # nothing else, no partial files

    assert str(await check_replay(folder, [V1])) == report(3, source=str(folder))
    renamed = CHANGES["drop a compensation"][0]
    result = await check_replay(folder, [renamed])
    assert [f.file for f in result.failures] == [folder / "undone-1.json"]
    assert str(result) == report(
        3,
        failing(
            UNDONE,
            problem=f"does not fit its definition [{folder / 'undone-1.json'}]",
            detail="event 9 (CompensationScheduled 'charge'): compensation 1: the history "
            "undid 'charge', which has no compensation in the definition\n"
            "  definition: undo reserve\n"
            "  history:    undo charge\n"
            "              ^",
        ),
        source=str(folder),
    )
    # One file on its own, and only the live instance.
    one = await check_replay(folder / "live-1.json", [V1])
    assert (one.checked, one.ok) == (1, True)
    active = await export_histories(histories, tmp_path / "active", only_active=True)
    assert [p.name for p in active] == ["live-1.json"]


async def test_an_export_is_the_instance_row_and_its_event_records(
    histories: Any, tmp_path: Path
) -> None:
    [path, *_] = await export_histories(histories, tmp_path)
    raw = json.loads(path.read_text())
    assert sorted(raw) == ["events", "format", "format_version", "instance"]
    assert (raw["format"], raw["format_version"]) == (EXPORT_FORMAT, 1)
    assert sorted(raw["instance"]) == [
        "created_at",
        "epoch",
        "input",
        "lease_until",
        "owner",
        "saga",
        "saga_id",
        "sequence",
        "status",
        "updated_at",
        "version",
        "wake_at",
    ]
    assert sorted(raw["events"][0]) == ["data", "recorded_at", "schema", "sequence", "type"]
    loaded = await histories.load("done-1")
    assert loaded is not None
    row, records, _ = _read_export(path)
    assert (row, records) == (loaded[0], list(loaded[1]))  # exactly as stored


async def test_a_corrupt_exported_history_is_a_failure_not_a_crash(
    histories: Any, tmp_path: Path
) -> None:
    await export_histories(histories, tmp_path)
    path = tmp_path / "live-1.json"
    raw = json.loads(path.read_text())
    raw["events"][2]["type"] = "StepExploded"
    path.write_text(json.dumps(raw))
    result = await check_replay(tmp_path, [V1], label="files")
    assert str(result) == report(
        3,
        f"FAIL live-1 (shop v1, running): corrupt history [{path}]\n"
        "  history corrupt at event 3: unknown event type 'StepExploded'",
        source="files",
    )
    assert result.failures[0].problem is ReplayProblem.CORRUPT


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{nope", "not a JSON file: Expecting property name enclosed in double quotes"),
        ('{"format": "other"}', "not an exported history (its format is not 'saga.history')"),
        (
            '{"format": "saga.history", "format_version": 2}',
            "format_version 2 is newer than this code reads (1): upgrade saga",
        ),
        ('{"format": "saga.history", "format_version": 1}', "instance must be a JSON object"),
        (
            '{"format": "saga.history", "format_version": 1, "instance": {"saga_id": 7}}',
            "'saga_id' must be a str, got 7",
        ),
    ],
)
async def test_a_malformed_export_file_is_refused(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(HistoryFileError) as caught:
        await check_replay(tmp_path, [V1])
    assert caught.value.path == path
    assert caught.value.reason.startswith(reason)
    assert str(caught.value).startswith(f"{path}: {reason}")


async def test_a_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HistoryFileError, match=r"no such file or directory$"):
        await check_replay(tmp_path / "nothing", [V1])
    with pytest.raises(HistoryFileError, match=r"saga_adapters.open_store\(url\)"):
        await check_replay("sqlite:///sagas.db", [V1])


def test_export_file_names_are_one_to_one_even_ignoring_case() -> None:
    assert _file_name("order-1") == "order-1.json"
    assert _file_name("Order/1") == "%4Frder%2F1.json"
    assert _file_name("order 1%") == "order%201%25.json"
    assert _file_name(".hidden") == "%2Ehidden.json"
    ids = ["a", "A", "a/b", "a%2Fb", "x" * 200, "x" * 199 + "y", "X" * 200]
    names = [_file_name(i) for i in ids]
    assert len({n.lower() for n in names}) == len(ids)
    assert all(len(n.encode()) <= 255 for n in names)


# -- definitions by name, and the command line -------------------------------------------

SAGAS_MODULE = """
from saga import SagaDefinition, Step, StepKind, RetryPolicy

async def fine(ctx):
    return ctx.step

def step(name, undo=True, **kwargs):
    return Step(name=name, action=fine, compensation=fine if undo else None, **kwargs)

v1 = SagaDefinition("shop", [step("reserve"), step("charge"), step("ship", undo=False)])
renamed = SagaDefinition("shop", [step("reserve"), step("pay"), step("ship", undo=False)])
v2 = SagaDefinition("shop", [step("reserve"), step("pay"), step("ship", undo=False)], version=2)
both = [v1, v2]
number = 7
mixed = [v1, "v2"]
"""

ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "adapters")]),
}


async def cli(cwd: Path, *args: str) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "saga.testing.replay", *args], cwd=cwd, env=ENV, check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``shop_sagas.py`` in the test's directory, importable."""
    (tmp_path / "shop_sagas.py").write_text(SAGAS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_load_definitions(module: Path) -> None:
    loaded = load_definitions(["shop_sagas:v1", "shop_sagas:both"])
    assert [(d.name, d.version) for d in loaded] == [("shop", 1), ("shop", 1), ("shop", 2)]


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("shop_sagas", "expected MODULE:ATTRIBUTE, e.g. 'shop.sagas:checkout'"),
        ("no_such_module:v1", "cannot import module 'no_such_module': No module named"),
        ("shop_sagas:v9", "module 'shop_sagas' has no attribute 'v9'"),
        ("shop_sagas:number", "'number' is a int, not a SagaDefinition or a list of them"),
        ("shop_sagas:mixed", "'mixed' holds a str ('v2'), not only SagaDefinition objects"),
    ],
)
def test_load_definitions_says_what_is_wrong(module: Path, spec: str, reason: str) -> None:
    with pytest.raises(DefinitionSpecError) as caught:
        load_definitions([spec])
    assert caught.value.spec == spec
    assert caught.value.reason.startswith(reason)


async def test_the_command_line(tmp_path: Path, module: Path) -> None:
    async with SQLiteStore(tmp_path / "sagas.db") as store:
        await produce(store)
        await export_histories(store, tmp_path / "exported")
    url = f"sqlite:///{tmp_path}/sagas.db"

    code, out, err = await cli(module, "--store", url, "--definitions", "shop_sagas:v1")
    assert (code, out, err) == (0, report(3, source=url) + "\n", "")

    code, out, err = await cli(module, "--store", url, "--definitions", "shop_sagas:renamed")
    assert (code, err) == (1, "")
    assert out == report(3, *CHANGES["rename a step"][1], source=url) + "\n"

    code, out, _ = await cli(
        module, "--histories", "exported", "--definitions", "shop_sagas:renamed", "--only-active"
    )
    assert code == 1
    assert out.splitlines()[:2] == [
        "replay check of exported: 1 history, 0 replay, 1 do not (2 finished, skipped)",
        f"FAIL live-1 (shop v1, running): does not fit its definition [exported{os.sep}live-1.json]",
    ]

    # Several definitions: each history is checked against its own version.
    code, out, _ = await cli(module, "--store", url, "--definitions", "shop_sagas:both")
    assert (code, out) == (0, report(3, source=url) + "\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--store", "mysql://x", "--definitions", "shop_sagas:v1"],
            "error: unknown store scheme 'mysql' (known: memory, sqlite, postgresql) "
            "(url: 'mysql://x')\n",
        ),
        (
            ["--store", "sqlite:///missing.db", "--definitions", "shop_sagas:v1"],
            "error: no SQLite database at 'missing.db' (url: 'sqlite:///missing.db')\n",
        ),
        (
            ["--store", "memory://", "--definitions", "nowhere:v1"],
            "error: --definitions 'nowhere:v1': cannot import module 'nowhere': "
            "No module named 'nowhere'\n",
        ),
        (
            ["--store", "memory://", "--definitions", "shop_sagas:number"],
            "error: --definitions 'shop_sagas:number': 'number' is a int, not a "
            "SagaDefinition or a list of them\n",
        ),
        (
            ["--histories", "nothing", "--definitions", "shop_sagas:v1"],
            "error: nothing: no such file or directory\n",
        ),
    ],
)
async def test_the_command_line_refuses_bad_arguments(
    module: Path, args: list[str], message: str
) -> None:
    assert await cli(module, *args) == (2, "", message)
    assert not (module / "missing.db").exists()  # never created by a check


async def test_the_command_line_needs_a_source_and_definitions(module: Path) -> None:
    code, _, err = await cli(module, "--definitions", "shop_sagas:v1")
    assert code == 2 and "one of the arguments --store --histories is required" in err
    code, _, err = await cli(module, "--store", "memory://", "--histories", "x")
    assert code == 2 and "not allowed with argument" in err


# -- the runtime parks what does not fit, with the same words ---------------------------


async def test_a_rebuilt_instance_that_no_longer_fits_is_parked_with_the_diff(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sagas.db"
    async with SQLiteStore(path) as store:
        await produce(store)
    renamed = CHANGES["rename a step"][0]
    async with SQLiteStore(path) as store:
        expected = (await check_replay(store, [renamed])).failures[1]
        assert expected.saga_id == "live-1"
        # Deployed anyway: the coordinator takes live-1 up and cannot drive it.
        async with Coordinator(store, [renamed]) as coordinator:
            handle = coordinator.handle("live-1")
            assert await handle.settle() is Status.SUSPENDED
            state = await handle.state()
            assert coordinator.restarts == 1  # parked at once: a restart cannot help
        assert state.suspension == (
            "NonDeterminismError: saga 'live-1': its history does not fit 'shop' v1: "
            f"{expected.detail}"
        )
        assert state.suspension.endswith(
            "event 4 (StepScheduled 'charge'): step 2: the history ran 'charge', which the "
            "definition does not have (its step 2 is 'pay')\n"
            "  definition: reserve, pay, ship\n"
            "  history:    reserve, charge\n"
            "                       ^"
        )
        # Parked, it still fits the definition that made it; the rollback resumes it.
        assert (await check_replay(store, [V1])).ok
        async with Coordinator(store, [V1]) as coordinator:
            await coordinator.resume("live-1")
            outcome = await coordinator.handle("live-1").outcome()
        assert outcome.status is Status.COMPLETED
        events = [r.event for r in await coordinator.history("live-1")]
        assert [type(e) for e in events[4:6]] == [ev.SagaSuspended, ev.SagaResumed]


async def test_report_type_is_plain_data() -> None:
    empty = ReplayReport(source="nothing", checked=0)
    assert (empty.ok, empty.passed, str(empty)) == (
        True,
        0,
        "replay check of nothing: 0 histories, 0 replay, 0 do not",
    )
