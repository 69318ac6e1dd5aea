"""The opt-out sync: Telnyx's opt-out blocks (``GET /messaging_optouts``) copied into the suppression list.

A STOP normally reaches sendq as a ``message.received`` webhook, but a webhook can be lost, a STOP can go to a
profile whose webhooks point elsewhere, and blocks exist from before sendq ran. The sync fetches the blocks
created since its high-water mark (``created_at[gte]``: the newest ``created_at`` it has seen, kept in the
store's ``sync_state`` so a Redis restart loses nothing), every page of them, and adds each as a
``telnyx_sync`` suppression. Pages are read lazily; the mark moves only after the last page, so a pass that
fails half-way is repeated from the same mark (adding a block twice is a no-op). ``gte`` repeats the blocks
created at the mark itself, which are skipped as already present.

It only adds: a block lifted at Telnyx (START) is lifted here by the START's own webhook, and a row it may
leave behind would end its next send ``suppressed`` where Telnyx would have sent it, never the reverse.
:class:`PeriodicOptOutSync` runs a pass every ``optout_sync_interval_s`` on a background thread of
``sendq scheduler``; ``sendq optouts sync`` runs one now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from worker.errors import TelnyxError
from worker.sms import is_e164
from worker.store import sync_state, utcnow
from worker.suppressions import TELNYX_SYNC, Suppressions

if TYPE_CHECKING:
    from worker.store import Store
    from worker.telnyx import TelnyxClient

log = logging.getLogger(__name__)

#: The ``sync_state`` row holding the ``created_at`` of the newest block seen, as Telnyx wrote it.
MARK = "optouts.created_at"
#: Telnyx's largest page.
PAGE_SIZE = 250


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


@dataclass
class SyncResult:
    """What one pass did: blocks Telnyx listed, new suppressions, blocks it could not use (a redacted number)."""

    since: str | None
    high_water_mark: str | None
    fetched: int = 0
    added: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class OptOutSync:
    """One pass of the sync, over the store and a Telnyx client."""

    def __init__(self, store: Store, telnyx: TelnyxClient, *, page_size: int = PAGE_SIZE) -> None:
        self.store = store
        self.telnyx = telnyx
        self.suppressions = Suppressions.of(store)
        self.page_size = page_size

    def mark(self) -> str | None:
        """The high-water mark: the next pass asks for blocks created at or after it (None: every block)."""
        with self.store.reader.connect() as conn:
            return conn.execute(sa.select(sync_state.c.value).where(sync_state.c.name == MARK)).scalar()

    def run(self) -> SyncResult:
        """Fetch every block created since the mark, add the new ones, then move the mark."""
        since = self.mark()
        result = SyncResult(since=since, high_water_mark=since)
        newest = _parse(since)
        for block in self.telnyx.optouts.list(created_at_gte=since, page_size=self.page_size):
            result.fetched += 1
            created = _parse(block.get("created_at"))
            if created is not None and (newest is None or created > newest):
                newest, result.high_water_mark = created, block["created_at"]
            if not self._usable(block):
                result.skipped += 1
            elif self._add(block, created):
                result.added += 1
        if result.high_water_mark != since:
            self._save_mark(result.high_water_mark)
        return result

    def _add(self, block: Mapping[str, Any], created: datetime | None) -> bool:
        return self.suppressions.add(str(block["to"]), profile=block.get("messaging_profile_id") or None,
                                     number=block.get("from") or None, source=TELNYX_SYNC,
                                     keyword=(block.get("keyword") or "").casefold() or None, at=created)

    @staticmethod
    def _usable(block: Mapping[str, Any]) -> bool:
        """A block sendq can act on: an E.164 recipient (not redacted) and a profile or number."""
        to = block.get("to")
        return isinstance(to, str) and is_e164(to) and bool(block.get("messaging_profile_id") or block.get("from"))

    def _save_mark(self, value: str | None) -> None:
        with self.store.engine.begin() as conn:
            updated = conn.execute(sync_state.update().where(sync_state.c.name == MARK)
                                   .values(value=value, updated_at=utcnow())).rowcount
            if not updated:
                conn.execute(sync_state.insert().values(name=MARK, value=value, updated_at=utcnow()))


class PeriodicOptOutSync:
    """Runs :class:`OptOutSync` every ``interval_s`` on a background thread, one pass at a time, so a slow
    Telnyx never delays the scheduler's other duties. A failed pass is logged and tried again next interval."""

    def __init__(self, sync: OptOutSync | None, interval_s: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sync = sync
        self.interval_s = interval_s
        self._clock = clock
        self._next_at = clock()
        self._pass: threading.Thread | None = None
        self._lock = threading.Lock()
        self._added = 0
        if sync is None and interval_s > 0:
            log.warning("no Telnyx client (TELNYX_API_KEY unset): opt-outs are not synced from Telnyx")

    def tick(self) -> dict[str, int]:
        """Start a pass if one is due; ``optouts_synced``: suppressions added by passes finished since the last tick."""
        if self._due():
            self._next_at = self._clock() + self.interval_s
            self._pass = threading.Thread(target=self._run, name="sendq-optout-sync", daemon=True)
            self._pass.start()
        with self._lock:
            added, self._added = self._added, 0
        return {"optouts_synced": added}

    def _due(self) -> bool:
        idle = self._pass is None or not self._pass.is_alive()
        return self.sync is not None and self.interval_s > 0 and idle and self._clock() >= self._next_at

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for a running pass to end."""
        running = self._pass
        if running is not None:
            running.join(timeout_s)

    def _run(self) -> None:
        assert self.sync is not None
        try:
            result = self.sync.run()
        except (TelnyxError, sa.exc.SQLAlchemyError) as exc:
            log.warning("opt-out sync failed (%s); trying again in %.0f s", exc, self.interval_s)
            return
        if result.added:
            log.info("opt-out sync: %d new opt-outs from Telnyx (of %d listed)", result.added, result.fetched)
        with self._lock:
            self._added += result.added
