"""Every Prometheus metric sendq exports, defined in one place.

Labels stay bounded: statuses, kinds, priorities, Telnyx error codes and webhook results, never a
phone number or a message id. When ``PROMETHEUS_MULTIPROC_DIR`` is set (before this module is imported),
every process writes its samples there and ``GET /metrics`` aggregates them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY

MESSAGES = Counter(
    "sendq_messages_total", "Messages that reached a status, by status, kind and priority.",
    ["status", "kind", "priority"],
)
TELNYX_ERRORS = Counter("sendq_telnyx_errors_total", "Errors returned by Telnyx, by error code.", ["code"])
WEBHOOKS = Counter("sendq_webhook_requests_total", "Webhook requests received, by result.", ["result"])
EVENTS = Counter("sendq_events_total", "Telnyx events processed by apply_event, by outcome.", ["outcome"])


def exposition(multiprocess_dir: str | None = None) -> bytes:
    """The text exposition of this process's metrics, or of every process's when ``multiprocess_dir`` is set."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
