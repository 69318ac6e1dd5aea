"""Campaigns end to end: streamed ingestion, row errors, dedupe, expansion at the senders' pace, progress,
pause/resume with nothing skipped or doubled, cancel, and fairness between campaigns on one sender."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from producers.campaign import CampaignOptions
from worker import statuses
from worker.campaigns.rows import Template
from worker.campaigns.store import CANCELLED, COMPLETED, PAUSED, RUNNING, message_id
from worker.errors import ConflictError, ValidationError

SENDER = "+13125550001"
OTHER = "+13125550009"


def _wait(predicate, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _done(stack, campaign_id: str, timeout_s: float = 30.0) -> dict:
    return _wait(lambda: (lambda r: r if r["status"] in (COMPLETED, CANCELLED) else None)(
        stack.producer.campaign_status(campaign_id)), timeout_s, f"campaign {campaign_id} to finish")


def _limit(stack, mps: float) -> None:
    """Hold SENDER and OTHER to ``mps`` in the running worker (as ``sendq limits set`` would)."""
    settings = stack.settings.model_copy(update={
        "rate_limits": {**stack.settings.rate_limits, SENDER: mps, OTHER: mps}, "limiter_max_wait_s": 0.2})
    stack.services.settings = settings
    stack.services.limiter = type(stack.services.limiter).from_settings(stack.actors.broker.client, settings)
    stack.producer.settings = settings


def _texts_at_simulator(stack) -> Counter:
    return Counter((m.request["to"], m.request.get("text")) for m in stack.sim_messages())


def test_a_campaign_reports_bad_rows_drops_duplicates_and_delivers_the_rest(stack):
    rows = [
        {"phone": "+13125550101", "first_name": "Ada"},
        {"phone": "not-a-number", "first_name": "Bob"},      # row 2: bad number
        {"phone": "+13125550103"},                           # row 3: no first_name
        {"phone": "+13125550101", "first_name": "Ada again"},  # row 4: duplicate of row 1
        {"phone": "+13125550105", "first_name": "Eve"},
        {"phone": "+13125550106", "first_name": "x" * 1600},  # row 6: over 10 parts
    ]
    errors = []
    created = stack.producer.campaign(rows, template="Hi {first_name}, your order shipped", from_=SENDER,
                                      on_error=errors.append, name="shipping")

    assert created["rows_read"] == 6 and created["rows_invalid"] == 3
    assert created["duplicates"] == 1 and created["recipients"] == 2
    assert [(e.line, e.field) for e in errors] == [(2, "phone"), (3, "template"), (6, "template")]
    assert "first_name" in errors[1].error and "parts" in errors[2].error
    record = _done(stack, created["id"])
    assert record["status"] == COMPLETED
    assert record["messages"] == {statuses.DELIVERED: 2} and record["final"] == 2 and record["not_created"] == 0
    assert _texts_at_simulator(stack) == Counter({("+13125550101", "Hi Ada, your order shipped"): 1,
                                                  ("+13125550105", "Hi Eve, your order shipped"): 1})
    first = stack.producer.status(message_id(created["id"], 1))
    assert first["status"] == statuses.DELIVERED and first["priority"] == "bulk"


def test_senders_are_used_in_turn(stack):
    rows = [{"phone": f"+1312555{2000 + i}"} for i in range(6)]
    created = stack.producer.campaign(rows, template="Hello", from_=[SENDER, OTHER])
    _done(stack, created["id"])
    senders = Counter(m.request["from"] for m in stack.sim_messages())
    assert senders == Counter({SENDER: 3, OTHER: 3})


@pytest.mark.parametrize(("options", "field"), [
    ({"template": "Hi {first.name}"}, "template"),
    ({"template": "Hi {0}"}, "template"),
    ({"template": "Hi {name!r}"}, "template"),
    ({"template": "   "}, "template"),
    ({"template": "unclosed {brace"}, "template"),
    ({"template": "Hi", "from_": "+1-bad"}, "from"),
    ({"template": "Hi", "from_": [SENDER, SENDER]}, "from"),
    ({"template": "Hi", "from_": [SENDER, "12345"]}, "from"),
    ({"template": "Hi", "rate_cap": 0}, "rate_cap"),
    ({"template": "Hi", "valid_for": -1}, "valid_for"),
    ({"template": "Hi", "send_at": "tomorrow"}, "send_at"),
    ({"template": "Hi", "kind": "group_mms"}, "kind"),
])
def test_bad_campaign_options_name_the_field_and_store_nothing(stack, options, field):
    options = {"from_": SENDER, **options}
    with pytest.raises(ValidationError) as raised:
        stack.producer.campaign([{"phone": "+13125550101"}], **options)
    assert raised.value.field == field
    with stack.producer.store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM campaigns").scalar() == 0


def test_template_fields_are_plain_names():
    assert Template("Hi {first_name}, {{literal}}").render({"first_name": "Ada"}) == "Hi Ada, {literal}"
    with pytest.raises(KeyError):
        Template("Hi {first_name}").render({"first_name": ""})


def _ingest_peak(stack, count: int) -> int:
    """Peak bytes allocated while ``count`` generated rows are ingested (nothing sends: the campaign waits)."""
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

    def rows() -> Iterator[dict]:
        for i in range(count):
            # A possible NANP number (+1 and 10 digits), distinct per run: 415, count in ten thousands, row.
            yield {"phone": f"+1415{count // 10_000}{i:06d}", "code": str(i)}

    tracemalloc.start()
    try:
        created = stack.producer.create_campaign(
            CampaignOptions(template="Code {code}", senders=[SENDER], send_at=later),
            enumerate(rows(), start=1), phone_column="phone")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert created["recipients"] == count
    return peak


def test_recipients_are_streamed_not_held_in_memory(stack):
    """Three times the rows, about the same peak: memory is bounded by the batch, not by the list."""
    small, large = _ingest_peak(stack, 10_000), _ingest_peak(stack, 30_000)
    assert large < small * 1.5 + 1_000_000, f"10,000 rows peak {small / 1e6:.1f} MB, 30,000 rows {large / 1e6:.1f} MB"


def test_pause_stops_sends_and_resume_continues_with_nothing_skipped_or_twice(stack):
    _limit(stack, 10.0)
    n = 40
    created = stack.producer.campaign([{"phone": f"+1312555{3000 + i}"} for i in range(n)], template="Hi",
                                      from_=SENDER)
    _wait(lambda: len(stack.sim_messages()) >= 5, what="the first sends")

    paused = stack.producer.pause_campaign(created["id"])
    assert paused["status"] == PAUSED
    # A send claimed before the pause finishes; after that, nothing more is handed to Telnyx.
    _wait(lambda: stack.producer.campaign_status(created["id"])["messages"].get(statuses.SENDING, 0) == 0,
          what="claimed sends to finish")
    sent_at_pause = len(stack.sim_messages())
    time.sleep(1.5)  # 15 slots at the sender's rate
    assert len(stack.sim_messages()) == sent_at_pause < n
    with pytest.raises(ConflictError):
        stack.producer.pause_campaign(created["id"])

    resumed = stack.producer.resume_campaign(created["id"])
    assert resumed["status"] == RUNNING
    record = _done(stack, created["id"])
    assert record["messages"] == {statuses.DELIVERED: n}
    sent = _texts_at_simulator(stack)
    assert len(sent) == n and set(sent.values()) == {1}
    keys = [m.idempotency_key for m in stack.sim_messages()]
    assert sorted(keys) == sorted(message_id(created["id"], seq) for seq in range(1, n + 1))


def test_cancel_finalizes_everything_not_yet_sent(stack):
    _limit(stack, 5.0)
    n = 200
    created = stack.producer.campaign([{"phone": f"+1312556{i:04d}"} for i in range(n)], template="Hi",
                                      from_=SENDER)
    _wait(lambda: len(stack.sim_messages()) >= 3, what="the first sends")

    record = stack.producer.cancel_campaign(created["id"])
    assert record["status"] == CANCELLED
    time.sleep(0.5)
    record = _wait(lambda: (lambda r: r if r["messages"].get(statuses.SENDING, 0) == 0 and
                            r["messages"].get(statuses.SUBMITTED, 0) + r["messages"].get(statuses.SENT, 0) == 0
                            else None)(stack.producer.campaign_status(created["id"])), what="sends to settle")
    delivered = record["messages"].get(statuses.DELIVERED, 0)
    assert delivered == len(stack.sim_messages()) < n
    assert record["messages"][statuses.CANCELLED] == n - delivered
    assert record["final"] == n and record["not_created"] == 0
    with pytest.raises(ConflictError):
        stack.producer.resume_campaign(created["id"])


def test_two_campaigns_on_one_sender_share_it_fairly(stack):
    _limit(stack, 10.0)
    n = 60
    first = stack.producer.campaign([{"phone": f"+1312557{i:04d}"} for i in range(n)], template="A", from_=SENDER)
    second = stack.producer.campaign([{"phone": f"+1312558{i:04d}"} for i in range(n)], template="B", from_=SENDER)
    _wait(lambda: len(stack.sim_messages()) >= n, timeout_s=30, what="half of the sends")

    order = [m.request["text"] for m in stack.sim_messages()][:n]  # in the order the simulator accepted them
    shares = Counter(order)
    # The second campaign started a moment later; over the first half of all sends each got a fair part.
    assert min(shares["A"], shares["B"]) >= n * 0.3, shares
    for campaign in (first, second):
        assert _done(stack, campaign["id"], timeout_s=40)["messages"] == {statuses.DELIVERED: n}


def test_a_scheduled_campaign_waits_for_its_time(stack, scheduler):
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    created = stack.producer.campaign([{"phone": "+13125550150"}], template="Later", from_=SENDER,
                                      send_at=send_at.isoformat())
    assert stack.producer.campaign_status(created["id"])["status"] == "scheduled"
    record = _done(stack, created["id"], timeout_s=20)
    assert record["messages"] == {statuses.DELIVERED: 1}
    history = stack.producer.status(message_id(created["id"], 1))["history"]
    assert datetime.fromisoformat(history[0]["at"]) >= send_at  # the message was created when the time came


def _cli_env(stack) -> dict[str, str]:
    settings = stack.settings
    return {**os.environ, "REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
            "SENDQ_NAMESPACE": settings.namespace, "TELNYX_API_KEY": "KEY-cli-test",
            "TELNYX_BASE_URL": settings.telnyx_base_url, "SENDQ_WEBHOOK_URL": settings.webhook_url,
            "SENDQ_RATE_LIMITS": json.dumps(settings.rate_limits),
            "SENDQ_ACCOUNT_MPS": json.dumps(settings.account_mps)}


def _sendq(*args: str, env: dict[str, str]):
    return subprocess.run([sys.executable, "-m", "producers.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_campaign_commands(stack, tmp_path):
    env = _cli_env(stack)
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("name,phone\nAda,+13125550201\nBob,12\n\"Multi\nline\",+13125550203\nAda,+13125550201\n")

    done = _sendq("campaign", "create", "--csv", str(csv_file), "--from", SENDER, "--template", "Hi {name}",
                  "--name", "cli", "--json", env=env)
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert (created["rows_read"], created["rows_invalid"], created["duplicates"], created["recipients"]) == (4, 1, 1, 2)
    errors = (tmp_path / "list.csv.errors.csv").read_text().splitlines()
    assert errors[0] == "line,phone,field,error" and errors[1].startswith("3,12,phone,")
    _done(stack, created["id"])

    status = _sendq("campaign", "status", created["id"], "--json", env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["messages"] == {statuses.DELIVERED: 2}
    assert "completed" in _sendq("campaign", "status", created["id"], "--watch", env=env).stdout
    again = _sendq("campaign", "pause", created["id"], env=env)
    assert again.returncode == 1 and "completed" in again.stderr


@pytest.mark.parametrize(("args", "field"), [
    (["--csv", "missing.csv", "--from", SENDER, "--template", "Hi"], "csv"),
    (["--csv", "{csv}", "--from", SENDER, "--template", "Hi {a.b}"], "template"),
    (["--csv", "{csv}", "--template", "Hi"], "from"),
    (["--csv", "{csv}", "--from", SENDER, "--template", "Hi", "--phone-column", "mobile"], "phone_column"),
    (["--csv", "{csv}", "--from", SENDER, "--template", "Hi", "--rate-cap", "-1"], "rate_cap"),
])
def test_bad_campaign_input_exits_2_naming_the_field(stack, tmp_path, args, field):
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("phone\n+13125550201\n")
    args = [a.replace("{csv}", str(csv_file)) for a in args]
    done = _sendq("campaign", "create", *args, env=_cli_env(stack))
    assert done.returncode == 2, done.stderr
    assert field in done.stderr
    unknown = _sendq("campaign", "status", "no-such-campaign", env=_cli_env(stack))
    assert unknown.returncode == 1


def test_suppressed_recipients_end_suppressed_without_a_call_to_telnyx(stack):
    from worker.suppressions import Suppressions

    Suppressions.of(stack.producer.store).add("+13125550402", number=SENDER, source="manual")
    rows = [{"phone": "+13125550401"}, {"phone": "+13125550402"}, {"phone": "+13125550403"}]
    created = stack.producer.campaign(rows, template="Sale", from_=SENDER)

    record = _done(stack, created["id"])
    assert record["messages"] == {statuses.DELIVERED: 2, statuses.SUPPRESSED: 1}
    assert {m.request["to"] for m in stack.sim_messages()} == {"+13125550401", "+13125550403"}
    assert stack.producer.status(message_id(created["id"], 2))["errors"][0]["code"] == "sendq.suppressed"
