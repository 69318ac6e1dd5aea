"""Logging for sendq processes: one line per event on stderr, readable text or JSON (``SENDQ_LOG_FORMAT=json``).

A multi-line event (a traceback) stays one line: text escapes its newlines, JSON carries them in a string. Every
line passes through :class:`Redactor` last, so the Telnyx API key, a bearer token or a password inside a URL
never reaches the output, and a phone number only masked (``+1312*****02``), whoever logged it (sendq, httpx,
dramatiq, uvicorn) and however (a message, an argument, an exception). Uncaught exceptions and warnings are
logged too, so they follow the same rules. sendq's own log calls name messages by id and never log a message's
text or a webhook's body; the masking is the net under everyone else's.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

REDACTED = "[REDACTED]"
#: Secrets whose shape is known even when their value is not: bearer tokens and passwords inside URLs.
_PATTERNS = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED),
    (re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
)
#: An E.164-looking number: ``+`` (or its URL encoding ``%2B``) and 8 to 15 ASCII digits, wherever it stands
#: (a message, a JSON body, a repr, a query string). A longer run of digits is not a phone number.
_NUMBER = re.compile(r"(\+|%2[Bb])([0-9]{8,15})(?![0-9])")
#: A masked number keeps up to this many leading digits (country and area code) and the last two.
NUMBER_PREFIX_DIGITS, NUMBER_SUFFIX_DIGITS = 4, 2
#: Values shorter than this are not treated as secrets: redacting "a" everywhere would destroy every line.
MIN_SECRET_LENGTH = 6
TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def _mask(match: re.Match[str]) -> str:
    sign, digits = match.group(1), match.group(2)
    # At least 4 digits hidden: an 8-digit number keeps 2 + 2, an 11-digit NANP number 4 + 2.
    kept = max(1, min(NUMBER_PREFIX_DIGITS, len(digits) - NUMBER_SUFFIX_DIGITS - 4))
    hidden = len(digits) - kept - NUMBER_SUFFIX_DIGITS
    return f"{sign}{digits[:kept]}{'*' * hidden}{digits[-NUMBER_SUFFIX_DIGITS:]}"


def mask_numbers(text: str) -> str:
    """``text`` with every E.164-looking number masked: ``+13125550002`` becomes ``+1312*****02``."""
    if "+" not in text and "%2" not in text:  # most lines: no regex pass at all
        return text
    return _NUMBER.sub(_mask, text)


class Redactor:
    """Replaces known secret values, bearer tokens and URL passwords in a string, and masks phone numbers
    (``numbers=False`` keeps them: the CLI's error line echoes the operator's own input)."""

    def __init__(self, secrets: Iterable[str | None] = (), *, numbers: bool = True) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self.numbers = numbers

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return mask_numbers(text) if self.numbers else text


class TextFormatter(logging.Formatter):
    """``time LEVEL process logger: message``, a traceback appended on the same line (newlines escaped)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__(TEXT_FORMAT)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor(super().format(record)).replace("\r", "").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``process``, ``message``, and
    ``exception`` when there is one."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": self.redactor(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = self.redactor(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = self.redactor(record.exc_text)
        return json.dumps(entry, ensure_ascii=False, default=str)


#: dramatiq's actor logs every job's arguments at DEBUG, on the actor's own logger (``worker.actors.<name>``):
#: for ``apply_events`` whole webhooks, with message texts and numbers. The line is kept, the arguments not.
DRAMATIQ_RECEIVED = "Received args=%r kwargs=%r."
RECEIVED_WITHOUT_ARGUMENTS = "Received a job (its arguments are not logged: they may hold message texts)"


class JobArgumentsFilter(logging.Filter):
    """Drops the arguments from dramatiq's "Received args=..." line, whichever actor's logger wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == DRAMATIQ_RECEIVED:
            record.msg, record.args = RECEIVED_WITHOUT_ARGUMENTS, ()
        return True


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record comes (tests and wrappers swap it; a stream kept from
    an earlier moment may be closed by then)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def secrets_of(settings: Any) -> list[str]:
    """The secret values in ``settings`` that must never be written out: today the Telnyx API key."""
    key = settings.api_key() if settings is not None else None
    return [key] if key else []


def configure_logging(level: str = "INFO", *, json_format: bool = False, secrets: Iterable[str | None] = ()) -> None:
    """Send every log record of this process to stderr, one line each, redacted. Called again (the CLI, then a
    worker process), it replaces its own handler rather than adding a second one."""
    redactor = Redactor(secrets)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter(redactor) if json_format else TextFormatter(redactor))
    handler.addFilter(JobArgumentsFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # dramatiq logs every retry at INFO and the Redis client is chatty at DEBUG.
    logging.getLogger("dramatiq").setLevel(max(logging.WARNING, root.level))
    # httpx logs every request line at INFO: one per send is noise, not an event.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("sendq").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    logging.getLogger("sendq").error("uncaught exception in thread %s", getattr(args.thread, "name", "?"),
                                     exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
