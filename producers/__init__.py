"""Producing sendq jobs from Python.

Build a :class:`Producer` once and pass it around::

    with Producer.connect() as producer:
        message_id = producer.send("+13125550123", from_="+13125550001", text="Your code is 123456",
                                   priority="urgent")

The module-level :func:`send`, :func:`status` and :func:`bulk_update` use one producer built from the environment
on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from producers.producer import Producer

__all__ = ["Producer", "bulk_update", "default_producer", "send", "status"]

_default: Producer | None = None
_lock = threading.Lock()


def default_producer() -> Producer:
    """The process-wide producer, built from the environment on first call (never at import)."""
    global _default
    with _lock:
        if _default is None:
            _default = Producer.connect()
        return _default


def send(to: str | Sequence[str], **options: Any) -> str:
    """Accept one message with the default producer; returns its id.

    The message is checked before the default producer connects, so a refused one (ValidationError) leaves no
    embedded Redis running and no SQLite file behind.
    """
    from producers.producer import check_send

    check_send(None, to, **options)
    return default_producer().send(to, **options)


def status(message_id: str) -> dict[str, Any]:
    return default_producer().status(message_id)


def bulk_update(profile_id: str, numbers: Sequence[str], *, assign_only: bool = False) -> dict[str, Any]:
    """Enqueue a bulk messaging-profile update with the default producer; returns ``{"id", "status"}``."""
    from worker.bulk_updates import check_request

    check_request(profile_id, numbers, assign_only)  # before connecting, as send() does
    return default_producer().bulk_update(profile_id, numbers, assign_only=assign_only)
