"""Child targets for ``worker.pool.Pool`` in tests: module-level, so a spawned child can import them."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

#: Where each child appends a line ``pid started-at`` (set by the test, inherited through the environment).
STARTS_FILE = "SENDQ_TEST_POOL_STARTS"


def _note_start() -> None:
    with open(os.environ[STARTS_FILE], "a", encoding="utf-8") as starts:
        starts.write(f"{os.getpid()} {time.time():.3f}\n")


def exit_at_once(settings: Any, queues: list[str], threads: int, worker_id: str) -> None:
    """A worker that cannot start (a dependency down at start, a broken deployment): exits 3 at once."""
    _note_start()
    sys.exit(3)


def exit_after_a_while(settings: Any, queues: list[str], threads: int, worker_id: str) -> None:
    """A worker that runs a while, then crashes."""
    _note_start()
    time.sleep(float(os.environ.get("SENDQ_TEST_POOL_LIFETIME_S", "1")))
    sys.exit(4)
