"""One transaction applying a batch of events with a fixed number of statements, and what it announces once
committed (see :mod:`worker.events`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker import metrics
from worker.events.fold import Fold
from worker.events.parsing import APPLIED, DUPLICATE, IGNORED, LINK_CLICKED, PARKED, RECEIVED, Event, parse_time
from worker.hooks import Hooks
from worker.inbound import Inbound
from worker.outcomes import Outcomes
from worker.store import Store, lock_names
from worker.suppressions import OPT_IN, OPT_OUT, STOP_KEYWORD, Suppressions, opt_out_lock

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


@dataclass
class Batch:
    """One transaction's worth of events, and what to announce once it commits."""

    store: Store
    hooks: Hooks | None
    folds: dict[str, Fold] = field(default_factory=dict)
    after_commit: list[Callable[[], Any]] = field(default_factory=list)

    def apply(self, items: list[Event], *, record: bool) -> dict[str, str]:
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

    def _apply_one(self, conn: Connection, item: Event, found: Mapping[str, dict[str, Any]]) -> str:
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
        self.folds.setdefault(row["id"], Fold(row)).add(item)
        return APPLIED

    @staticmethod
    def _opt_out_locks(items: list[Event]) -> list[str]:
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
