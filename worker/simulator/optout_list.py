"""The simulator's opt-out list: the block rules that inbound STOP / START texts build, one per recipient and
messaging profile.

Telnyx applies the block per messaging profile: after a recipient texts STOP to a profile's number, sends
from that profile to them answer 409 / 40300 until they text START or UNSTOP. A rule's ``from`` is the
Telnyx number that received the STOP and ``to`` the recipient who sent it. :mod:`worker.simulator.optouts`
serves the list.
"""

from __future__ import annotations

import threading
from typing import Any

from worker.simulator.state import now_iso

OPT_OUT = frozenset({"stop", "stopall", "stop all", "unsubscribe", "cancel", "end", "quit"})
OPT_IN = frozenset({"start", "unstop"})


def keyword(text: str | None) -> str | None:
    word = " ".join((text or "").split()).lower()
    return word if word in OPT_OUT | OPT_IN else None


class OptOutList:
    """The block rules, one per (recipient, messaging profile)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: dict[tuple[str, str], dict[str, Any]] = {}

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()

    def blocks(self, sender: str, recipient: str, profile: str) -> bool:
        with self._lock:
            return (recipient, profile) in self._rules

    def apply(self, *, recipient: str, number: str, profile: str, text: str | None) -> str | None:
        """Update the list for an inbound message; returns the keyword that acted, if any."""
        found = keyword(text)
        with self._lock:
            if found in OPT_OUT:
                self._rules.setdefault((recipient, profile), {
                    "from": number, "to": recipient, "keyword": found.upper(), "messaging_profile_id": profile,
                    "created_at": now_iso(),
                })
            elif found in OPT_IN:
                self._rules.pop((recipient, profile), None)
        return found

    def add(self, rule: dict[str, Any]) -> None:
        with self._lock:
            self._rules[(rule["to"], rule["messaging_profile_id"])] = rule

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted(self._rules.values(), key=lambda r: r["created_at"])
