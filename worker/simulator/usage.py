"""Messaging-profile metrics in the simulator, counted from the messages it really accepted.

Shapes follow Telnyx's ``MessagingProfileHighLevelMetrics`` (``/messaging_profile_metrics``) and
``MessagingProfileDetailedMetrics`` (``/messaging_profiles/{id}/metrics``): an overview plus one entry per
time bucket, split by sender type (``label``). Inbound traffic is not recorded by the simulator, so
``received`` is always 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import worker.simulator.inventory as inventory

if TYPE_CHECKING:
    from worker.simulator.core import Simulator

#: Window and bucket width of each ``time_frame`` Telnyx accepts (24h is its default).
TIME_FRAMES = {
    "1h": (timedelta(hours=1), timedelta(minutes=5)),
    "3h": (timedelta(hours=3), timedelta(minutes=15)),
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "3d": (timedelta(days=3), timedelta(hours=6)),
    "7d": (timedelta(days=7), timedelta(days=1)),
    "30d": (timedelta(days=30), timedelta(days=1)),
}
DEFAULT_TIME_FRAME = "24h"
FAILED = frozenset({"sending_failed", "delivery_failed", "expired"})
NOT_SENT = frozenset({"scheduled", "cancelled"})


@dataclass(frozen=True)
class Sent:
    """One recipient of one outbound message: when, from what kind of sender, and how it ended (so far)."""

    at: datetime
    label: str
    status: str


def traffic(sim: Simulator, profile_id: str, since: datetime) -> list[Sent]:
    """Every recipient the profile sent to since ``since``."""
    book = inventory.book(sim)
    found: list[Sent] = []
    for message in list(sim.state.messages.values()):
        payload = message.payload
        at = datetime.fromisoformat(payload["received_at"])
        if payload.get("messaging_profile_id") != profile_id or at < since:
            continue
        held = book.owner(payload["from"]["phone_number"])
        label = held[1]["type"].replace("-", "") if held else "alphanumeric"
        found.extend(Sent(at, label, r["status"]) for r in payload["to"] if r["status"] not in NOT_SENT)
    return found


def _counts(rows: Iterable[Sent]) -> tuple[int, int, float]:
    statuses = [r.status for r in rows]
    failed = sum(s in FAILED for s in statuses)
    return len(statuses), statuses.count("delivered"), round(failed / len(statuses), 4) if statuses else 0.0


def overview(sim: Simulator, profile_id: str, time_frame: str) -> dict[str, Any]:
    """``MessagingProfileHighLevelMetrics`` for one profile over ``time_frame``."""
    since = datetime.now(UTC) - TIME_FRAMES[time_frame][0]
    sent, delivered, error_ratio = _counts(traffic(sim, profile_id, since))
    return {
        "record_type": "messaging_profile_metrics", "messaging_profile_id": profile_id,
        "phone_numbers": inventory.book(sim).count_on(profile_id),
        "outbound": {"sent": sent, "delivered": delivered, "error_ratio": error_ratio},
        "inbound": {"received": 0},
    }


def _buckets(start: datetime, end: datetime, width: timedelta) -> Iterator[tuple[datetime, datetime]]:
    while start < end:
        yield start, start + width
        start += width


def detailed(sim: Simulator, profile_id: str, time_frame: str) -> dict[str, Any]:
    """``MessagingProfileDetailedMetrics``: the overview plus per-bucket, per-sender-type counts."""
    window, width = TIME_FRAMES[time_frame]
    now = datetime.now(UTC)
    rows = traffic(sim, profile_id, now - window)
    labels = sorted({r.label for r in rows}) or ["longcode"]
    entries = []
    for start, end in _buckets(now - window, now, width):
        inside = [r for r in rows if start <= r.at < end]
        metrics = []
        for label in labels:
            sent, delivered, error_ratio = _counts(r for r in inside if r.label == label)
            metrics.append({"label": label, "sent": sent, "delivered": delivered,
                            "outbound_error_ratio": error_ratio, "received": 0})
        entries.append({"timestamp": start.isoformat(timespec="milliseconds"), "metrics": metrics})
    return {"overview": overview(sim, profile_id, time_frame), "detailed": entries}
