"""Creating a campaign: validate its options once, then stream its recipients into the store in batches.

Rows are read one at a time from any iterable (a CSV reader, a generator over a database cursor), checked and
rendered, and written ``BATCH`` at a time, so memory stays flat whatever the size. The expander is enqueued
after the first batch: workers start sending while the rest is still being read.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from producers.validation import SendRequest, resolve_kind, validate
from worker.campaigns import Campaigns, RowError, Template, check_row
from worker.errors import ValidationError

BATCH = 5000
#: Column names taken for the phone number when none is given, in this order.
PHONE_COLUMNS = ("phone", "to", "number", "phone_number", "msisdn")
#: Campaign messages go one recipient each: a group MMS or a WhatsApp template per row is not a campaign.
NOT_FOR_CAMPAIGNS = ("group_mms", "whatsapp")
#: A stand-in recipient to validate the options with before any row is read.
_PLACEHOLDER = "+13125550100"


@dataclass
class CampaignOptions:
    """What a campaign sends, as given by the caller; :meth:`check` validates it against the send rules."""

    template: str
    senders: Sequence[str] = ()
    profile: str | None = None
    media_urls: Sequence[str] = ()
    send_at: datetime | str | None = None
    name: str | None = None
    valid_for: int | None = None
    rate_cap: float | None = None
    kind: str = "auto"
    phone_column: str | None = None
    checked: dict[str, Any] = field(default_factory=dict)

    def check(self, webhook_url: str | None) -> dict[str, Any]:
        """The campaign's kind, endpoint and base body; raises ValidationError naming the field."""
        self.template = Template(self.template).text
        senders = [self.senders] if isinstance(self.senders, str) else list(self.senders)
        if len(set(senders)) != len(senders):
            raise ValidationError("from", "the same sender is listed twice")
        if self.name is not None and (not isinstance(self.name, str) or len(self.name) > 200):
            raise ValidationError("name", "at most 200 characters")
        if self.rate_cap is not None and (isinstance(self.rate_cap, bool) or not isinstance(self.rate_cap, int | float)
                                          or not 0 < self.rate_cap <= 100_000):
            raise ValidationError("rate_cap", f"messages per second above 0 (got {self.rate_cap!r})")
        sample = validate(SendRequest(to=_PLACEHOLDER, text=self.template, media_urls=self.media_urls,
                                      from_=senders[0] if senders else None, profile=self.profile, kind=self.kind,
                                      priority="bulk", send_at=self.send_at, valid_for=self.valid_for),
                          webhook_url=webhook_url)
        if sample.kind in NOT_FOR_CAMPAIGNS:
            raise ValidationError("kind", f"{sample.kind} messages cannot be sent as a campaign")
        for sender in senders[1:]:
            if resolve_kind(self.kind, sender, self.profile) != sample.kind:
                raise ValidationError("from", f"every sender must be of one kind ({sender!r} is not {sample.kind})")
        body = {k: v for k, v in sample.body.items() if k not in ("to", "from", "text")}
        self.checked = {"kind": sample.kind, "endpoint": sample.endpoint, "body": body, "senders": senders,
                        "messaging_profile_id": self.profile, "template": self.template, "send_at": sample.send_at,
                        "valid_for_s": self.valid_for, "rate_cap": self.rate_cap, "name": self.name}
        return self.checked


@dataclass
class IngestResult:
    id: str
    status: str
    rows_read: int = 0
    rows_invalid: int = 0
    duplicates: int = 0
    recipients: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def ingest(book: Campaigns, campaign: Mapping[str, Any], rows: Iterable[tuple[int, Mapping[str, Any]]], *,
           phone_column: str, on_error: Callable[[RowError], None], start: Callable[[], None]) -> IngestResult:
    """Store the good rows of ``rows`` (``(line, columns)``) for ``campaign``; ``start`` runs after the first
    batch is stored (or at the end, for a campaign with fewer rows)."""
    template = Template(campaign["template"])
    senders, has_media = campaign["senders"], bool(campaign["body"].get("media_urls"))
    result = IngestResult(campaign["id"], campaign["status"])
    batch: list[dict[str, Any]] = []
    read = invalid = 0
    started = False

    def flush() -> None:
        nonlocal read, invalid, started
        result.recipients += book.add_recipients(campaign["id"], batch, read=read, invalid=invalid)
        batch.clear()
        read = invalid = 0
        if not started:
            started = True
            start()

    for line, columns in rows:
        read += 1
        result.rows_read += 1
        checked = check_row(template, columns, phone_column=phone_column, has_media=has_media, line=line)
        if isinstance(checked, RowError):
            invalid += 1
            result.rows_invalid += 1
            on_error(checked)
            continue
        phone, text = checked
        sender = senders[(result.rows_read - result.rows_invalid) % len(senders)] if senders else None
        batch.append({"seq": line, "phone": phone, "sender": sender, "text": text})
        if len(batch) >= BATCH:
            flush()
    if batch or read or not started:
        flush()
    # Only now may the campaign complete: the expander compares what it expanded with the final count.
    book.finish_ingest(campaign["id"])
    result.duplicates = result.rows_read - result.rows_invalid - result.recipients
    return result


def numbered(rows: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Rows of any iterable, numbered from 1 (their "line" in error reports)."""
    return enumerate(rows, start=1)


def csv_rows(handle: IO[str], phone_column: str | None) -> tuple[str, Iterator[tuple[int, Mapping[str, Any]]]]:
    """The phone column's name and the rows of a CSV file with a header, numbered by their line in the file."""
    reader = csv.DictReader(handle)
    header = reader.fieldnames or []
    if phone_column is None:
        phone_column = next((c for c in PHONE_COLUMNS if c in header), None)
        if phone_column is None:
            raise ValidationError("csv", f"no phone column: name one with --phone-column, or call it one of "
                                         f"{', '.join(PHONE_COLUMNS)} (header: {', '.join(header) or 'empty'})")
    elif phone_column not in header:
        raise ValidationError("phone_column", f"{phone_column!r} is not a column of the file")

    def lines() -> Iterator[tuple[int, Mapping[str, Any]]]:
        for row in reader:
            yield reader.line_num, row

    return phone_column, lines()


class ErrorsFile:
    """Row errors written as CSV (``line,phone,field,error``), the file created at the first error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._handle: IO[str] | None = None
        self._writer: Any = None

    def __call__(self, error: RowError) -> None:
        if self._writer is None:
            self._handle = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._handle)
            self._writer.writerow(["line", "phone", "field", "error"])
        self._writer.writerow([error.line, error.phone, error.field, error.error])
        self.count += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

