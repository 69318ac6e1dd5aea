"""The error classification table, one case per row, and sender holds on real Redis.

EXPECTED restates the table: changing a row without changing this file fails
``test_the_table_is_exactly_the_documented_one``, and every row has its own case below.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis

from worker import metrics
from worker.classify import ACCOUNT, SENDER, TABLE, Action, Rule, classify, find_rule, retryable_in_call
from worker.errors import ApiError, TelnyxError, TelnyxRefused, TelnyxUnavailable
from worker.holds import ACCOUNT_KEY, SenderHolds

A = Action
#: (status, code, action, hold scope) of every row, in table order.
EXPECTED = [
    (None, None, A.RETRY_NOW, SENDER),
    ("5xx", None, A.RETRY_NOW, SENDER),
    (408, None, A.RETRY_NOW, SENDER),
    (429, None, A.RETRY_NOW, SENDER),
    (429, "10011", A.RETRY_NOW, SENDER),
    ("4xx", "10007", A.RETRY_LATER, SENDER),
    (429, "40318", A.RETRY_LATER, SENDER),
    ("4xx", "40005", A.RETRY_LATER, SENDER),
    ("4xx", "40006", A.RETRY_LATER, SENDER),
    ("4xx", "40008", A.RETRY_LATER, SENDER),
    ("4xx", "40011", A.RETRY_LATER, SENDER),
    ("4xx", "40014", A.RETRY_LATER, SENDER),
    (409, "10036", A.RETRY_LATER, SENDER),
    (422, "10037", A.REJECT, SENDER),
    (409, "40300", A.SUPPRESS, SENDER),
    ("4xx", "40300", A.SUPPRESS, SENDER),
    (401, None, A.HOLD_SENDER, ACCOUNT),
    ("4xx", "10009", A.HOLD_SENDER, ACCOUNT),
    (403, "10010", A.HOLD_SENDER, ACCOUNT),
    ("4xx", "20012", A.HOLD_SENDER, ACCOUNT),
    ("4xx", "20013", A.HOLD_SENDER, ACCOUNT),
    ("4xx", "20100", A.HOLD_SENDER, ACCOUNT),
    ("4xx", "40314", A.HOLD_SENDER, ACCOUNT),
    ("4xx", "40010", A.HOLD_SENDER, SENDER),
    ("4xx", "40312", A.HOLD_SENDER, SENDER),
    ("4xx", "40315", A.HOLD_SENDER, SENDER),
    ("4xx", "40320", A.HOLD_SENDER, SENDER),
    ("4xx", "40321", A.HOLD_SENDER, SENDER),
    ("4xx", "40329", A.HOLD_SENDER, SENDER),
    ("4xx", "40330", A.HOLD_SENDER, SENDER),
    ("4xx", "40333", A.HOLD_SENDER, SENDER),
    ("4xx", "40016", A.HOLD_SENDER, SENDER),
    ("4xx", "40018", A.HOLD_SENDER, SENDER),
    ("4xx", "40020", A.HOLD_SENDER, SENDER),
    ("4xx", "40002", A.REJECT, SENDER),
    ("4xx", "40017", A.REJECT, SENDER),
    (409, None, A.REJECT, SENDER),
    ("4xx", None, A.REJECT, SENDER),
]
#: A status of each class that no exact-status row names, and codes that no row names.
CLASS_STATUS = {"4xx": 400, "5xx": 503}
UNLISTED_CODE = "99999"


def error_for(status: int | str | None, code: str | None, **extra) -> TelnyxError:
    """The error Telnyx (or the transport) would produce for a row: built as worker.telnyx builds them."""
    if status is None:
        return TelnyxUnavailable("Telnyx call failed mid-flight", ambiguous=True)
    number = CLASS_STATUS[status] if isinstance(status, str) else status
    errors = [ApiError(code=code or UNLISTED_CODE, title="t")]
    if number == 429 or number >= 500:
        return TelnyxUnavailable("unavailable", status=number, errors=errors, **extra)
    return TelnyxRefused("refused", status=number, errors=errors)


def _row_id(row: tuple) -> str:
    return f"{row[0]}-{row[1] or 'any'}"


def test_the_table_is_exactly_the_documented_one():
    assert [(r.status, r.code, r.action, r.scope) for r in TABLE] == EXPECTED


def test_the_readme_shows_the_same_table():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Failure handling", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:4] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    shown = [(status.strip(), code.strip(), action.strip().strip("`")) for status, code, action in rows[1:]]
    words = {A.RETRY_NOW: "retry now", A.RETRY_LATER: "retry later", A.REJECT: "rejected", A.SUPPRESS: "suppressed",
             A.HOLD_SENDER: "hold sender"}
    assert shown == [("no answer" if r.status is None else str(r.status), r.code or "any", words[r.action])
                     for r in TABLE]


@pytest.mark.parametrize("rule", TABLE, ids=[_row_id((r.status, r.code)) for r in TABLE])
def test_every_row_of_the_table_has_a_reason_and_holds_have_a_time(rule: Rule):
    assert rule.reason
    assert (rule.wait_s is not None and rule.wait_s > 0) is (rule.action is A.HOLD_SENDER)
    assert rule.scope == SENDER or rule.action is A.HOLD_SENDER


@pytest.mark.parametrize(("status", "code", "action", "scope"), EXPECTED, ids=[_row_id(r) for r in EXPECTED])
def test_each_row_decides_its_errors(status, code, action, scope):
    decision = classify(error_for(status, code))

    assert (decision.rule.status, decision.rule.code) == (status, code)
    assert decision.action is action
    assert decision.scope == scope
    assert decision.reason == decision.rule.reason
    if action is A.HOLD_SENDER:
        assert decision.hold_s == decision.rule.wait_s
    else:
        assert decision.hold_s is None


def test_code_beats_status_and_status_beats_class():
    assert find_rule(401, ["10009"]).code == "10009"           # class + code over exact status alone
    assert find_rule(409, ["40300"]).status == 409             # exact status + code over class + code
    assert find_rule(409, [UNLISTED_CODE]).status == 409       # exact status over class
    assert find_rule(418, [UNLISTED_CODE]) == TABLE[-1]        # any other 4xx


def test_with_several_codes_the_most_specific_row_wins_then_the_first_listed():
    assert find_rule(400, [UNLISTED_CODE, "40300"]).action is A.SUPPRESS
    assert find_rule(400, ["40002", "40005"]).code == "40002"
    assert find_rule(400, ["40005", "40002"]).code == "40005"


def test_an_unreadable_success_answer_counts_as_no_answer():
    decision = classify(TelnyxUnavailable("not JSON", status=200, ambiguous=True))
    assert decision.rule is TABLE[0]


def test_409_is_never_retried_unlike_the_official_sdk():
    for code in ("40300", "10036", UNLISTED_CODE):
        assert not retryable_in_call(error_for(409, code))
        assert classify(error_for(409, code)).action is not A.RETRY_NOW


def test_retry_delays_and_hold_times_honour_telnyx_hints():
    queue_full = classify(error_for(429, "40318", retry_after_s=30.0))
    assert (queue_full.action, queue_full.delay_s) == (A.RETRY_LATER, 30.0)
    assert classify(error_for(429, "10011", retry_after_s=1.0)).delay_s == 1.0
    assert classify(error_for(503, None)).delay_s is None
    held = classify(TelnyxUnavailable("x", status=429, errors=[ApiError("40018", "t")], retry_after_s=600))
    assert held.hold_s == 600  # a longer hint than the row's minute
    assert classify(error_for("4xx", "40018")).hold_s == 60


@pytest.mark.parametrize(("error", "expected"), [
    (error_for(None, None), True),
    (error_for(503, None), True),
    (error_for(408, None), True),
    (error_for(429, "10011", retry_after_s=1.0), True),
    (error_for(429, "10011", retry_after_s=30.0), False),   # a long wait is the queue's business
    (error_for(429, "40318"), False),
    (error_for(409, "40300"), False),
    (error_for(401, None), False),
    (error_for(400, "40310"), False),
    (ValueError("not a Telnyx error"), False),
])
def test_retryable_in_call_follows_the_table(error, expected):
    assert retryable_in_call(error) is expected


# -- sender holds ---------------------------------------------------------------------------------------------

@pytest.fixture
def holds(redis_url: str, namespace: str):
    client = redis.Redis.from_url(redis_url)
    yield SenderHolds(client, namespace)
    client.close()


def test_a_hold_is_seen_listed_and_released(holds, caplog):
    before = metrics.SENDER_HOLDS.labels("40333")._value.get()
    with caplog.at_level(logging.WARNING, logger="worker.holds"):
        holds.hold("+13125550001", 60, "messaging profile spend limit reached: raise it", code="40333")

    left, reason = holds.held("+13125550001")
    assert 55 < left <= 60
    assert "spend limit" in reason
    assert holds.held("+13125550009") is None
    assert [h.sender for h in holds.list()] == ["+13125550001"]
    assert metrics.SENDER_HOLDS.labels("40333")._value.get() == before + 1
    assert "+13125550001" in caplog.text and "40333" in caplog.text and "raise it" in caplog.text
    assert holds.release("+13125550001") is True
    assert holds.held("+13125550001") is None
    assert holds.release("+13125550001") is False


def test_a_shorter_hold_never_cuts_a_longer_one_short(holds):
    holds.hold("+13125550001", 3600, "unhealthy sender", code="40315")
    holds.hold("+13125550001", 5, "pending state", code="40320")

    left, reason = holds.held("+13125550001")
    assert left > 3000 and reason == "unhealthy sender"


def test_an_account_hold_stops_every_sender_and_a_hold_lapses_by_itself(holds):
    assert holds.check("+13125550001") is None
    holds.hold(ACCOUNT_KEY, 0.3, "Telnyx refused the API key", code="10009")

    found = holds.check("+13125550001")
    assert found is not None and found.sender == ACCOUNT_KEY and found.code == "10009"
    assert holds.check(None) is not None
    time.sleep(0.4)
    assert holds.check("+13125550001") is None
