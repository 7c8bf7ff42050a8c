"""Replay checks: do stored histories still fit the definitions about to be deployed?

``check_replay`` reads every history of a store (or of exported files) and checks each one
against the definition of its own saga and version with ``saga._core.fit``, the check an
actor makes when it rebuilds an instance. ``export_histories`` writes a store's histories
to files, so that histories taken from production can be checked in CI.

The export format (``format_version`` 1), one JSON object per file::

    {
      "format": "saga.history",
      "format_version": 1,
      "instance": {"saga_id": ..., "saga": ..., "version": ..., "status": ...,
                   "sequence": ..., "input": "<JSON text>", "created_at": ...,
                   "updated_at": ..., "owner": ..., "epoch": ..., "lease_until": ...,
                   "wake_at": ...},
      "events": [{"sequence": 1, "type": "SagaStarted", "schema": 1,
                  "data": "<JSON text>", "recorded_at": ...}, ...]
    }

``instance`` holds the fields of the instance's row and ``events`` its event records, as the
store keeps them: ``input`` and ``data`` stay JSON text, decoded (and upcast) when checked.
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import json
import os
import string
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs

from saga._core.definition import SagaDefinition, by_version
from saga._core.fit import Divergence, divergence
from saga._core.state import Status
from saga._runtime.history import decode_history, replay
from saga._store.port import EventRecord, InstanceRecord, Store
from saga.errors import CorruptHistoryError, SagaError

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "DefinitionSpecError",
    "HistoryFileError",
    "ReplayCheckFailed",
    "ReplayFailure",
    "ReplayProblem",
    "ReplayReport",
    "check_replay",
    "export_histories",
    "load_definitions",
]

#: The ``format`` field of an exported history.
EXPORT_FORMAT = "saga.history"
#: The ``format_version`` this code writes, and the newest it reads.
EXPORT_FORMAT_VERSION = 1

_LIVE = tuple(status.value for status in Status if not status.terminal)
#: Characters a file name keeps as they are; every other is percent-encoded (UTF-8).
_KEEP = frozenset(string.ascii_lowercase + string.digits + "-_.")


class ReplayProblem(enum.Enum):
    """Why a history does not replay."""

    #: Its events do not fit the definition of its saga and version.
    DIVERGED = "does not fit its definition"
    #: No definition of its saga and version was given.
    NO_DEFINITION = "no definition of its version"
    #: It cannot be decoded, has a gap, does not fold, or disagrees with its instance row.
    CORRUPT = "corrupt history"


@attrs.frozen(kw_only=True)
class ReplayFailure:
    """One history that does not replay.

    Attributes:
        saga_id: the instance.
        saga: its saga's name, from its instance row.
        version: its saga's version, from its instance row.
        status: its status, from its instance row.
        problem: why it does not replay.
        detail: what is wrong, readably: for ``DIVERGED`` the event, the reason and the
            definition's line above the history's.
        divergence: for ``DIVERGED``, the structured divergence; otherwise None.
        file: the exported file it was read from, or None.
    """

    saga_id: str
    saga: str
    version: int
    status: str
    problem: ReplayProblem
    detail: str
    divergence: Divergence | None = None
    file: Path | None = None

    def __str__(self) -> str:
        head = f"{self.saga_id} ({self.saga} v{self.version}, {self.status}): {self.problem.value}"
        if self.file is not None:
            head += f" [{self.file}]"
        return head + "".join(f"\n  {line}" for line in self.detail.splitlines())


@attrs.frozen(kw_only=True)
class ReplayReport:
    """What ``check_replay`` found.

    Attributes:
        source: what was checked (a store's type, a URL or a path).
        checked: how many histories were checked.
        skipped: how many finished ones were left out (``only_active=True``).
        failures: the histories that do not replay, ordered by saga id.
    """

    source: str
    checked: int
    skipped: int = 0
    failures: tuple[ReplayFailure, ...] = ()

    @property
    def passed(self) -> int:
        """How many of the histories checked replay."""
        return self.checked - len(self.failures)

    @property
    def ok(self) -> bool:
        """Every history checked replays."""
        return not self.failures

    def __str__(self) -> str:
        histories = "history" if self.checked == 1 else "histories"
        head = (
            f"replay check of {self.source}: {self.checked} {histories}, "
            f"{self.passed} replay, {len(self.failures)} do not"
        )
        if self.skipped:
            head += f" ({self.skipped} finished, skipped)"
        return "\n".join([head, *(f"FAIL {failure}" for failure in self.failures)])

    def raise_for_failures(self) -> None:
        """Raise ``ReplayCheckFailed`` (an ``AssertionError``) unless every history replays.

        Raises:
            ReplayCheckFailed: some do not; its message is this report.
        """
        if self.failures:
            raise ReplayCheckFailed(self)


class ReplayCheckFailed(SagaError, AssertionError):
    """Raised by ``ReplayReport.raise_for_failures`` when some history does not replay.

    An ``AssertionError``, so that a test that calls it fails (rather than errors) with the
    report as its message.

    Attributes:
        report: the report.
    """

    def __init__(self, report: ReplayReport) -> None:
        super().__init__(str(report))
        self.report = report


class HistoryFileError(SagaError, ValueError):
    """A path given to ``check_replay`` holds no exported history, or a malformed one.

    Raised by ``check_replay`` before any history is checked. (A well-formed file whose
    events do not decode is a history that does not replay: a ``CORRUPT`` failure.)

    Attributes:
        path: the file or directory.
        reason: what is wrong with it.
    """

    def __init__(self, path: Path, *, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# -- checking ----------------------------------------------------------------------------


async def check_replay(
    source: Store | str | os.PathLike[str],
    definitions: Iterable[SagaDefinition],
    *,
    only_active: bool = False,
    label: str | None = None,
) -> ReplayReport:
    """Check that every history in ``source`` replays with ``definitions``.

    Each history is checked against the definition with its own saga name and version,
    by the rules in the reference ("Replay checks"); the same check an actor makes when it
    rebuilds an instance, which parks one whose history does not fit as ``suspended``.

    Args:
        source: an open store (every instance is read through the Store port), or the path
            of a file or directory (its ``*.json`` files) written by ``export_histories``.
        definitions: the definitions to check against; several versions of a saga may be
            given. A history whose saga and version are not among them is reported as
            ``NO_DEFINITION``.
        only_active: check only running, compensating and suspended instances; finished
            ones are counted as skipped. By default they are checked too.
        label: how the report names ``source`` (default: the store's type, or the path).

    Raises:
        HistoryFileError: ``source`` is a path that does not exist or holds a malformed
            export.
        DefinitionError: two different definitions share a name and version.
        StoreError: the store failed.
    """
    known = _registry(definitions)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        histories = _listed(await anyio.to_thread.run_sync(_read_exports, path))
        name = label or str(path)
    else:
        histories = _store_histories(source)
        name = label or type(source).__name__
    checked = skipped = 0
    failures: list[ReplayFailure] = []
    async for row, records, file in histories:
        if only_active and row.status not in _LIVE:
            skipped += 1
            continue
        checked += 1
        failure = _check(row, records, known)
        if failure is not None:
            failures.append(attrs.evolve(failure, file=file))
    failures.sort(key=lambda f: (f.saga_id, str(f.file)))
    return ReplayReport(source=name, checked=checked, skipped=skipped, failures=tuple(failures))


def _registry(definitions: Iterable[SagaDefinition]) -> dict[tuple[str, int], SagaDefinition]:
    if isinstance(definitions, SagaDefinition):
        raise TypeError("definitions takes a list of definitions: check_replay(source, [saga])")
    return by_version(definitions)


def _check(
    row: InstanceRecord,
    records: Sequence[EventRecord],
    known: Mapping[tuple[str, int], SagaDefinition],
) -> ReplayFailure | None:
    def failure(
        problem: ReplayProblem, detail: str, found: Divergence | None = None
    ) -> ReplayFailure:
        return ReplayFailure(
            saga_id=row.saga_id,
            saga=row.saga,
            version=row.version,
            status=row.status,
            problem=problem,
            detail=detail,
            divergence=found,
        )

    try:
        replay(row.saga_id, records, row)
    except CorruptHistoryError as exc:
        return failure(
            ReplayProblem.CORRUPT, f"history corrupt at event {exc.sequence}: {exc.reason}"
        )
    definition = known.get((row.saga, row.version))
    if definition is None:
        versions = sorted(version for name, version in known if name == row.saga)
        given = (
            f"given: {', '.join(f'v{v}' for v in versions)}"
            if versions
            else f"no version of {row.saga!r} was given"
        )
        return failure(
            ReplayProblem.NO_DEFINITION, f"no definition of {row.saga!r} v{row.version} ({given})"
        )
    events = [recorded.event for recorded in decode_history(row.saga_id, records)]
    found = divergence(definition, events)
    if found is None:
        return None
    return failure(ReplayProblem.DIVERGED, str(found), found)


_History = tuple[InstanceRecord, Sequence[EventRecord], Path | None]


async def _store_histories(store: Store) -> AsyncIterator[_History]:
    for listed in await store.instances():
        loaded = await store.load(listed.saga_id)
        if loaded is not None:  # else it was deleted since it was listed
            row, records = loaded  # one snapshot: row and events agree
            yield row, records, None


# -- exporting ---------------------------------------------------------------------------


async def export_histories(
    store: Store, directory: str | os.PathLike[str], *, only_active: bool = False
) -> list[Path]:
    """Write every history of ``store`` to ``directory``, one JSON file per instance.

    The directory is created if missing; a file of the same instance written earlier is
    replaced. File names are made from saga ids (lower-case letters, digits, ``-``, ``_``
    and ``.`` kept, anything else percent-encoded), but ``check_replay`` reads the id
    from the file, never from its name. The format is in the reference ("Replay checks").

    Args:
        store: an open store.
        directory: where to write.
        only_active: export only running, compensating and suspended instances.

    Returns:
        The files written, ordered by saga id.

    Raises:
        StoreError: the store failed.
        OSError: a file could not be written.
    """
    folder = Path(directory)
    await anyio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
    written: list[Path] = []
    async for row, records, _ in _store_histories(store):
        if only_active and row.status not in _LIVE:
            continue
        path = folder / _file_name(row.saga_id)
        text = json.dumps(_export(row, records), indent=2) + "\n"
        await anyio.to_thread.run_sync(_write, path, text)
        written.append(path)
    return written


def _file_name(saga_id: str) -> str:
    """The file ``export_histories`` writes instance ``saga_id`` to.

    Distinct ids give distinct names, even on a file system that ignores case.
    """
    # '%' is encoded, so the encoding can be undone: it is one-to-one. Upper-case letters
    # are encoded, so names differ by more than case. A leading '.' would hide the file.
    name = "".join(
        char if char in _KEEP else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in saga_id
    )
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > 150:  # names stop at 255 bytes; '~' is encoded, so never in a short one
        digest = hashlib.blake2b(saga_id.encode(), digest_size=8).hexdigest()
        name = f"{name[:120]}~{digest}"
    return f"{name}.json"


def _export(row: InstanceRecord, records: Sequence[EventRecord]) -> dict[str, Any]:
    instance = attrs.asdict(row)
    events = [
        {
            "sequence": r.sequence,
            "type": r.type,
            "schema": r.schema,
            "data": r.data,
            "recorded_at": r.recorded_at,
        }
        for r in records
    ]
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "instance": instance,
        "events": events,
    }


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


# -- reading exports ---------------------------------------------------------------------


async def _listed(histories: list[_History]) -> AsyncIterator[_History]:
    for history in histories:
        yield history


def _read_exports(path: Path) -> list[_History]:
    """Every history exported to ``path`` (a file, or a directory of ``*.json`` files)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".json" and p.is_file())
    elif path.is_file():
        files = [path]
    elif ":/" in str(path):  # a store URL, by the look of it
        raise HistoryFileError(
            path,
            reason="no such file or directory (to check a store, open it with "
            "saga_adapters.open_store(url) and pass the store)",
        )
    else:
        raise HistoryFileError(path, reason="no such file or directory")
    return [_read_export(file) for file in files]


def _read_export(path: Path) -> _History:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HistoryFileError(path, reason=f"not a JSON file: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != EXPORT_FORMAT:
        raise HistoryFileError(
            path, reason=f"not an exported history (its format is not {EXPORT_FORMAT!r})"
        )
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise HistoryFileError(path, reason=f"format_version must be an int, got {version!r}")
    if version > EXPORT_FORMAT_VERSION:
        raise HistoryFileError(
            path,
            reason=f"format_version {version} is newer than this code reads "
            f"({EXPORT_FORMAT_VERSION}): upgrade saga",
        )
    fields = _Fields(path)
    instance = fields.object(raw.get("instance"), "instance")
    saga_id = fields.get(instance, "saga_id", str)
    row = InstanceRecord(
        saga_id=saga_id,
        saga=fields.get(instance, "saga", str),
        version=fields.get(instance, "version", int),
        status=fields.get(instance, "status", str),
        sequence=fields.get(instance, "sequence", int),
        input=fields.get(instance, "input", str),
        created_at=fields.number(instance, "created_at"),
        updated_at=fields.number(instance, "updated_at"),
        owner=fields.get(instance, "owner", str, optional=True),
        epoch=fields.get(instance, "epoch", int),
        lease_until=fields.number(instance, "lease_until", optional=True),
        # Absent from exports made before instances slept in the store.
        wake_at=fields.number(instance, "wake_at", optional=True)
        if "wake_at" in instance
        else None,
    )
    events = raw.get("events")
    if not isinstance(events, list):
        raise HistoryFileError(path, reason="'events' must be a list")
    records = []
    for i, item in enumerate(events):
        record = fields.object(item, f"events[{i}]")
        records.append(
            EventRecord(
                saga_id=saga_id,
                sequence=fields.get(record, "sequence", int),
                type=fields.get(record, "type", str),
                schema=fields.get(record, "schema", int),
                data=fields.get(record, "data", str),
                recorded_at=fields.number(record, "recorded_at"),
            )
        )
    return row, records, path


@attrs.define
class _Fields:
    """Typed reads from a decoded export; any surprise is a ``HistoryFileError``."""

    path: Path

    def object(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise HistoryFileError(self.path, reason=f"{where} must be a JSON object")
        return value

    def get(self, raw: Mapping[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
        value = raw.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise HistoryFileError(
                self.path, reason=f"{key!r} must be a {kind.__name__}, got {value!r}"
            )
        return value

    def number(self, raw: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
        value = raw.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise HistoryFileError(self.path, reason=f"{key!r} must be a number, got {value!r}")
        return float(value)


# -- definitions by name -----------------------------------------------------------------


class DefinitionSpecError(SagaError, ValueError):
    """A ``module:attribute`` given to ``load_definitions`` names no saga definitions.

    Raised when the module cannot be imported (or raises while it is), has no such
    attribute, or the attribute is neither a ``SagaDefinition`` nor a list, tuple or set
    of them.

    Attributes:
        spec: the ``module:attribute`` given.
        reason: what is wrong with it.
    """

    def __init__(self, spec: str, *, reason: str) -> None:
        super().__init__(f"--definitions {spec!r}: {reason}")
        self.spec = spec
        self.reason = reason


def load_definitions(specs: Iterable[str]) -> list[SagaDefinition]:
    """The definitions named by ``module:attribute`` strings, e.g. ``"shop.sagas:checkout"``.

    The attribute (dotted for a nested one: ``"shop.sagas:registry.all"``) is a
    ``SagaDefinition`` or a list, tuple or set of them. Modules are imported as
    ``import module`` would, from ``sys.path``.

    Raises:
        DefinitionSpecError: a spec is malformed or does not name definitions.
    """
    found: list[SagaDefinition] = []
    for spec in specs:
        module_name, colon, attribute = spec.partition(":")
        if not (colon and module_name and attribute):
            raise DefinitionSpecError(
                spec, reason="expected MODULE:ATTRIBUTE, e.g. 'shop.sagas:checkout'"
            )
        try:
            value: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise DefinitionSpecError(
                spec, reason=f"cannot import module {module_name!r}: {exc}"
            ) from exc
        except Exception as exc:  # the user's module failed: say which, and how
            raise DefinitionSpecError(
                spec,
                reason=f"importing module {module_name!r} raised {type(exc).__name__}: {exc}",
            ) from exc
        for part in attribute.split("."):
            try:
                value = getattr(value, part)
            except AttributeError as exc:
                raise DefinitionSpecError(
                    spec, reason=f"module {module_name!r} has no attribute {attribute!r}"
                ) from exc
        if isinstance(value, SagaDefinition):
            found.append(value)
            continue
        if not isinstance(value, list | tuple | set | frozenset):
            raise DefinitionSpecError(
                spec,
                reason=f"{attribute!r} is a {type(value).__name__}, not a SagaDefinition "
                "or a list of them",
            )
        for item in value:
            if not isinstance(item, SagaDefinition):
                raise DefinitionSpecError(
                    spec,
                    reason=f"{attribute!r} holds a {type(item).__name__} ({item!r}), "
                    "not only SagaDefinition objects",
                )
            found.append(item)
    return found
