"""Chaos: a seeded workload killed again and again, at named crash points inside the
library and at random moments from outside, then checked against the guarantees.

``python -m tests.chaos --help`` runs it (see ``runner.py``); ``test_chaos.py`` runs a
short campaign in the suite. The ledger (``ledger.py``), the store snapshots and the
history checks (``checks.py``) and the process helpers (``procs.py``) are shared with the
crash (``tests/crash``) and fencing (``tests/fencing``) tests.
"""
