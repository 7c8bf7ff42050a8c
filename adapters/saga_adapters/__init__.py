"""Store adapters for saga, and ``open_store`` to pick one by URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from saga._store.memory import MemoryStore
from saga.errors import InvalidStoreURL

__all__ = ["open_store"]

_SQLITE_OPTIONS = {"synchronous": ("OFF", "NORMAL", "FULL", "EXTRA")}


def open_store(url: str) -> Any:
    """A store for ``url``, to be used as ``async with open_store(url) as store``.

    Accepted forms:

    * ``memory://`` — the in-memory store.
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` — a SQLite file,
      optionally with ``?synchronous=NORMAL`` (default ``FULL``).
    * ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``) — a Postgres
      database (asyncio only; needs the ``postgres`` extra, asyncpg), optionally with
      ``?schema=name`` for the Postgres schema holding the tables (default ``saga``; a plain
      lower-case identifier). Every other option goes to asyncpg as it reads URLs
      (``sslmode=require``, ``application_name=shop``...; asyncpg sends options it does
      not know, such as ``connect_timeout``, to the server, which refuses them).

    Raises:
        InvalidStoreURL: the URL is malformed, its scheme is unknown, or an option is.
    """
    if not isinstance(url, str):
        raise InvalidStoreURL(f"a store URL must be a str, got {type(url).__name__}", url=repr(url))
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidStoreURL("a store URL looks like 'sqlite:///path.db' or 'memory://'", url=url)
    if scheme == "memory":
        if rest:
            raise InvalidStoreURL("'memory://' takes nothing after the scheme", url=url)
        return MemoryStore()
    if scheme == "sqlite":
        parts = urlsplit(url)
        if parts.netloc:
            raise InvalidStoreURL(
                "a SQLite URL has no host: use three slashes, 'sqlite:///path.db'", url=url
            )
        path = parts.path[1:]
        if not path:
            raise InvalidStoreURL("the SQLite URL names no file", url=url)
        options: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            allowed = _SQLITE_OPTIONS.get(key)
            if allowed is None:
                raise InvalidStoreURL(
                    f"unknown SQLite option {key!r} (known: {', '.join(_SQLITE_OPTIONS)})", url=url
                )
            if value.upper() not in allowed:
                raise InvalidStoreURL(
                    f"{key} must be one of {', '.join(allowed)}, got {value!r}", url=url
                )
            options[key] = value.upper()
        from saga_adapters.sqlite import SQLiteStore

        try:
            return SQLiteStore(path, **options)
        except ValueError as exc:
            raise InvalidStoreURL(str(exc), url=url) from exc
    if scheme in ("postgresql", "postgres"):
        return _postgres(url)
    raise InvalidStoreURL(
        f"unknown store scheme {scheme!r} (known: memory, sqlite, postgresql)", url=url
    )


def _postgres(url: str) -> Any:
    """A Postgres store for ``url``: the ``schema`` option is ours, the rest asyncpg's."""
    try:
        from saga_adapters.postgres import PostgresStore
        from saga_adapters.postgres._schema import check_schema_name
    except ImportError as exc:
        raise InvalidStoreURL(
            f"the Postgres store needs asyncpg: pip install 'saga[postgres]' ({exc})", url=url
        ) from exc
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as exc:
        raise InvalidStoreURL(f"malformed Postgres URL: {exc}", url=url) from exc
    schemas = [value for key, value in query if key == "schema"]
    if len(schemas) > 1:
        raise InvalidStoreURL("the 'schema' option is given more than once", url=url)
    options: dict[str, Any] = {}
    dsn = url
    if schemas:
        # Checked here, before anything is built from it.
        try:
            options["schema"] = check_schema_name(schemas[0])
        except ValueError as exc:
            raise InvalidStoreURL(str(exc), url=url) from exc
        rest = urlencode([(k, v) for k, v in query if k != "schema"], quote_via=quote)
        dsn = urlunsplit(parts._replace(query=rest))
    try:
        return PostgresStore(dsn, **options)
    except ValueError as exc:
        raise InvalidStoreURL(str(exc), url=url) from exc
