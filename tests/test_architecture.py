"""The layering, checked by scanning imports: the core stays pure, saga never needs adapters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The core is a pure function of its inputs: no event loop, no clock, no randomness, no I/O.
CORE_FORBIDDEN = {
    "anyio",
    "trio",
    "asyncio",
    "time",
    "random",
    "os",
    "sqlite3",
    "socket",
    "threading",
    "uuid",
    "datetime",
    "asyncpg",
    "aiosqlite",
    "saga._runtime",
    "saga._store",
    "saga._crashpoints",
    "saga_adapters",
}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def violations(folder: str, forbidden: set[str]) -> list[str]:
    out = []
    root = ROOT / folder
    for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
        for name in imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(ROOT)} imports {name}")
    return out


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("saga/_core", CORE_FORBIDDEN),
        ("saga", {"saga_adapters", "sqlite3", "aiosqlite", "asyncpg"}),
        ("saga/_store", {"saga._runtime"}),
        # Called from every layer (runtime, store, adapters), so it depends on none of them.
        ("saga/_crashpoints.py", {"saga", "saga_adapters", "anyio", "trio", "asyncio"}),
    ],
)
def test_layering(folder: str, forbidden: set[str]) -> None:
    assert [v for v in violations(folder, forbidden) if v not in ALLOWED] == []


#: The exceptions, each a shell at the very edge. The replay CLI opens stores by URL with
#: ``saga_adapters.open_store`` (lazily, inside the command); nothing imports the CLI.
ALLOWED = {"saga/testing/replay.py imports saga_adapters"}


def test_the_exceptions_are_still_needed() -> None:
    assert violations("saga", {"saga_adapters"}) == sorted(ALLOWED)


def test_the_scan_sees_imports() -> None:
    # Guard against a scan that passes because it reads nothing.
    assert "saga._core.decide" in imports(ROOT / "saga/_runtime/actor.py")
    assert "signal" in imports(ROOT / "saga/_crashpoints.py")
    assert violations("adapters", {"saga"})  # adapters do depend on saga
