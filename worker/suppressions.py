"""The suppression list: (recipient, scope) pairs sendq never sends to.

Telnyx blocks a recipient per messaging profile once they text a STOP-family keyword to one of its numbers,
and answers 40300 to every later send until they text START or UNSTOP. sendq keeps its own copy in the store
(the system of record), so a send to an opted-out recipient ends ``suppressed`` before any Telnyx call, and
an operator can see, add and remove blocks (``sendq optouts``).

**Scope.** A row's ``scope`` is the messaging profile id when the block is known to be profile-wide (an inbound
STOP names its profile; a refused message named one; Telnyx's opt-out list gives one), else the sender (the
number that received the STOP, or that Telnyx refused). Each row also keeps the ``number`` it was learned on.
A message is suppressed for a recipient when a row of that recipient has ``scope`` equal to the message's
profile or sender, or was learned on the message's sender number: a message that names only its number is
caught by a STOP sent to that number, one that names its profile by a STOP to any number of the profile. A
number of the same profile that the message does not tie to it is left to Telnyx's 40300, which adds the pair.

**Order.** Telnyx's webhooks come in any order, so every row keeps when the opt-out happened: a START removes
the rows it covers that are not newer than itself, and a block written after a newer START of its recipient is
taken back at once (written first, checked second, so a STOP and a START applied concurrently still end right).

**Keywords** are Telnyx's defaults, matched on the whole text with surrounding whitespace ignored, case
folded and inner runs of whitespace counted as one space ("Stop All" matches, "stop it please" does not):
opt-out ``stop, stopall, stop all, unsubscribe, cancel, end, quit``; opt-in ``start, unstop``.
"""

from __future__ import annotations

import builtins  # builtins.list in signatures below the class's own list() method, which shadows it there
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from worker import metrics
from worker.errors import ValidationError
from worker.sms import is_e164, sender_kind
from worker.store import NamedRow, inbound_messages, insert_new, lock_names, suppressions, utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from worker.store import Store

OPT_OUT = frozenset({"stop", "stopall", "stop all", "unsubscribe", "cancel", "end", "quit"})
OPT_IN = frozenset({"start", "unstop"})

#: Where a block came from.
STOP_KEYWORD, TELNYX_40300, TELNYX_SYNC, MANUAL = "stop_keyword", "telnyx_40300", "telnyx_sync", "manual"

#: Rows per page of :meth:`Suppressions.list`.
PAGE_SIZE = 500

_NUMBER_IN_TEXT = re.compile(r"\+\d{2,15}")

#: The send path's check, built once (it runs before every send): blocks by scope, or learned on the sender.
_BLOCKED = sa.select(suppressions.c.recipient).where(
    suppressions.c.recipient.in_(sa.bindparam("recipients", expanding=True)))
_BLOCKED_BY_SCOPE = _BLOCKED.where(suppressions.c.scope.in_(sa.bindparam("scopes", expanding=True)))
_BLOCKED_BY_SCOPE_OR_NUMBER = _BLOCKED.where(sa.or_(suppressions.c.scope.in_(sa.bindparam("scopes", expanding=True)),
                                                    suppressions.c.number == sa.bindparam("sender")))


def keyword(text: str | None) -> str | None:
    """The opt-out or opt-in keyword ``text`` is, normalized (``"stop all"``, ``"start"``), else None."""
    word = " ".join((text or "").split()).casefold()
    return word if word in OPT_OUT or word in OPT_IN else None


def opt_out_lock(recipient: str) -> str:
    """The lock name that serializes a recipient's blocks and opt-ins (see :func:`worker.store.lock_names`)."""
    return f"sendq.optout:{recipient}"


def check_pair(recipient: Any, scope: Any) -> tuple[str, str | None, str | None]:
    """A pair an operator gives: ``(recipient, profile, sender)``, exactly one of the last two set.

    ``recipient`` must be written exactly in E.164 form (:func:`worker.sms.e164`), as the send path compares the
    stored string with the message's; ``scope`` a messaging profile UUID or a sender (E.164 number, short code or
    alphanumeric sender ID). Raises ValidationError naming ``number`` or ``scope``.
    """
    if not isinstance(recipient, str) or not is_e164(recipient):
        raise ValidationError("number", f"must be an E.164 number like +13125550123 (got {recipient!r})")
    if not isinstance(scope, str) or not scope:
        raise ValidationError("scope", "must be a messaging profile UUID or a sender number")
    try:
        return recipient, str(uuid.UUID(scope)), None
    except ValueError:
        pass
    if sender_kind(scope) is None:
        raise ValidationError("scope", f"must be a messaging profile UUID or a sender number (got {scope!r})")
    return recipient, None, scope


@dataclass(frozen=True)
class Suppression:
    """One row of the list, as ``sendq optouts list --json`` shows it."""

    recipient: str
    scope: str
    messaging_profile_id: str | None
    number: str | None
    source: str
    keyword: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat()}


def _covered_by_opt_in(row: NamedRow, profile: str | None, number: str | None) -> bool:
    """Whether a START received by ``number`` on ``profile`` lifts the block ``row``.

    It lifts blocks of its profile and of its number, and blocks learned from a 40300 whose profile sendq
    never knew: that block may have been this profile's; if it was another's, Telnyx refuses the next send
    again and the block comes back.
    """
    ours = {v for v in (profile, number) if v}
    return bool(row["scope"] in ours or row["number"] in ours or row["messaging_profile_id"] in ours
                or (row["source"] == TELNYX_40300 and row["messaging_profile_id"] is None))


class Suppressions:
    """The suppression list in the store: add, remove, opt-in, check and list."""

    def __init__(self, engine: Engine, reader: Engine | None = None) -> None:
        self.engine = engine
        self.reader = reader or engine

    @classmethod
    def of(cls, store: Store) -> Suppressions:
        return cls(store.engine, store.reader)

    def add(self, recipient: str, *, profile: str | None = None, number: str | None = None, source: str,
            keyword: str | None = None, at: datetime | None = None) -> bool:
        """Block ``recipient`` for ``profile`` (when known) or else ``number``; True if a new row was written.

        A row already there keeps its time. A block older than an opt-in the recipient already sent for the same
        scope is removed again at once (the START was later, so it wins).
        """
        with self.engine.begin() as conn:
            added = self.add_within(conn, recipient, profile=profile, number=number, source=source,
                                    keyword=keyword, at=at)
        if added:
            metrics.OPTOUTS.labels("added", source).inc()
        return added

    @staticmethod
    def add_within(conn: Connection, recipient: str, *, profile: str | None = None, number: str | None = None,
                   source: str, keyword: str | None = None, at: datetime | None = None) -> bool:
        """:meth:`add` in the caller's transaction, uncounted (the caller counts once it commits)."""
        if not profile and not number:
            raise ValueError("a suppression needs a messaging profile or a number")
        at = at or utcnow()
        row = {"recipient": recipient, "scope": profile or number, "messaging_profile_id": profile or None,
               "number": number or None, "source": source, "keyword": keyword, "created_at": at}
        # Every block and opt-in of a recipient holds this lock to commit: a STOP and a START that race each
        # see the other's rows, whichever commits first.
        lock_names(conn, [opt_out_lock(recipient)])
        if not insert_new(conn, suppressions, row):
            return False
        if Suppressions._opted_in_since(conn, row):
            Suppressions._delete(conn, [row], at)
            return False
        return True

    def opt_in(self, recipient: str, *, profile: str | None, number: str | None, at: datetime | None = None) -> int:
        """Lift the blocks of ``recipient`` that a START to ``number`` on ``profile`` at ``at`` covers; how many."""
        with self.engine.begin() as conn:
            lifted = self.opt_in_within(conn, recipient, profile=profile, number=number, at=at)
        metrics.OPTOUTS.labels("removed", "start_keyword").inc(lifted)
        return lifted

    @staticmethod
    def opt_in_within(conn: Connection, recipient: str, *, profile: str | None, number: str | None,
                      at: datetime | None = None) -> int:
        """:meth:`opt_in` in the caller's transaction, uncounted."""
        at = at or utcnow()
        lock_names(conn, [opt_out_lock(recipient)])
        rows = conn.execute(suppressions.select().where(
            suppressions.c.recipient == recipient, suppressions.c.created_at <= at)).mappings().all()
        return Suppressions._delete(conn, [r for r in rows if _covered_by_opt_in(r, profile, number)], at)

    def remove(self, recipient: str, scope: str) -> bool:
        """Drop one pair (an operator's decision); whether it was there."""
        with self.engine.begin() as conn:
            removed = conn.execute(suppressions.delete().where(
                suppressions.c.recipient == recipient, suppressions.c.scope == scope)).rowcount > 0
        if removed:
            metrics.OPTOUTS.labels("removed", MANUAL).inc()
        return removed

    def suppressed(self, recipients: Sequence[str], *, sender: str | None, profile: str | None) -> list[str]:
        """Which of ``recipients`` a message from ``sender`` on ``profile`` may not go to (one indexed query)."""
        scopes = [s for s in (profile, sender) if s]
        if not recipients or not scopes:
            return []
        query = _BLOCKED_BY_SCOPE_OR_NUMBER if sender else _BLOCKED_BY_SCOPE
        params = {"recipients": list(recipients), "scopes": scopes, "sender": sender}
        with self.reader.connect() as conn:
            found = set(conn.execute(query, params).scalars())
        return [r for r in recipients if r in found]

    def get(self, recipient: str, scope: str) -> Suppression | None:
        query = suppressions.select().where(suppressions.c.recipient == recipient, suppressions.c.scope == scope)
        with self.reader.connect() as conn:
            found = conn.execute(query).mappings().first()
        return Suppression(**found) if found else None

    def list(self, *, scope: str | None = None, after: tuple[str, str] | None = None,
             limit: int = PAGE_SIZE) -> list[Suppression]:
        """One page, ordered by (recipient, scope), starting after the key ``after``; ``scope`` keeps the rows
        that apply to that profile or sender."""
        query = sa.select(suppressions).order_by(suppressions.c.recipient, suppressions.c.scope).limit(limit)
        if scope:
            query = query.where(sa.or_(suppressions.c.scope == scope, suppressions.c.number == scope))
        if after is not None:
            query = query.where(sa.tuple_(suppressions.c.recipient, suppressions.c.scope) > sa.tuple_(*after))
        with self.reader.connect() as conn:
            return [Suppression(**row) for row in conn.execute(query).mappings()]

    def iterate(self, *, scope: str | None = None, page_size: int = PAGE_SIZE) -> Iterator[Suppression]:
        """Every row (of ``scope``), a page at a time."""
        after: tuple[str, str] | None = None
        while True:
            page = self.list(scope=scope, after=after, limit=page_size)
            yield from page
            if len(page) < page_size:
                return
            after = (page[-1].recipient, page[-1].scope)

    def record_refusal(self, recipients: Sequence[str], *, sender: str | None, profile: str | None,
                       details: Iterable[str | None]) -> builtins.list[str]:
        """Add the pairs a Telnyx 40300 refusal of a message shows; returns the recipients added.

        One recipient is the one refused. For a group MMS, Telnyx names the blocked recipients in the error
        detail; recipients it does not name are not blocked on a guess.
        """
        if not profile and not sender:
            return []
        if len(recipients) == 1:
            refused = list(recipients)
        else:
            named = {n for d in details for n in _NUMBER_IN_TEXT.findall(d or "")}
            refused = [r for r in recipients if r in named]
        for recipient in refused:
            self.add(recipient, profile=profile, number=sender, source=TELNYX_40300)
        return refused

    @staticmethod
    def _opted_in_since(conn: Connection, row: Mapping[str, Any]) -> bool:
        starts = conn.execute(
            sa.select(inbound_messages.c.messaging_profile_id, inbound_messages.c.to_number)
            .where(inbound_messages.c.from_number == row["recipient"],
                   inbound_messages.c.keyword.in_(sorted(OPT_IN)),
                   inbound_messages.c.received_at > row["created_at"])).all()
        return any(_covered_by_opt_in(row, profile, number) for profile, number in starts)

    @staticmethod
    def _delete(conn: Connection, rows: Iterable[NamedRow], at: datetime) -> int:
        deleted = 0
        for row in rows:
            deleted += conn.execute(suppressions.delete().where(
                suppressions.c.recipient == row["recipient"], suppressions.c.scope == row["scope"],
                suppressions.c.created_at <= at)).rowcount
        return deleted
