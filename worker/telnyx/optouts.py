"""Opt-outs: the (recipient, sender or profile) pairs Telnyx blocks after a STOP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from worker.telnyx.transport import Transport, body


class OptOuts:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def list(self, *, messaging_profile_id: str | None = None, from_: str | None = None,
             created_at_gte: str | None = None, created_at_lte: str | None = None,
             redaction_enabled: bool | None = None, page_size: int = 250) -> Iterator[dict[str, Any]]:
        """Every opt-out matching the filters, across all pages, fetched lazily."""
        params = body(**{
            "filter[messaging_profile_id]": messaging_profile_id, "filter[from]": from_,
            "created_at[gte]": created_at_gte, "created_at[lte]": created_at_lte,
            "redaction_enabled": None if redaction_enabled is None else str(redaction_enabled).lower(),
        })
        return self._t.paginate("/messaging_optouts", params, page_size=page_size)
