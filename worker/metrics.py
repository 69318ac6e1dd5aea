"""Every Prometheus metric sendq exports, defined in one place.

Labels stay bounded: statuses, kinds, priorities, Telnyx error codes and webhook results, never a
phone number or a message id. When ``PROMETHEUS_MULTIPROC_DIR`` is set (before this module is imported),
every process writes its samples there and ``GET /metrics`` aggregates them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY

MESSAGES = Counter(
    "sendq_messages_total", "Messages that reached a status, by status, kind and priority.",
    ["status", "kind", "priority"],
)
TELNYX_ERRORS = Counter("sendq_telnyx_errors_total", "Errors returned by Telnyx, by error code.", ["code"])
WEBHOOKS = Counter("sendq_webhook_requests_total", "Webhook requests received, by result.", ["result"])
AMBIGUOUS = Counter("sendq_ambiguous_sends_total", "Sends that failed after the request may have reached Telnyx "
                    "(retried with the same Idempotency-Key).")
DEFERRALS = Counter("sendq_deferrals_total", "Sends put off without using a retry, by reason.", ["reason"])
LIMITER_WAIT = Histogram("sendq_limiter_wait_seconds", "Time a send slept for its rate slot.",
                         buckets=(0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0))
EVENTS = Counter("sendq_events_total", "Telnyx events processed by apply_event, by outcome.", ["outcome"])
SENDER_HOLDS = Counter("sendq_sender_holds_total", "Senders held after a Telnyx error only an operator can fix, "
                       "by error code.", ["code"])
RECONCILED = Counter("sendq_reconciled_total", "Messages the scheduler's reconciler acted on, by outcome.",
                     ["outcome"])


def exposition(multiprocess_dir: str | None = None) -> bytes:
    """The text exposition of this process's metrics, or of every process's when ``multiprocess_dir`` is set."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
