"""Test your sagas: a virtual clock, fault injection, every compensation path, replay checks.

Pure Python, on a real store (an in-memory one or a SQLite file): no server, no Docker, no
download. The pytest plugin (installed with saga, registered as ``saga``) gives fixtures
around :class:`SagaTestKit`; see the how-to "Test your compensation paths on SQLite".
"""

from saga._core.fit import Divergence
from saga._runtime.hooks import SimulatedCrash
from saga.testing._clock import VirtualClock
from saga.testing._faults import (
    FaultError,
    Faults,
    Injected,
    InjectedFault,
    PermanentInjectedFault,
)
from saga.testing._kit import SagaTestKit
from saga.testing._paths import (
    CompensationPath,
    compensation_paths,
    compensations,
    completed_steps,
)
from saga.testing._replay import (
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    DefinitionSpecError,
    HistoryFileError,
    ReplayCheckFailed,
    ReplayFailure,
    ReplayProblem,
    ReplayReport,
    check_replay,
    export_histories,
    load_definitions,
)

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "CompensationPath",
    "DefinitionSpecError",
    "Divergence",
    "FaultError",
    "Faults",
    "HistoryFileError",
    "Injected",
    "InjectedFault",
    "PermanentInjectedFault",
    "ReplayCheckFailed",
    "ReplayFailure",
    "ReplayProblem",
    "ReplayReport",
    "SagaTestKit",
    "SimulatedCrash",
    "VirtualClock",
    "check_replay",
    "compensation_paths",
    "compensations",
    "completed_steps",
    "export_histories",
    "load_definitions",
]
