"""Applying verified Telnyx events to the store.

Telnyx's events "can be concurrent, duplicated, delayed, or delivered out of order". Each is kept in the
store under its id (a redelivery finds it there), then:

- ``message.sent`` / ``message.finalized`` move the message forward by rank only, so any order of them ends in
  the same record. An event that arrives before the send recorded its telnyx id stays parked until
  :func:`apply_pending` runs for that id. The change that makes a message final hands it to the status hook.
- ``message.received`` (inbound) is recorded (:mod:`worker.inbound`); a STOP-family keyword blocks the sender
  for the messaging profile (or, without one, the number) that received it, START / UNSTOP lifts that block
  (:mod:`worker.suppressions`); a message seen for the first time goes to the inbound hook.
- ``link_clicked`` (flat, with no event id: its id is derived from message, URL and time) is recorded against
  the message it names.

A batch (as ``sendq web`` gathers them) is applied in one transaction with a fixed number of statements: the
events are inserted in one statement (which tells the new from the redelivered), their messages read and locked
in one, each message's events folded in Python in order of status rank and ``occurred_at`` (so a batch ends
where the same events applied one by one would), and the changes written in one UPDATE per status step for
all messages. Metrics and hooks follow the commit, through :class:`worker.outcomes.Outcomes`.

This module holds what callers use: applying events, keeping them while Redis is down, and the scheduler's sweep
of parked ones. The parts, from the bottom up: :mod:`~worker.events.parsing` (an event's kind, id and rank, and
the outcomes), :mod:`~worker.events.fold` (one message's events folded onto its row) and
:mod:`~worker.events.batch` (the transaction and what it announces after the commit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from worker.events.batch import Batch
from worker.events.parsing import (
    APPLIED,
    DUPLICATE,
    FINALIZED,
    IGNORED,
    LINK_CLICKED,
    PARKED,
    RECEIVED,
    SENT,
    Event,
    event_id,
    parse_time,
)
from worker.hooks import Hooks
from worker.store import Store, utcnow

__all__ = [
    "APPLIED", "DUPLICATE", "FINALIZED", "IGNORED", "KEPT_SWEEP_S", "LINK_CLICKED", "PARKED", "PARKED_SWEEP_S",
    "RECEIVED", "SENT", "apply_event", "apply_events", "apply_parked_known", "apply_pending", "event_id",
    "keep_events", "parse_time",
]

#: How far back the scheduler's sweep looks for parked events whose message became known. The sweep covers a
#: send that recorded its Telnyx id while a batch parking one of its events had not committed yet (seconds);
#: the reconciler fetches from Telnyx whatever is older.
PARKED_SWEEP_S = 3600.0

#: How far back the sweep looks for events ``sendq web`` kept unapplied while Redis was down (:func:`keep_events`):
#: as long as Redis remembers an event id, so no outage is long enough to leave one behind.
KEPT_SWEEP_S = 7 * 86400.0


def apply_events(store: Store, batch: Sequence[Mapping[str, Any]], hooks: Hooks | None = None) -> list[str]:
    """Keep a batch of verified events and apply those whose message is known, in one transaction.

    Returns one outcome constant per event, in order: a second copy of an event within the batch is a
    ``DUPLICATE`` (or ``PARKED`` again, like its first copy). ``hooks`` (optional) receives inbound messages
    and messages the batch made final.
    """
    parsed = [Event.parse(event) for event in batch]
    unique = list({e.event_id: e for e in reversed([p for p in parsed if p is not None])}.values())
    decided = Batch(store, hooks).apply(unique, record=True)
    outcomes: list[str] = []
    seen: set[str] = set()
    for item in parsed:
        if item is None:
            outcomes.append(IGNORED)
            continue
        outcome = decided[item.event_id]
        outcomes.append(outcome if item.event_id not in seen or outcome == PARKED else DUPLICATE)
        seen.add(item.event_id)
    return outcomes


def apply_event(store: Store, event: Mapping[str, Any], hooks: Hooks | None = None) -> str:
    """Keep ``event`` and apply it if its message is known (a batch of one). Returns one of the outcome
    constants."""
    return apply_events(store, [event], hooks)[0]


def apply_pending(store: Store, message_id: str, telnyx_id: str, hooks: Hooks | None = None) -> int:
    """Apply the events parked for ``telnyx_id`` now that the send recorded it; returns how many.

    ``message_id`` is the message that now has ``telnyx_id``; the batch finds it again by that id, under lock.
    """
    del message_id
    parked = [Event.parse(p["body"], p["event_id"]) for p in store.pending_events(telnyx_id)]
    decided = Batch(store, hooks).apply([p for p in parked if p is not None], record=False)
    return sum(1 for outcome in decided.values() if outcome == APPLIED)


def keep_events(store: Store, batch: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Keep verified events in the store without applying them (``sendq web`` while Redis is down): the
    scheduler's sweep (:func:`apply_parked_known`) applies them, and a redelivery of one through Redis later finds
    it kept (the events table's key dedupes). Returns for each event whether it was new: a second copy, in the
    batch or in the table, is a duplicate."""
    parsed = [Event.parse(event) for event in batch]
    rows = {p.event_id: p.row() for p in parsed if p is not None}
    fresh = store.keep_unapplied(list(rows.values()))
    outcomes: list[bool] = []
    for item in parsed:
        new = item is None or item.event_id in fresh
        outcomes.append(new)
        if item is not None:
            fresh.discard(item.event_id)
    return outcomes


def apply_parked_known(store: Store, hooks: Hooks | None = None, *, limit: int = 500) -> int:
    """Apply parked events whose message has its Telnyx id by now, and the events ``sendq web`` kept unapplied
    while Redis was down (the scheduler runs this every tick).

    An event parked by a batch that committed after the send's :func:`apply_pending` read would otherwise wait
    for the reconciler; this bounds that to a tick. Returns how many were applied.
    """
    found = store.parked_known(utcnow() - timedelta(seconds=PARKED_SWEEP_S), limit)
    # Events sendq web kept while Redis was down that no outbound message waits for (inbound, clicks, ...); the
    # outbound ones among its events are parked events like any other.
    found += store.unapplied_unbound(utcnow() - timedelta(seconds=KEPT_SWEEP_S), limit)
    parked = [Event.parse(p["body"], p["event_id"]) for p in found]
    decided = Batch(store, hooks).apply([p for p in parked if p is not None], record=False)
    return sum(1 for outcome in decided.values() if outcome == APPLIED)
