"""The store port, for writing a store adapter: the protocol and the records it exchanges.

An adapter implements :class:`Store` (structurally; no inheritance needed) and passes the
contract suite in ``tests/adapters/test_contract.py``.
"""

from saga._store.memory import MemoryStore
from saga._store.port import (
    ACTIVE_STATUSES,
    EventRecord,
    InboxRecord,
    InstanceRecord,
    NewInstance,
    Reply,
    SnapshotRecord,
    Store,
    TaskRecord,
    Transition,
    Wake,
)

__all__ = [
    "ACTIVE_STATUSES",
    "EventRecord",
    "InboxRecord",
    "InstanceRecord",
    "MemoryStore",
    "NewInstance",
    "Reply",
    "SnapshotRecord",
    "Store",
    "TaskRecord",
    "Transition",
    "Wake",
]
