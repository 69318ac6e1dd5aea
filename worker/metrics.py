"""Every Prometheus metric sendq's processes record, defined in one place (README "Operations" lists them).

Labels stay bounded: statuses, kinds, priorities, sender types, queues, Telnyx error codes, endpoint templates
and webhook results, never a phone number, a sender or a message id (:func:`endpoint_label` and
:func:`code_label` fold anything unexpected into one value). When ``PROMETHEUS_MULTIPROC_DIR`` is set before
this module is imported, every process writes its samples there and :func:`exposition` aggregates them.

Metrics read from Redis and the store at scrape time (queue depths, scheduled messages, campaign totals,
limiter utilisation) are not here: :mod:`worker.queue_metrics` collects them when ``/metrics`` is asked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

MESSAGES = Counter(
    "sendq_messages_total", "Messages that reached a status (an outcome), by status, kind and priority.",
    ["status", "kind", "priority"],
)
TELNYX_REQUESTS = Counter(
    "sendq_telnyx_requests_total", "Telnyx API requests (each in-call try), by method, endpoint template and HTTP "
    "status (none: no answer).", ["method", "endpoint", "status"],
)
TELNYX_LATENCY = Histogram(
    "sendq_telnyx_request_duration_seconds", "Time from sending a Telnyx API request to its answer (or failure), "
    "by method and endpoint template.", ["method", "endpoint"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
TELNYX_ERRORS = Counter("sendq_telnyx_errors_total", "Errors returned by Telnyx on sends, by error code.", ["code"])
RETRIES = Counter(
    "sendq_retries_total", "Retries of a Telnyx call: inside the call (scope=call) or of the job through the queue "
    "(scope=job), by reason (no_answer, http_408, http_429, http_5xx, or the Telnyx code).", ["scope", "reason"],
)
DEFERRALS = Counter("sendq_deferrals_total", "Sends put off without using a retry, by reason.", ["reason"])
AMBIGUOUS = Counter("sendq_ambiguous_sends_total", "Sends that failed after the request may have reached Telnyx "
                    "(retried with the same Idempotency-Key).")
LIMITER_WAIT = Histogram("sendq_limiter_wait_seconds", "Time a send slept for its rate slot, by sender type.",
                         ["sender_type"], buckets=(0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0))
ENQUEUE_TO_ACCEPTED = Histogram(
    "sendq_enqueue_to_accepted_seconds", "Time from a message being due (accepted by the producer, or its send_at) "
    "to Telnyx accepting it, by priority.", ["priority"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
ACCEPTED_TO_FINAL = Histogram(
    "sendq_accepted_to_final_seconds", "Time from Telnyx receiving a message to its final status (Telnyx's clock), "
    "by final status.", ["status"],
    buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0),
)
WEBHOOKS = Counter("sendq_webhook_requests_total", "Webhook requests received, by result.", ["result"])
EVENTS = Counter("sendq_events_total", "Telnyx events processed by apply_event, by outcome.", ["outcome"])
SENDER_HOLDS = Counter("sendq_sender_holds_total", "Senders held after a Telnyx error only an operator can fix, "
                       "by error code.", ["code"])
RECONCILED = Counter("sendq_reconciled_total", "Messages the scheduler's reconciler acted on, by outcome.",
                     ["outcome"])
OPTOUTS = Counter("sendq_optouts_total", "Changes to the suppression list, by action (added, removed) and source "
                  "(stop_keyword, start_keyword, telnyx_40300, telnyx_sync, manual).", ["action", "source"])
DEPENDENCY_ERRORS = Counter(
    "sendq_dependency_errors_total", "Calls that failed because a dependency (store, redis) was unavailable; the "
    "outage itself is logged once when it starts and once when it ends.", ["dependency"],
)
# livemin: across a worker's processes, 0 as soon as one of them finds the dependency down.
DEPENDENCY_UP = Gauge("sendq_dependency_up", "Whether the process's last call to a dependency (store, redis) "
                      "succeeded.", ["dependency"], multiprocess_mode="livemin")
HOOKS = Counter("sendq_hooks_total", "Jobs handed to the application's hook actors, by hook (inbound, status) and "
                "result (enqueued, failed).", ["hook", "result"])

#: A path segment that names a resource kind rather than one resource (``messages``, ``long_code``).
_LITERAL_SEGMENT = re.compile(r"^[a-z][a-z_]*$")
_CODE = re.compile(r"^[0-9]{1,6}$")
OTHER = "other"


def endpoint_label(path: str) -> str:
    """The template of a Telnyx API path: ``/messages/{id}`` for ``/messages/40318e0c-...``.

    Any segment that is not a lowercase word is an id, so a number, a UUID or an E.164 never becomes a label.
    """
    path = path.split("?", 1)[0]
    segments = [s if _LITERAL_SEGMENT.match(s) else "{id}" for s in path.strip("/").split("/") if s]
    return "/" + "/".join(segments) if segments else "/"


def code_label(code: str | None) -> str:
    """A Telnyx error code as a label: its digits, or ``other`` for anything that is not a short number."""
    return code if code and _CODE.match(code) else OTHER


def status_reason(status: int | None) -> str:
    """Why a call was retried, from its HTTP status alone (None: no answer)."""
    if status is None:
        return "no_answer"
    return "http_5xx" if status >= 500 else f"http_{status}" if status in (408, 429) else "http_4xx"


def observe_accepted(priority: str, due_at: datetime, accepted_at: datetime) -> None:
    """Enqueue-to-accepted latency of one message; ``due_at`` is when it became due (created, or its send_at)."""
    ENQUEUE_TO_ACCEPTED.labels(priority).observe(max(0.0, (accepted_at - due_at).total_seconds()))


def observe_final(status: str, received_at: datetime | None, final_at: datetime | None) -> None:
    """Accepted-to-final latency on Telnyx's clock; skipped when either time is unknown."""
    if received_at is not None and final_at is not None:
        ACCEPTED_TO_FINAL.labels(status).observe(max(0.0, (final_at - received_at).total_seconds()))


def exposition(multiprocess_dir: str | None = None, extra: Iterable[Collector] = ()) -> bytes:
    """The text exposition of this process's metrics, or of every process's when ``multiprocess_dir`` is set,
    followed by ``extra`` collectors (read at this call: queue depths and the like)."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        # MultiProcessCollector.__init__ has no annotations in prometheus_client.
        MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    extra_registry = CollectorRegistry(auto_describe=False)
    for collector in extra:
        extra_registry.register(collector)
    # Two expositions of disjoint metric families concatenate into one valid exposition.
    return body + generate_latest(extra_registry)
