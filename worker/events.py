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
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from worker import metrics, statuses
from worker.hooks import Hooks
from worker.inbound import Inbound
from worker.outcomes import Outcomes
from worker.store import FoldedMessage, Store, lock_names, utcnow
from worker.suppressions import OPT_IN, OPT_OUT, STOP_KEYWORD, Suppressions, opt_out_lock

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

SENT = "message.sent"
FINALIZED = "message.finalized"
RECEIVED = "message.received"
#: The ``record_type`` of a link-click webhook, which has no ``event_type``.
LINK_CLICKED = "link_clicked"

#: What apply_event reports, for metrics and tests.
APPLIED, DUPLICATE, PARKED, IGNORED = "applied", "duplicate", "parked", "ignored"


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def event_id(event: Mapping[str, Any]) -> str | None:
    """The id an event is kept and deduplicated under: Telnyx's ``data.id``, or for a link click (which has
    none) ``click:`` and a digest of its message id, URL and time (URLs are too long for the events table)."""
    data = event.get("data")
    if not isinstance(data, Mapping):
        return None
    if data.get("record_type") == LINK_CLICKED:
        if not data.get("message_id"):
            return None
        key = f"{data.get('message_id')}|{data.get('url')}|{data.get('time_clicked')}"
        return "click:" + hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()
    return str(data["id"]) if data.get("id") else None


def _telnyx_id(data: Mapping[str, Any]) -> str | None:
    payload = data.get("payload")
    if isinstance(payload, Mapping) and payload.get("direction", "outbound") == "outbound":
        value = payload.get("id")
        return str(value) if value else None
    return None


#: How far back the scheduler's sweep looks for parked events whose message became known. The sweep covers a
#: send that recorded its Telnyx id while a batch parking one of its events had not committed yet (seconds);
#: the reconciler fetches from Telnyx whatever is older.
PARKED_SWEEP_S = 3600.0

#: How far back the sweep looks for events ``sendq web`` kept unapplied while Redis was down (:func:`keep_events`):
#: as long as Redis remembers an event id, so no outage is long enough to leave one behind.
KEPT_SWEEP_S = 7 * 86400.0


_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Event:
    event_id: str
    kind: str
    telnyx_id: str | None
    data: Mapping[str, Any]
    body: Mapping[str, Any]

    @classmethod
    def parse(cls, event: Mapping[str, Any], stored_id: str | None = None) -> _Event | None:
        data = event.get("data") if isinstance(event, Mapping) else None
        found_id = stored_id or event_id(event)
        if not isinstance(data, Mapping) or found_id is None:
            return None
        return cls(found_id, str(data.get("event_type") or data.get("record_type") or ""), _telnyx_id(data),
                   data, event)

    @property
    def outbound(self) -> bool:
        """An event that moves one of our messages (once its Telnyx id is known)."""
        return self.telnyx_id is not None and self.kind in (SENT, FINALIZED)

    @property
    def rank(self) -> tuple[int, bool, datetime]:
        """Where the event goes in its message's fold: lower status rank first, then earlier ``occurred_at``."""
        payload = self.data.get("payload")
        entries = (payload.get("to") if isinstance(payload, Mapping) else None) or [{}]
        first = entries[0] if isinstance(entries[0], Mapping) else {}
        is_sent = self.kind == SENT or first.get("status") == statuses.SENT
        at = parse_time(self.data.get("occurred_at"))
        return (statuses.RANK[statuses.SENT] if is_sent else statuses.RANK[statuses.DELIVERED], at is None,
                at or _NEVER)

    def row(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "event_type": self.kind, "telnyx_id": self.telnyx_id,
                "occurred_at": parse_time(self.data.get("occurred_at")), "body": dict(self.body)}


def apply_events(store: Store, batch: Sequence[Mapping[str, Any]], hooks: Hooks | None = None) -> list[str]:
    """Keep a batch of verified events and apply those whose message is known, in one transaction.

    Returns one outcome constant per event, in order: a second copy of an event within the batch is a
    ``DUPLICATE`` (or ``PARKED`` again, like its first copy). ``hooks`` (optional) receives inbound messages
    and messages the batch made final.
    """
    parsed = [_Event.parse(event) for event in batch]
    unique = list({e.event_id: e for e in reversed([p for p in parsed if p is not None])}.values())
    decided = _Batch(store, hooks).apply(unique, record=True)
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
    parked = [_Event.parse(p["body"], p["event_id"]) for p in store.pending_events(telnyx_id)]
    decided = _Batch(store, hooks).apply([p for p in parked if p is not None], record=False)
    return sum(1 for outcome in decided.values() if outcome == APPLIED)


def keep_events(store: Store, batch: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Keep verified events in the store without applying them (``sendq web`` while Redis is down): the
    scheduler's sweep (:func:`apply_parked_known`) applies them, and a redelivery of one through Redis later finds
    it kept (the events table's key dedupes). Returns for each event whether it was new: a second copy, in the
    batch or in the table, is a duplicate."""
    parsed = [_Event.parse(event) for event in batch]
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
    parked = [_Event.parse(p["body"], p["event_id"]) for p in found]
    decided = _Batch(store, hooks).apply([p for p in parked if p is not None], record=False)
    return sum(1 for outcome in decided.values() if outcome == APPLIED)


@dataclass
class _Batch:
    """One transaction's worth of events, and what to announce once it commits."""

    store: Store
    hooks: Hooks | None
    folds: dict[str, _Fold] = field(default_factory=dict)
    after_commit: list[Callable[[], Any]] = field(default_factory=list)

    def apply(self, items: list[_Event], *, record: bool) -> dict[str, str]:
        if not items:
            return {}
        store = self.store
        with store.engine.begin() as conn:
            if record:
                fresh = store.keep_events(conn, [e.row() for e in items])
            else:
                store.begin_batch(conn)
                fresh = set()
            wanted = [e.telnyx_id for e in items if e.outbound] + [
                str(e.data["message_id"]) for e in items if e.kind == LINK_CLICKED]
            found = store.lock_messages(conn, [w for w in wanted if w is not None])
            # Read after the lock: a batch that applied one of these events held it until its commit.
            applied = store.applied_events(conn, [e.event_id for e in items if e.event_id not in fresh])
            decided = {e.event_id: DUPLICATE for e in items if e.event_id in applied}
            pending = [e for e in items if e.event_id not in applied]
            lock_names(conn, self._opt_out_locks(pending))
            for item in pending:
                decided[item.event_id] = self._apply_one(conn, item, found)
            for fold in self.folds.values():
                fold.run()
            store.write_folded(conn, [f.folded() for f in self.folds.values() if f.changed])
            store.mark_events_applied(conn, [i for i, o in decided.items() if o in (APPLIED, IGNORED)
                                             and i not in applied])
        self._announce()
        return decided

    def _apply_one(self, conn: Connection, item: _Event, found: Mapping[str, dict[str, Any]]) -> str:
        if item.kind == RECEIVED:
            return self._inbound(conn, item.data)
        if item.kind == LINK_CLICKED:
            row = found.get(str(item.data["message_id"]))
            Inbound.record_click_within(conn, item.event_id, item.data, row["id"] if row else None,
                                        parse_time(item.data.get("time_clicked")))
            return APPLIED
        if not item.outbound:
            return IGNORED
        row = found.get(str(item.telnyx_id))
        if row is None:
            return PARKED
        self.folds.setdefault(row["id"], _Fold(row)).add(item)
        return APPLIED

    @staticmethod
    def _opt_out_locks(items: list[_Event]) -> list[str]:
        # Taken up front, sorted, so batches with several STOPs/STARTs never wait on each other in a cycle.
        found = []
        for item in items:
            payload = item.data.get("payload")
            if item.kind == RECEIVED and isinstance(payload, Mapping) and isinstance(payload.get("from"), Mapping):
                found.append(opt_out_lock(str(payload["from"].get("phone_number"))))
        return found

    def _inbound(self, conn: Connection, data: Mapping[str, Any]) -> str:
        """Record an inbound message; act on a STOP or START keyword; hand a new message to the inbound hook."""
        payload = data.get("payload")
        if not isinstance(payload, Mapping) or not payload.get("id") or not isinstance(payload.get("from"), Mapping):
            return IGNORED  # nothing to record it under
        if not payload["from"].get("phone_number"):
            return IGNORED
        received_at = parse_time(payload.get("received_at")) or parse_time(data.get("occurred_at"))
        record, fresh = Inbound.record_message_within(conn, payload, received_at)
        recipient, profile, number = record["from"], record["messaging_profile_id"], record["to"]
        if (profile or number) and record["keyword"] in OPT_OUT:
            if Suppressions.add_within(conn, recipient, profile=profile, number=number, source=STOP_KEYWORD,
                                       keyword=record["keyword"], at=received_at):
                self.after_commit.append(metrics.OPTOUTS.labels("added", STOP_KEYWORD).inc)
        elif (profile or number) and record["keyword"] in OPT_IN:
            lifted = Suppressions.opt_in_within(conn, recipient, profile=profile, number=number, at=received_at)
            self.after_commit.append(lambda: metrics.OPTOUTS.labels("removed", "start_keyword").inc(lifted))
        if fresh and self.hooks is not None:
            hooks = self.hooks
            self.after_commit.append(lambda: hooks.inbound_message(record))
        return APPLIED

    def _announce(self) -> None:
        """Count and hand over what the committed batch did: moved messages through Outcomes (final ones only,
        as ``sent`` is no outcome), accepted-to-final latency on Telnyx's clock, inbound hooks and opt-outs."""
        finals = [f for f in self.folds.values() if f.final_event is not None]
        Outcomes(self.store, self.hooks or Hooks.disabled()).reached(
            {"id": f.row["id"], "status": f.status, "kind": f.row["kind"], "priority": f.row["priority"]}
            for f in finals)
        for fold in finals:
            payload = fold.final_event or {}
            metrics.observe_final(fold.status, parse_time(payload.get("received_at")),
                                  parse_time(payload.get("completed_at")) or fold.final_at)
        for call in self.after_commit:
            call()


class _Fold:
    """One message's events folded onto its row: forward by rank only, never out of a final status."""

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.row = row
        self.status: str = row["status"]
        self.moves: list[tuple[str, datetime | None]] = []
        self.values: dict[str, Any] = {"parts": row["parts"], "cost": row["cost"]}
        self.errors: list[dict[str, Any]] = list(row["errors"] or [])
        self.recipient_statuses: dict[str, str] = dict(row["recipient_statuses"] or {})
        self.changed = False
        #: The payload of the event that made the message final, and when it happened.
        self.final_event: Mapping[str, Any] | None = None
        self.final_at: datetime | None = None
        self._events: list[_Event] = []

    def add(self, item: _Event) -> None:
        self._events.append(item)

    def folded(self) -> FoldedMessage:
        return FoldedMessage(id=self.row["id"], status=self.status, status_at=self.row["status_at"],
                             moves=self.moves, parts=self.values["parts"], cost=self.values["cost"],
                             errors=self.errors, recipient_statuses=self.recipient_statuses or None)

    def run(self) -> None:
        for item in sorted(self._events, key=lambda e: e.rank):
            self._apply(item.data)

    def _move(self, to: str, at: datetime | None, details: Mapping[str, Any]) -> bool:
        if self.status not in statuses.lower_than(to):
            return False
        self.status = to
        self.moves.append((to, at))
        self.values.update(details)
        self.changed = True
        return True

    def _apply(self, data: Mapping[str, Any]) -> None:
        payload = data.get("payload") or {}
        occurred_at = parse_time(data.get("occurred_at"))
        entries = [e for e in payload.get("to") or [] if isinstance(e, Mapping)] or [{}]
        details = _details(payload)
        if data.get("event_type") == SENT or entries[0].get("status") == statuses.SENT:
            self._move(statuses.SENT, occurred_at, details)
            return
        errors = [_error(e) for e in payload.get("errors") or [] if isinstance(e, Mapping)]
        final = self._final_status(entries)
        if final is None:
            if errors:  # a group recipient's failure, before the others are final
                self.errors.extend(errors)
                self.changed = True
            return
        sent_at = parse_time(payload.get("sent_at"))
        if sent_at is not None:
            # A final event means the message was sent, whether or not message.sent has arrived yet.
            self._move(statuses.SENT, sent_at, details)
        if self._move(final, occurred_at, details):
            self.errors.extend(errors)
            self.final_event, self.final_at = payload, occurred_at

    def _final_status(self, entries: list[Mapping[str, Any]]) -> str | None:
        """The message's final status from this event, or None while it is not final yet.

        A single recipient's status is the message's. A group MMS gets one ``message.finalized`` per recipient:
        each is recorded, and the message is final once every recipient is, with their common status, or
        ``delivery_failed`` / ``delivery_unconfirmed`` when they differ (not everyone got it).
        """
        recipients = self.row["recipients"]
        reported = [(e.get("phone_number"), e.get("status")) for e in entries
                    if e.get("status") in statuses.TELNYX_FINAL]
        if len(recipients) == 1:
            return reported[0][1] if reported else None
        known = self.recipient_statuses
        named = False
        for number, status in reported:
            if number in recipients:
                named = True
                if statuses.RANK[status] > statuses.RANK[known.get(number, statuses.SUBMITTED)]:
                    known[number] = status
                    self.changed = True
        if not named or set(known) != set(recipients) or not all(statuses.is_final(s) for s in known.values()):
            return None
        outcomes = set(known.values())
        if len(outcomes) == 1:
            return outcomes.pop()
        failed = {statuses.DELIVERY_FAILED, statuses.SENDING_FAILED, statuses.EXPIRED}
        return statuses.DELIVERY_FAILED if outcomes & failed else statuses.DELIVERY_UNCONFIRMED


def _details(payload: Mapping[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if isinstance(payload.get("parts"), int):
        details["parts"] = payload["parts"]
    cost = payload.get("cost")
    if isinstance(cost, Mapping) and cost.get("amount") is not None:
        details["cost"] = {"amount": str(cost["amount"]), "currency": cost.get("currency")}
    return details


def _error(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"code": str(raw.get("code", "")), "title": raw.get("title"), "detail": raw.get("detail")}
