"""Log lines: one per event, JSON when asked, never a secret, phone numbers masked and no message text (the full run
in test_metrics.py scans a real one)."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from worker.logs import (
    REDACTED,
    JsonFormatter,
    Redactor,
    TextFormatter,
    configure_logging,
    mask_numbers,
    secrets_of,
)
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


# -- personal data: numbers masked, texts never logged ------------------------------------------------------------

NUMBER = "+13125550002"


def test_every_e164_looking_number_is_masked_keeping_its_prefix_and_last_two_digits() -> None:
    redact = Redactor()
    assert redact(f"send to {NUMBER}") == "send to +1312*****02"
    assert redact("+447700900123 and +12345678") == "+4477******23 and +12****78"  # 4+ digits always hidden
    assert redact("+123456789012345") == "+1234*********45"
    # inside JSON, a repr, a URL query (httpx, Telnyx's list filters)
    assert redact(json.dumps({"to": NUMBER, "from": "+13125550001"})) == \
        '{"to": "+1312*****02", "from": "+1312*****01"}'
    assert redact(repr({"to": [NUMBER]})) == "{'to': ['+1312*****02']}"
    assert redact("GET /v2/messaging_optouts?filter[from]=%2B13125550002") == \
        "GET /v2/messaging_optouts?filter[from]=%2B1312*****02"
    assert redact(f"Bearer abcdef {NUMBER}") == f"Bearer {REDACTED} +1312*****02"


def test_what_is_not_a_phone_number_is_left_alone() -> None:
    redact = Redactor()
    for text in ("2026-12-01T06:18:22.772+00:00", "+1234567 is 7 digits", "+1234567890123456 is 16 digits",
                 "message 5f0c2d1e-4b5a-4c3d-9e8f-0123456789ab, attempt 3, code 40310", "1.5e+10",
                 "+1312*****02"):
        assert redact(text) == text


def test_lines_without_a_plus_skip_the_number_pass() -> None:
    line = "2026-12-01 06:18:22,772 INFO MainProcess worker.sending: message m-1 submitted in 12.3 ms"
    assert mask_numbers(line) is line


def test_log_lines_mask_numbers_in_messages_arguments_and_exceptions(
        restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        raise ValueError(f"Telnyx: invalid 'to' {NUMBER}")
    except ValueError as exc:
        error = exc
    for json_format in (True, False):
        configure_logging("INFO", json_format=json_format)
        logging.getLogger("httpx").warning("POST %s", {"to": NUMBER, "from": "+13125550001"})
        logging.getLogger("sendq.test").error("send m-1 failed", exc_info=error)
        err = capsys.readouterr().err
        assert NUMBER not in err and "+13125550001" not in err
        assert err.count("+1312*****02") == 2 and "+1312*****01" in err


def test_cli_error_lines_keep_the_number_the_operator_typed() -> None:
    assert Redactor([KEY], numbers=False)(f"to: {NUMBER} is not possible, key {KEY}") == \
        f"to: {NUMBER} is not possible, key {REDACTED}"


#: Names whose values are personal data: a log call's arguments may not mention them (ids, counts, codes and
#: senders are fine; the formatter masks whatever number still gets through).
PERSONAL = {"text", "body", "content", "raw", "payload_text", "media_urls", "whatsapp_message", "to", "recipient",
            "recipients", "template", "variables"}
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


def test_sendq_log_calls_never_pass_a_text_a_body_or_a_recipient() -> None:
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in sorted([*root.joinpath("worker").rglob("*.py"), *root.joinpath("producers").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("log", "logger")):
                continue
            for arg in [*node.args[1:], *(k.value for k in node.keywords if k.arg != "exc_info")]:
                mentioned = {n.id for n in ast.walk(arg) if isinstance(n, ast.Name)} | \
                    {n.attr for n in ast.walk(arg) if isinstance(n, ast.Attribute)} | \
                    {n.value for n in ast.walk(arg) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
                if mentioned & PERSONAL:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} {sorted(mentioned & PERSONAL)}")
    assert not offenders, offenders


def test_dramatiqs_received_line_keeps_no_job_arguments(restore_logging: None,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    events = [{"data": {"payload": {"text": "Your code is 123456", "to": [{"phone_number": NUMBER}]}}}]
    actor = dramatiq.actor(lambda batch: len(batch), broker=StubBroker(), actor_name="apply_events_test")
    configure_logging("DEBUG", json_format=True)
    assert actor(events) == 1  # dramatiq's Actor.__call__, as a worker thread runs it
    err = capsys.readouterr().err
    assert "Received a job" in err and "Completed after" in err
    assert "123456" not in err and "3125550002" not in err
