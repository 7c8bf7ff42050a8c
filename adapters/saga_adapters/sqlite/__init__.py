"""The SQLite store (stdlib sqlite3 on a worker thread; asyncio and trio)."""

from saga_adapters.sqlite._store import SQLiteStore

__all__ = ["SQLiteStore"]
