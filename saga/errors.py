"""The exceptions saga raises, all rooted at :class:`SagaError`.

Families:

* :class:`DefinitionError`: a saga definition is invalid; raised when it is built.
* :class:`PayloadError`: a value cannot be stored as JSON; raised before anything is written.
* :class:`StoreError`: the store refused or failed a read or a write.
* :class:`ExecutionError`: an instance cannot go on as its definition says.
* :class:`CoordinatorError`: a call to the coordinator names something it cannot act on.
"""

from __future__ import annotations

__all__ = [
    "CommandRejected",
    "ConflictError",
    "CoordinatorError",
    "CorruptHistoryError",
    "DefinitionError",
    "ExecutionError",
    "FencedError",
    "InvalidSagaIdError",
    "InvalidStoreURL",
    "NonDeterminismError",
    "NonRetryableError",
    "NotFoundError",
    "PayloadError",
    "SagaError",
    "StartConflictError",
    "StepTimeoutError",
    "StoreError",
    "StoreUnavailableError",
    "UnknownSagaError",
]


class SagaError(Exception):
    """Root of every exception this library raises on purpose."""


# -- definitions and payloads -------------------------------------------------


class DefinitionError(SagaError, ValueError):
    """A saga definition is invalid. Raised when the definition is built.

    Attributes:
        saga: the saga's name, where known.
        step: the offending step's name, where one is at fault.
    """

    def __init__(self, message: str, *, saga: str | None = None, step: str | None = None) -> None:
        super().__init__(message)
        self.saga = saga
        self.step = step


class PayloadError(SagaError, TypeError):
    """A value cannot be encoded as JSON for the store.

    Raised by ``start`` for its input, before anything is written. A step whose result
    is not JSON data fails with it (recorded as a non-retryable ``StepFailed``). ``path``
    says where in the value the problem is, e.g. ``input['when']``.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class PayloadTooLargeError(PayloadError):
    """A payload's JSON is larger than the coordinator's ``HistoryLimits.max_payload_bytes``.

    Raised by ``start`` (the input) and ``signal`` (the payload) before anything is
    written. A step whose result is that large fails with it, for good (recorded as a
    non-retryable ``StepFailed``): keep large data elsewhere and record a reference.
    """

    def __init__(self, *, path: str, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes of JSON, more than the limit of {limit}", path=path)
        self.size = size
        self.limit = limit


# -- stores ---------------------------------------------------------------------


class StoreError(SagaError):
    """The store refused or failed an operation."""


class InvalidStoreURL(StoreError, ValueError):
    """A store URL is malformed or names a store that does not exist. Raised by ``open_store``."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(f"{message} (url: {url!r})")
        self.url = url


class ConflictError(StoreError):
    """A commit expected a sequence the instance no longer has.

    Raised by ``Store.commit`` when another writer (a duplicate or stale actor) got there
    first. Nothing of the refused transition was written.
    """

    def __init__(self, saga_id: str, *, expected: int, actual: int | None) -> None:
        super().__init__(
            f"saga {saga_id!r}: commit expected sequence {expected}, store has {actual}"
        )
        self.saga_id = saga_id
        self.expected = expected
        self.actual = actual


class FencedError(StoreError):
    """A commit from an owner whose lease has passed to another (its epoch is stale).

    Raised by ``Store.commit``; nothing was written. The actor that made it stops: the
    instance is someone else's now.
    """

    def __init__(self, saga_id: str, *, epoch: int, actual: int | None) -> None:
        super().__init__(
            f"saga {saga_id!r}: commit at epoch {epoch}, but the instance is at epoch "
            f"{actual}: its lease has passed to another owner"
        )
        self.saga_id = saga_id
        self.epoch = epoch
        self.actual = actual


class StoreUnavailableError(StoreError):
    """The store cannot be reached or used right now; the operation may be retried."""


class CorruptHistoryError(StoreError):
    """A stored history cannot be decoded or has a gap.

    Raised when an instance's history is read. The rows are left untouched for an operator.
    """

    def __init__(self, saga_id: str, *, sequence: int, reason: str) -> None:
        super().__init__(f"saga {saga_id!r}: history corrupt at sequence {sequence}: {reason}")
        self.saga_id = saga_id
        self.sequence = sequence
        self.reason = reason


# -- execution ------------------------------------------------------------------


class ExecutionError(SagaError):
    """An instance cannot go on as its definition says."""


class NonDeterminismError(ExecutionError):
    """A stored history does not fit the definition it is replayed with.

    Raised when an instance is rebuilt (started, restarted, taken over or resumed by an
    actor) and its history does not fit its definition (same name and version): the code
    changed under a live instance, e.g. a step it ran was renamed, removed or reordered.
    ``saga.testing.check_replay`` finds these before a deploy; its reference lists the
    rules. The supervisor parks the instance as ``suspended`` at once, with this error
    (diff included) as the reason.

    Attributes:
        saga_id: the instance.
        saga: the definition's name.
        version: the definition's version.
        step: the step named where the history leaves the definition, or None.
        sequence: the history event where it does, where known.
        detail: one line: what the history has there and what the definition expects.
        diff: the definition's line above the history's (steps or compensations), or "".
    """

    def __init__(
        self,
        saga_id: str,
        *,
        step: str | None,
        saga: str,
        version: int,
        sequence: int | None = None,
        detail: str | None = None,
        diff: str = "",
    ) -> None:
        if detail is None:
            detail = f"its history names step {step!r}, which {saga!r} v{version} does not have"
            message = f"saga {saga_id!r}: {detail}"
        else:
            message = f"saga {saga_id!r}: its history does not fit {saga!r} v{version}: {detail}"
        super().__init__(f"{message}\n{diff}" if diff else message)
        self.saga_id = saga_id
        self.step = step
        self.saga = saga
        self.version = version
        self.sequence = sequence
        self.detail = detail
        self.diff = diff


class HistoryTooLongError(ExecutionError):
    """An instance's history would grow past ``HistoryLimits.max_events``.

    The transition is not written; the instance is parked ``suspended`` with this as its
    reason, for an operator: nothing is lost, and nothing grows further.
    """

    def __init__(self, saga_id: str, *, events: int, limit: int) -> None:
        super().__init__(
            f"saga {saga_id!r}: its history would hold {events} events, more than the "
            f"limit of {limit}"
        )
        self.saga_id = saga_id
        self.events = events
        self.limit = limit


class CommandRejected(ExecutionError):
    """A command (cancel, resume) does not apply to the instance in its current state.

    Raised by the coordinator's ``cancel`` and ``resume``; nothing was written.
    """

    def __init__(self, saga_id: str, *, command: str, status: str, reason: str) -> None:
        super().__init__(f"saga {saga_id!r} is {status}: cannot {command}: {reason}")
        self.saga_id = saga_id
        self.command = command
        self.status = status
        self.reason = reason


class NonRetryableError(ExecutionError):
    """Raise it (or a subclass) from a step's action or compensation to fail the attempt
    for good: it is not retried, whatever the step's retry policy says.

    Same as listing the exception in the policy's ``non_retryable``, decided where the
    error happens. Recorded as the attempt's failure.
    """


class StepTimeoutError(ExecutionError, TimeoutError):
    """An attempt of a step's action or compensation ran past the step's ``timeout``.

    Recorded as the attempt's failure; retried like any other error unless the step's
    retry policy lists it as non-retryable.
    """

    def __init__(self, saga_id: str, *, step: str, attempt: int, timeout: float) -> None:
        super().__init__(
            f"saga {saga_id!r}: step {step!r} attempt {attempt} timed out after {timeout}s"
        )
        self.saga_id = saga_id
        self.step = step
        self.attempt = attempt
        self.timeout = timeout


# -- coordinator ----------------------------------------------------------------


class CoordinatorError(SagaError):
    """A call to the coordinator names something it cannot act on."""


class UnknownSagaError(CoordinatorError, LookupError):
    """No saga definition with this name (and version) is registered with the coordinator."""

    def __init__(self, name: str, *, version: int | None = None) -> None:
        what = name if version is None else f"{name} v{version}"
        super().__init__(f"no saga definition {what!r} is registered")
        self.name = name
        self.version = version


class NotFoundError(CoordinatorError, LookupError):
    """No instance with this id exists in the store."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(f"no saga instance {saga_id!r}")
        self.saga_id = saga_id


class StartConflictError(CoordinatorError):
    """``start`` named an existing instance with a different saga or input.

    Starting the same id with the same saga and input is idempotent; this is raised when
    either differs. Nothing was written.
    """

    def __init__(self, saga_id: str, *, reason: str) -> None:
        super().__init__(f"saga {saga_id!r} already exists: {reason}")
        self.saga_id = saga_id
        self.reason = reason


class InvalidSagaIdError(CoordinatorError, ValueError):
    """A saga id is not a non-empty str of at most 200 printable characters."""

    def __init__(self, saga_id: object, *, reason: str) -> None:
        super().__init__(f"invalid saga id {saga_id!r}: {reason}")
        self.saga_id = saga_id
        self.reason = reason
