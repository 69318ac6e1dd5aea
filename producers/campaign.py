"""Creating a campaign: validate its options once, then stream its recipients into the store in batches.

Every check that can refuse the whole campaign runs before anything connects or is stored: the options, the
file (readable, UTF-8, well-formed CSV: :func:`check_csv_file`) and its header (the phone column and every
template variable: :func:`csv_rows`). A bad row is a row error, never a partial campaign.

Rows are read one at a time from any iterable (a CSV reader, a generator over a database cursor), checked and
rendered, and written ``BATCH`` at a time, so memory stays flat whatever the size. The expander is enqueued
after the first batch: workers start sending while the rest is still being read.
"""

from __future__ import annotations

import codecs
import csv
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from producers.validation import CONTROL, SendRequest, check_control, resolve_kind, validate
from worker import sms
from worker.campaigns.rows import RowError, Template, check_row
from worker.campaigns.store import Campaigns
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
        check_control("template", self.template)
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
        checked = check_cells(columns, phone_column, line) or \
            check_row(template, columns, phone_column=phone_column, has_media=has_media, line=line)
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


def check_cells(columns: Mapping[str, Any], phone_column: str, line: int) -> RowError | None:
    """What is wrong with a row's cells before any is used, or None.

    A control character (a NUL, an escape) is never meant to reach a handset: any in the phone cell, and any but
    tab, newline and carriage return in the others, refuses the row. The phone cell must be the number exactly
    in E.164 form; spaces around it are tolerated (``phone, name`` CSV style), nothing else is (see
    :func:`worker.sms.e164`).
    """
    for name, value in columns.items():
        if not isinstance(name, str) or not isinstance(value, str):
            continue  # restkey lists (more cells than the header) and non-text values of the Python API
        found = CONTROL.search(value) or (name == phone_column and next(
            (c for c in value if c in "\t\n\r"), None))
        if found:
            char = found if isinstance(found, str) else found.group()
            return RowError(line, _shown(columns.get(phone_column)), name,
                            f"contains the control character {char!r}")
    phone = columns.get(phone_column)
    if isinstance(phone, str) and sms.e164(phone.strip(" ")) is None:
        return RowError(line, _shown(phone), phone_column,
                        f"not a phone number in E.164 form like +13125550123 ({phone!r})")
    return None


def _shown(value: Any) -> str:
    """A cell as the errors file shows it: repr-escaped when it holds anything but printable text."""
    text = "" if value is None else str(value)
    return text if text.isprintable() else repr(text)[1:-1]


def numbered(rows: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Rows of any iterable, numbered from 1 (their "line" in error reports)."""
    return enumerate(rows, start=1)


def check_csv_file(path: Path) -> None:
    """Refuse a file that cannot be read whole as UTF-8 CSV, naming it, before anything is stored.

    Rows are streamed into a campaign that is already sending, so a decoding error at line 900,000 would leave
    a partial campaign behind; one pass over the file first (C-speed decoding and parsing) costs far less than
    storing it.
    """
    lines = _Lines()
    try:
        with path.open("rb") as raw:
            for _ in csv.reader(lines.of(raw)):
                pass
    except UnicodeDecodeError as exc:
        raise ValidationError("--csv", f"{path} is not UTF-8 text ({exc.reason} near line {lines.at(exc)})") \
            from None
    except csv.Error as exc:
        raise ValidationError("--csv", f"{path} is not a well-formed CSV file ({exc})") from None
    except OSError as exc:
        raise ValidationError("--csv", f"cannot read {path}: {exc.strerror or exc}") from None


class _Lines:
    """A binary file decoded as UTF-8, line by line (newlines left to the CSV reader, as ``newline=""``), counting
    lines so a decoding error can say where it is."""

    CHUNK = 1 << 20

    def __init__(self) -> None:
        self.newlines = 0
        self._chunk = b""

    def of(self, raw: IO[bytes]) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        pending = ""
        while True:
            self._chunk = raw.read(self.CHUNK)
            text = pending + decoder.decode(self._chunk, final=not self._chunk)
            self.newlines += self._chunk.count(b"\n")
            pieces = text.splitlines(keepends=True)
            # The last piece may be half a line (or a CR whose LF is in the next chunk): it waits for the next.
            pending = pieces.pop() if self._chunk and pieces else ""
            yield from pieces
            if not self._chunk:
                if pending:
                    yield pending
                return

    def at(self, exc: UnicodeDecodeError) -> int:
        """The line of the undecodable byte: lines of earlier chunks, plus this chunk's up to the byte."""
        return self.newlines + self._chunk.count(b"\n", 0, max(exc.start, 0)) + 1


def csv_rows(handle: IO[str], phone_column: str | None,
             template: str | None = None) -> tuple[str, Iterator[tuple[int, Mapping[str, Any]]]]:
    """The phone column's name and the rows of a CSV file with a header, numbered by their line in the file.

    The header is read (and checked) here, before any row: a ``template`` naming a variable the header lacks
    would fail every row, so it is refused as a whole.
    """
    reader = csv.DictReader(handle)
    header = reader.fieldnames or []
    if template is not None:
        missing = [name for name in dict.fromkeys(Template(template).fields) if name not in header]
        if missing:
            raise ValidationError("template", f"{', '.join('{' + m + '}' for m in missing)} is not a column of the "
                                              f"file (header: {', '.join(header) or 'empty'})")
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

    def check(self) -> None:
        """Refuse an errors file that could not be written, before anything is stored."""
        folder = self.path.parent
        if self.path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ValidationError("--errors", f"cannot write {self.path}")

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

