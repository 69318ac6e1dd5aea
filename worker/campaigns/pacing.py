"""A campaign's pace: the rate its senders (or its cap) allow, and how many messages the expander creates now."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from worker.limits import keys_for
from worker.store import utcnow

if TYPE_CHECKING:
    from worker.limiter import Limiter

#: Seconds of the senders' rate each campaign keeps queued: enough to keep them busy between expander ticks.
WINDOW_S = 3.0
MIN_WINDOW = 20
MAX_PAGE = 2000


def senders_rate(limiter: Limiter | None, campaign: Mapping[str, Any]) -> float | None:
    """Messages per second the campaign's senders allow together (None without a limiter: unbounded)."""
    if limiter is None:
        return None
    mms = bool(campaign["body"].get("media_urls"))
    total, account = 0.0, math.inf
    for sender in campaign["senders"] or [None]:
        keys = keys_for(campaign["kind"], sender, campaign["messaging_profile_id"], mms=mms)
        if keys is None:
            return None  # WhatsApp is not metered here
        sender_rate, account_rate = limiter.rates(keys)
        total += sender_rate.mps
        account = account_rate.mps
    return min(total, account)


def effective_rate(limiter: Limiter | None, campaign: Mapping[str, Any]) -> float | None:
    """The campaign's pace at the current limits: its senders' rate, or its cap if lower."""
    rate = senders_rate(limiter, campaign)
    cap = campaign["rate_cap"]
    if cap is not None:
        rate = cap if rate is None else min(rate, cap)
    return rate


def plan_page(campaign: Mapping[str, Any], rate: float | None, outstanding: int) -> tuple[int, float]:
    """How many messages to create now, and the rate cap's credit left before creating them."""
    window = MIN_WINDOW if rate is None else max(MIN_WINDOW, math.ceil(rate * WINDOW_S))
    count = min(MAX_PAGE, window - outstanding)
    credit = math.inf
    if campaign["rate_cap"] is not None:
        elapsed = (utcnow() - (campaign["credit_at"] or utcnow())).total_seconds()
        # The bucket holds at most a window's worth, so a pause or a slow tick does not turn into a burst.
        credit = min(campaign["credit"] + campaign["rate_cap"] * max(0.0, elapsed),
                     max(1.0, campaign["rate_cap"] * WINDOW_S))
        count = min(count, int(credit))
    return max(0, count), credit
