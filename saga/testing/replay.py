"""Check stored histories against saga definitions before a deploy.

Usage::

    python -m saga.testing.replay (--store URL | --histories PATH)
        --definitions MODULE:ATTRIBUTE [MODULE:ATTRIBUTE ...] [--only-active]

Prints the report of ``saga.testing.check_replay``. Exit status: 0 if every history
replays, 1 if some do not, 2 if the check could not be made (bad arguments, a store that
cannot be opened, a malformed export).

This is the one module of ``saga`` that imports ``saga_adapters``, to open stores by URL.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio

from saga._core.definition import SagaDefinition
from saga.errors import SagaError, StoreError
from saga.testing._replay import ReplayReport, check_replay, load_definitions

__all__ = ["main"]

#: Exit statuses.
OK, FAILURES, ERROR = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m saga.testing.replay",
        description="Check that stored saga histories replay with the given definitions. "
        "Exit status: 0 all replay, 1 some do not, 2 the check could not be made.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--store",
        metavar="URL",
        help="a store URL, as saga_adapters.open_store takes (sqlite:///sagas.db, "
        "postgresql://...)",
    )
    source.add_argument(
        "--histories",
        metavar="PATH",
        type=Path,
        help="a directory of histories written by export_histories (or one such file)",
    )
    parser.add_argument(
        "--definitions",
        metavar="MODULE:ATTRIBUTE",
        nargs="+",
        required=True,
        help="where the definitions are: a SagaDefinition, or a list of them",
    )
    parser.add_argument(
        "--only-active",
        action="store_true",
        help="check only running, compensating and suspended instances",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = _parser().parse_args(argv)
    try:
        definitions = load_definitions(args.definitions)
        if args.store is not None:
            report = anyio.run(_check_store, args.store, definitions, args.only_active)
        else:
            report = anyio.run(_check_files, args.histories, definitions, args.only_active)
    except (SagaError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ERROR
    except Exception:  # noqa: BLE001 - a bug, ours or the store's: not "does not replay"
        traceback.print_exc()
        return ERROR
    print(report)
    return OK if report.ok else FAILURES


async def _check_store(
    url: str, definitions: list[SagaDefinition], only_active: bool
) -> ReplayReport:
    from saga_adapters import open_store  # the one import of adapters: stores by URL

    store = open_store(url)
    path = getattr(store, "path", None)  # a SQLite file: never create one by mistake
    if isinstance(path, str) and not await anyio.Path(path).is_file():
        raise StoreError(f"no SQLite database at {path!r} (url: {_redacted(url)!r})")
    async with store:
        return await check_replay(store, definitions, only_active=only_active, label=_redacted(url))


async def _check_files(
    path: Path, definitions: list[SagaDefinition], only_active: bool
) -> ReplayReport:
    return await check_replay(path, definitions, only_active=only_active)


def _redacted(url: str) -> str:
    """``url`` without its password, fit for a report."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    except ValueError:
        return "<url>"


if __name__ == "__main__":
    sys.exit(main())
