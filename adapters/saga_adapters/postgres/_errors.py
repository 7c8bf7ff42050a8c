"""The one place where an asyncpg error becomes a saga store error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from saga.errors import SagaError, StoreError, StoreUnavailableError

__all__ = ["DRIVER_ERRORS", "breaks_connection", "translate", "translated"]

#: SQLSTATEs that say "not now" rather than "never": the operation may be retried.
_TRANSIENT = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57014",  # query_canceled (statement_timeout)
    "57P01",  # admin_shutdown (pg_terminate_backend, server stopping)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, in recovery)
    "53300",  # too_many_connections
    "53000",  # insufficient_resources
    "53100",  # disk_full
    "58030",  # io_error
}

#: What a call into asyncpg may raise besides our own errors. InternalClientError: a
#: connection out of step with its protocol, e.g. one the server ended (a FATAL error
#: arrives before the socket closes) that was handed out in between.
DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


#: Client-side failures that say "not now": a lost or unusable connection, a timeout.
_UNAVAILABLE = (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)


def breaks_connection(exc: BaseException) -> bool:
    """Whether the connection that raised ``exc`` may be out of step with its server.

    An SQL error the server answered (and then said "ready") leaves the connection in
    step, and so does an error of ours; cancellation in the middle of an exchange, a broken
    socket, a client-side failure or a FATAL error from a server ending the session do not.
    """
    if isinstance(exc, SagaError):
        return exc.__cause__ is not None and breaks_connection(exc.__cause__)
    if isinstance(exc, asyncpg.PostgresError):
        code = str(getattr(exc, "sqlstate", "") or "")
        severity = str(getattr(exc, "severity", "") or "")
        return code.startswith(("08", "57P")) or severity in ("FATAL", "PANIC")
    return True


def translate(exc: BaseException) -> StoreError:
    """The store error for a driver error, with the driver's as its cause.

    A unique violation is a plain StoreError here: where one means that another writer got
    there first, the caller knows which instance and says so (``ConflictError``).
    """
    error: StoreError
    if isinstance(exc, asyncpg.PostgresError):
        code = str(getattr(exc, "sqlstate", "") or "")
        if code in _TRANSIENT or code.startswith("08"):  # 08xxx: connection exceptions
            error = StoreUnavailableError(f"postgres: {type(exc).__name__}: {exc}")
        else:
            error = StoreError(f"postgres: {type(exc).__name__} [{code}]: {exc}")
    elif isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        # A value the driver cannot encode, or a bad option: retrying will not help.
        error = StoreError(f"postgres: {type(exc).__name__}: {exc}")
    elif isinstance(exc, _UNAVAILABLE):
        error = StoreUnavailableError(f"postgres: {type(exc).__name__}: {exc}")
    else:
        error = StoreError(f"postgres: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


@contextmanager
def translated() -> Iterator[None]:
    """Raise driver errors escaping the block as store errors (``raise ... from``)."""
    try:
        yield
    except SagaError:
        raise
    except DRIVER_ERRORS as exc:
        raise translate(exc) from exc
