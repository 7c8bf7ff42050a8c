"""The Postgres store (asyncpg; asyncio only)."""

from saga_adapters.postgres._store import PostgresStore

__all__ = ["PostgresStore"]
