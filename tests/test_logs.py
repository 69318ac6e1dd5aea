"""Log lines: one per event, JSON when asked, and never a secret (the full run in test_metrics.py scans a real one)."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from worker.logs import REDACTED, JsonFormatter, Redactor, TextFormatter, configure_logging, secrets_of
from worker.settings import Settings

KEY = "KEY0123456789abcdefSECRET"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = sys.excepthook, threading.excepthook
    yield
    sys.excepthook, threading.excepthook = hooks
    logging.captureWarnings(False)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("sendq.test", logging.WARNING, __file__, 1, message, args, exc_info)


def failure() -> BaseException:
    try:
        raise RuntimeError(f"Telnyx refused Authorization: Bearer {KEY}\nsecond line")
    except RuntimeError as exc:
        return exc


def test_the_redactor_removes_the_key_bearer_tokens_and_url_passwords() -> None:
    redact = Redactor([KEY, None, "", "abc"])
    assert redact(f"key={KEY}!") == f"key={REDACTED}!"
    assert redact("Authorization: Bearer other-token.x") == f"Authorization: Bearer {REDACTED}"
    assert redact("postgresql://sendq:s3cret@db:5432/sendq") == f"postgresql://sendq:{REDACTED}@db:5432/sendq"
    assert redact("redis://:pw@redis:6379/0 and http://host:8080/path") == \
        f"redis://:{REDACTED}@redis:6379/0 and http://host:8080/path"
    assert redact("abc stays: too short to be a secret") == "abc stays: too short to be a secret"


def test_secrets_of_settings_is_the_api_key() -> None:
    assert secrets_of(Settings(telnyx_api_key=KEY)) == [KEY]
    assert secrets_of(Settings()) == []
    assert secrets_of(None) == []


def test_json_lines_are_one_object_per_event_with_the_exception_inside() -> None:
    line = JsonFormatter(Redactor([KEY])).format(record("send %s failed with %s", "m-1", KEY, exc=failure()))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "sendq.test"
    assert entry["message"] == f"send m-1 failed with {REDACTED}"
    assert "RuntimeError" in entry["exception"] and KEY not in line


def test_text_lines_keep_a_traceback_on_the_same_line() -> None:
    line = TextFormatter(Redactor([KEY])).format(record("send failed", exc=failure()))
    assert "\n" not in line and "\\n" in line
    assert "RuntimeError" in line and KEY not in line


def test_configure_logging_applies_to_every_logger(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_format=True, secrets=[KEY])
    logging.getLogger("httpx.some.library").warning("calling with key %s", KEY)
    logging.getLogger("worker.x").debug("below the level")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert json.loads(err[0])["message"] == f"calling with key {REDACTED}"
