"""Where a message's status changes and is counted: the one place that also tells the application it is final.

Every status change that is an outcome (``submitted``, a retry back to ``queued``, and every final status) goes
through :meth:`Outcomes.move`, or, for changes the store made in bulk (a batch of webhook events), through
:meth:`Outcomes.reached` with the rows it moved. Either way the change is counted in ``sendq_messages_total``
only when it happened, and a final status is handed to the status hook once, by the change that made it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from worker import metrics, statuses

if TYPE_CHECKING:
    from worker.hooks import Hooks
    from worker.store import Store


class Outcomes:
    """Status changes of one store, counted and handed to ``hooks``."""

    def __init__(self, store: Store, hooks: Hooks) -> None:
        self.store = store
        self.hooks = hooks

    def move(self, message_id: str, to: str, *, from_: Iterable[str] | None = None, at: datetime | None = None,
             values: Mapping[str, Any] | None = None, add_errors: Iterable[Mapping[str, Any]] = (),
             condition: str | None = None, attempt_delta: int = 0) -> dict[str, Any] | None:
        """Move a message as :meth:`worker.store.Store.move` does; count and announce the move if it happened.

        Returns the moved row (``id``, ``status``, ``kind``, ``priority``, ...), or None when it did not move.
        """
        moved = self.store.move(message_id, to, from_=from_, at=at, values=values, add_errors=add_errors,
                                condition=condition, attempt_delta=attempt_delta)
        if moved is not None:
            self.reached([moved])
        return moved

    def reached(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Count rows that this process just moved to their ``status``; hand the final ones to the status hook."""
        for row in rows:
            metrics.MESSAGES.labels(row["status"], row["kind"], row["priority"]).inc()
            if statuses.is_final(row["status"]):
                self.hooks.final_status(self.store, row["id"], row["status"])
