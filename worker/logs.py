"""Logging setup for sendq processes: one line per event, to stderr."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    # dramatiq logs every retry at INFO and the Redis client is chatty at DEBUG.
    logging.getLogger("dramatiq").setLevel(max(logging.WARNING, logging.getLogger().level))
