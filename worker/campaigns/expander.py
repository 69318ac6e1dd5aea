"""One tick of a campaign's expander: claim the campaign, create the next page of its messages at its pace,
complete it once every message is final, and say when to tick again.

The tick stores; it does not enqueue. It returns the :class:`~worker.campaigns.control.Work` (the new messages'
send jobs, the delay to the next tick) and the ``expand_campaign`` actor enqueues it, as ``bulk_update`` does with
:func:`worker.bulk_updates.run_bulk_update`'s delay.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from worker.campaigns.control import Work, progress
from worker.campaigns.pacing import effective_rate, plan_page
from worker.campaigns.store import Campaigns

if TYPE_CHECKING:
    from worker.services import Services

log = logging.getLogger(__name__)

TICK_S = 0.5
#: Between ticks once every recipient has its message and only webhooks are awaited.
DRAIN_TICK_S = 2.0


def expand_campaign(services: Services, campaign_id: str) -> Work:
    """One tick of a campaign's expander; returns the jobs of the messages it created and the delay until the
    next tick (None when the campaign is done, or not this job's to expand)."""
    book = Campaigns(services.store.engine, services.store.reader)
    campaign = book.claim(campaign_id)
    if campaign is None:
        return Work()  # not running (paused, cancelled, completed), or another expander job holds it
    rate = effective_rate(services.limiter, campaign)
    count, credit = plan_page(campaign, rate, book.outstanding(campaign_id))
    taken, created = book.expand(campaign, count) if count else (0, [])
    sends: list[tuple[str, str, int | None, int | None]] = [(created_id, "bulk", 0, None) for created_id in created]
    if campaign["rate_cap"] is not None and count:
        book.spend_credit(campaign, len(created), credit)
    everything_expanded = campaign["ingested"] and campaign["expanded"] + taken >= campaign["recipients"]
    if everything_expanded and book.unfinished(campaign_id) == 0:
        if book.complete(campaign_id):
            log.info("campaign %s completed", campaign_id)
            services.hooks.campaign_finished(progress(book, book.get(campaign_id), services.limiter))
        return Work(sends)
    delay = DRAIN_TICK_S if everything_expanded else TICK_S
    book.release(campaign_id, delay)
    return Work(sends, delay)
