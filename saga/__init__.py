"""saga: an embedded, durable saga coordinator for asyncio and trio.

Declare a saga as ordered steps with forward actions and compensations; a
:class:`Coordinator` runs its instances on a store and drives each one to a terminal
status (completed, compensated, failed or cancelled) through crashes and restarts.
"""

from saga._core.context import StepContext
from saga._core.decide import idempotency_key
from saga._core.definition import (
    ChildSaga,
    ContinueAsNew,
    OnTimeout,
    Parallel,
    ParentClose,
    RetryPolicy,
    SagaDefinition,
    Sleep,
    Step,
    StepKind,
    WaitForSignal,
)
from saga._core.events import ErrorInfo, Phase
from saga._core.state import Attempt, SagaState, Status
from saga._core.view import PendingWait, SagaView
from saga._runtime.clock import Clock, SystemClock
from saga._runtime.coordinator import Coordinator, LeasePolicy, SupervisionPolicy
from saga._runtime.handle import SagaHandle, SagaOutcome
from saga._runtime.history import RecordedEvent
from saga._runtime.limits import HistoryLimits
from saga._store.memory import MemoryStore
from saga._store.port import Store

__all__ = [
    "Attempt",
    "ChildSaga",
    "ContinueAsNew",
    "Clock",
    "Coordinator",
    "ErrorInfo",
    "HistoryLimits",
    "LeasePolicy",
    "MemoryStore",
    "OnTimeout",
    "Parallel",
    "ParentClose",
    "PendingWait",
    "Phase",
    "RecordedEvent",
    "RetryPolicy",
    "SagaDefinition",
    "SagaHandle",
    "SagaOutcome",
    "SagaState",
    "SagaView",
    "Sleep",
    "Status",
    "Step",
    "StepContext",
    "StepKind",
    "Store",
    "SupervisionPolicy",
    "SystemClock",
    "WaitForSignal",
    "idempotency_key",
]

__version__ = "0.1.0"
