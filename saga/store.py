"""The store port, for writing a store adapter: the protocol and the records it exchanges.

An adapter implements :class:`Store` (structurally; no inheritance needed) and passes the
contract suite in ``tests/adapters/test_contract.py``.
"""

from saga._store.memory import MemoryStore
from saga._store.port import (
    EventRecord,
    InstanceRecord,
    NewInstance,
    Store,
    TaskRecord,
    Transition,
)

__all__ = [
    "EventRecord",
    "InstanceRecord",
    "MemoryStore",
    "NewInstance",
    "Store",
    "TaskRecord",
    "Transition",
]
