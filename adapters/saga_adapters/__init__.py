"""Store adapters for saga, and ``open_store`` to pick one by URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

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
    raise InvalidStoreURL(f"unknown store scheme {scheme!r} (known: memory, sqlite)", url=url)
