"""``python -m tests.chaos``: see ``tests/chaos/runner.py``."""

from __future__ import annotations

import sys

from tests.chaos.runner import main

sys.exit(main())
