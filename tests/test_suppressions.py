"""The suppression list on its own: keywords, the scope rule, STOP / START order, paging, and ``sendq optouts``.

End-to-end behaviour (inbound through the simulator, the send path, 40300, the opt-out sync) is in
test_inbound.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from worker import events
from worker.errors import ValidationError
from worker.inbound import Inbound
from worker.suppressions import (
    MANUAL,
    OPT_IN,
    OPT_OUT,
    STOP_KEYWORD,
    TELNYX_40300,
    Suppressions,
    check_pair,
    keyword,
)

PROFILE = "4001767e-ce0f-4cae-9d5f-0d5e636e7809"
OTHER_PROFILE = "7f6c1a52-3b1e-4c55-9d1e-6a3f2b9c0d11"
NUMBER, OTHER_NUMBER = "+13125550001", "+13125550100"
RECIPIENT = "+13125550002"
T0 = datetime(2026, 2, 15, 20, 0, tzinfo=UTC)


# -- keywords -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("word", sorted(OPT_OUT | OPT_IN))
def test_every_keyword_matches_in_any_case_with_surrounding_whitespace(word):
    for text in (word, word.upper(), word.title(), f"  {word}\n", f"\t{word.upper()}  "):
        assert keyword(text) == word


@pytest.mark.parametrize(("text", "expected"), [
    ("  STOP   ALL ", "stop all"),       # inner runs of whitespace count as one space
    ("Stop\tall", "stop all"),
    ("UnStop", "unstop"),
])
def test_inner_whitespace_is_one_space(text, expected):
    assert keyword(text) == expected


@pytest.mark.parametrize("text", [
    "stop it please", "please stop", "STOP.", "stopp", "start now", "STARTS", "end of story", "", None, "st op",
])
def test_only_the_whole_text_is_a_keyword(text):
    assert keyword(text) is None


def test_the_keyword_sets_are_telnyx_defaults():
    assert {"stop", "stopall", "stop all", "unsubscribe", "cancel", "end", "quit"} == OPT_OUT
    assert {"start", "unstop"} == OPT_IN


# -- the scope rule -----------------------------------------------------------------------------------------

def test_a_profile_block_covers_its_profile_and_the_number_it_was_learned_on(store):
    optouts = Suppressions.of(store)
    assert optouts.add(RECIPIENT, profile=PROFILE, number=NUMBER, source=STOP_KEYWORD, keyword="stop")

    assert optouts.suppressed([RECIPIENT], sender=NUMBER, profile=None) == [RECIPIENT]        # the same number
    assert optouts.suppressed([RECIPIENT], sender=OTHER_NUMBER, profile=PROFILE) == [RECIPIENT]  # the profile
    assert optouts.suppressed([RECIPIENT], sender=None, profile=PROFILE) == [RECIPIENT]       # a number pool
    assert optouts.suppressed([RECIPIENT], sender=OTHER_NUMBER, profile=None) == []           # left to Telnyx
    assert optouts.suppressed([RECIPIENT], sender=NUMBER, profile=OTHER_PROFILE) == [RECIPIENT]
    assert optouts.suppressed(["+13125550003"], sender=NUMBER, profile=PROFILE) == []


def test_a_number_block_covers_that_sender_only(store):
    optouts = Suppressions.of(store)
    optouts.add(RECIPIENT, number=NUMBER, source=MANUAL)

    assert optouts.suppressed([RECIPIENT], sender=NUMBER, profile=PROFILE) == [RECIPIENT]
    assert optouts.suppressed([RECIPIENT], sender=OTHER_NUMBER, profile=PROFILE) == []


def test_a_group_reports_only_its_blocked_recipients_in_order(store):
    optouts = Suppressions.of(store)
    optouts.add("+13125550004", number=NUMBER, source=MANUAL)
    optouts.add("+13125550003", number=NUMBER, source=MANUAL)

    group = ["+13125550002", "+13125550003", "+13125550004"]
    assert optouts.suppressed(group, sender=NUMBER, profile=None) == ["+13125550003", "+13125550004"]


def test_adding_twice_keeps_one_row_with_its_first_time(store):
    optouts = Suppressions.of(store)
    assert optouts.add(RECIPIENT, profile=PROFILE, number=NUMBER, source=STOP_KEYWORD, at=T0)
    assert not optouts.add(RECIPIENT, profile=PROFILE, number=OTHER_NUMBER, source=STOP_KEYWORD,
                           at=T0 + timedelta(hours=1))

    rows = list(optouts.iterate())
    assert [(r.scope, r.number, r.created_at) for r in rows] == [(PROFILE, NUMBER, T0)]


# -- START, and the order of STOP and START --------------------------------------------------------------------

def test_start_lifts_the_blocks_of_its_profile_and_number_not_others(store):
    optouts = Suppressions.of(store)
    optouts.add(RECIPIENT, profile=PROFILE, number=NUMBER, source=STOP_KEYWORD, at=T0)
    optouts.add(RECIPIENT, number=OTHER_NUMBER, source=MANUAL, at=T0)          # another scope, no profile
    optouts.add(RECIPIENT, profile=OTHER_PROFILE, number="+13125550200", source=STOP_KEYWORD, at=T0)

    assert optouts.opt_in(RECIPIENT, profile=PROFILE, number="+13125550101", at=T0 + timedelta(minutes=1)) == 1

    assert sorted(r.scope for r in optouts.iterate()) == sorted([OTHER_NUMBER, OTHER_PROFILE])


def test_start_lifts_a_40300_block_whose_profile_was_unknown(store):
    optouts = Suppressions.of(store)
    optouts.add(RECIPIENT, number=OTHER_NUMBER, source=TELNYX_40300, at=T0)

    assert optouts.opt_in(RECIPIENT, profile=PROFILE, number=NUMBER, at=T0 + timedelta(seconds=1)) == 1
    assert optouts.suppressed([RECIPIENT], sender=OTHER_NUMBER, profile=None) == []


def test_an_older_start_does_not_lift_a_newer_block(store):
    optouts = Suppressions.of(store)
    optouts.add(RECIPIENT, profile=PROFILE, number=NUMBER, source=STOP_KEYWORD, at=T0)

    assert optouts.opt_in(RECIPIENT, profile=PROFILE, number=NUMBER, at=T0 - timedelta(seconds=1)) == 0
    assert optouts.suppressed([RECIPIENT], sender=NUMBER, profile=None) == [RECIPIENT]


def _inbound(text: str, at: datetime, *, to: str = NUMBER, profile: str | None = PROFILE) -> dict:
    return {"data": {"event_type": "message.received", "id": str(uuid.uuid4()), "record_type": "event",
                     "occurred_at": at.isoformat(),
                     "payload": {"id": str(uuid.uuid4()), "direction": "inbound", "text": text,
                                 "messaging_profile_id": profile, "received_at": at.isoformat(),
                                 "from": {"phone_number": RECIPIENT}, "to": [{"phone_number": to}]}}}


@pytest.mark.parametrize("order", ["stop_first", "start_first"])
def test_stop_then_start_ends_unblocked_in_whatever_order_the_webhooks_come(store, order):
    stop, start = _inbound("STOP", T0), _inbound("Start", T0 + timedelta(seconds=5))
    for event in ([stop, start] if order == "stop_first" else [start, stop]):
        assert events.apply_event(store, event) == events.APPLIED

    assert Suppressions.of(store).suppressed([RECIPIENT], sender=NUMBER, profile=PROFILE) == []


@pytest.mark.parametrize("order", ["start_first", "stop_first"])
def test_start_then_stop_ends_blocked_in_whatever_order_the_webhooks_come(store, order):
    start, stop = _inbound("unstop", T0), _inbound(" stop all ", T0 + timedelta(seconds=5))
    for event in ([start, stop] if order == "start_first" else [stop, start]):
        events.apply_event(store, event)

    assert Suppressions.of(store).suppressed([RECIPIENT], sender=NUMBER, profile=None) == [RECIPIENT]
    row = Suppressions.of(store).get(RECIPIENT, PROFILE)
    assert row is not None and row.keyword == "stop all" and row.source == STOP_KEYWORD


def test_an_inbound_without_a_profile_blocks_the_receiving_number(store):
    events.apply_event(store, _inbound("QUIT", T0, profile=None))

    row = Suppressions.of(store).get(RECIPIENT, NUMBER)
    assert row is not None and row.messaging_profile_id is None and row.number == NUMBER


def test_an_inbound_is_recorded_once_and_other_texts_change_nothing(store):
    hello = _inbound("stop it please", T0)
    assert events.apply_event(store, hello) == events.APPLIED
    assert events.apply_event(store, hello) == events.DUPLICATE
    again = {"data": {**hello["data"], "id": str(uuid.uuid4())}}  # the same message in another event
    assert events.apply_event(store, again) == events.APPLIED

    record = Inbound.of(store).message(hello["data"]["payload"]["id"])
    assert record is not None
    assert (record["from"], record["to"], record["text"], record["keyword"]) == (RECIPIENT, NUMBER,
                                                                                 "stop it please", None)
    assert list(Suppressions.of(store).iterate()) == []


# -- 40300 refusals --------------------------------------------------------------------------------------------

def test_a_refusal_blocks_the_one_recipient_or_the_group_members_telnyx_names(store):
    optouts = Suppressions.of(store)
    assert optouts.record_refusal([RECIPIENT], sender=NUMBER, profile=None, details=[None]) == [RECIPIENT]
    assert optouts.get(RECIPIENT, NUMBER).source == TELNYX_40300

    group = ["+13125550003", "+13125550004"]
    detail = "Messages cannot be sent from '+13125550001' to '+13125550004' due to an existing block rule."
    assert optouts.record_refusal(group, sender=NUMBER, profile=PROFILE, details=[detail]) == ["+13125550004"]
    assert optouts.get("+13125550004", PROFILE) is not None
    assert optouts.record_refusal(group, sender=NUMBER, profile=None, details=["blocked"]) == []


# -- listing -------------------------------------------------------------------------------------------------

def test_list_pages_in_order_and_filters_by_scope(store):
    optouts = Suppressions.of(store)
    for i in range(7):
        optouts.add(f"+1312555090{i}", profile=PROFILE if i % 2 else None, number=NUMBER, source=MANUAL)
    optouts.add("+13125550999", number=OTHER_NUMBER, source=MANUAL)

    first = optouts.list(limit=3)
    second = optouts.list(limit=3, after=(first[-1].recipient, first[-1].scope))
    assert [r.recipient for r in first + second] == [f"+1312555090{i}" for i in range(6)]
    assert len(list(optouts.iterate(page_size=3))) == 8
    assert len(list(optouts.iterate(scope=NUMBER, page_size=2))) == 7      # by scope, or learned on it
    assert [r.recipient for r in optouts.iterate(scope=PROFILE)] == ["+13125550901", "+13125550903",
                                                                      "+13125550905"]
    assert json.loads(json.dumps(first[0].as_dict()))["created_at"]


@pytest.mark.parametrize(("recipient", "scope", "field"), [
    ("13125550002", PROFILE, "number"),
    ("+13125550002", "", "scope"),
    ("+13125550002", "not a scope!", "scope"),
    ("+13125550002", "4001767e-ce0f", "scope"),
])
def test_check_pair_names_the_bad_field(recipient, scope, field):
    with pytest.raises(ValidationError) as refused:
        check_pair(recipient, scope)
    assert refused.value.field == field


def test_check_pair_tells_a_profile_from_a_sender():
    assert check_pair(RECIPIENT, PROFILE) == (RECIPIENT, PROFILE, None)
    assert check_pair(RECIPIENT, NUMBER) == (RECIPIENT, None, NUMBER)
    assert check_pair(RECIPIENT, "12345") == (RECIPIENT, None, "12345")


# -- sendq optouts --------------------------------------------------------------------------------------------

def _sendq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producers.cli", "optouts", *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def env(base_settings) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": base_settings.database_url, "REDIS_URL": base_settings.redis_url,
            "SENDQ_NAMESPACE": base_settings.namespace}


def test_cli_add_list_remove(env, store):
    added = _sendq("add", RECIPIENT, "--scope", PROFILE, "--json", env=env)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout) | {"created_at": None} == {
        "recipient": RECIPIENT, "scope": PROFILE, "messaging_profile_id": PROFILE, "number": None,
        "source": "manual", "keyword": None, "created_at": None, "added": True}
    assert _sendq("add", "+13125550003", "--scope", NUMBER, env=env).returncode == 0
    assert Suppressions.of(store).suppressed([RECIPIENT], sender=None, profile=PROFILE) == [RECIPIENT]

    listed = json.loads(_sendq("list", "--json", env=env).stdout)
    assert listed["count"] == 2 and {r["recipient"] for r in listed["data"]} == {RECIPIENT, "+13125550003"}
    only = json.loads(_sendq("list", "--scope", NUMBER, "--json", env=env).stdout)
    assert [r["recipient"] for r in only["data"]] == ["+13125550003"]
    table = _sendq("list", env=env).stdout
    assert table.startswith("RECIPIENT") and PROFILE in table

    removed = _sendq("remove", RECIPIENT, "--scope", PROFILE, "--json", env=env)
    assert json.loads(removed.stdout) == {"recipient": RECIPIENT, "scope": PROFILE, "removed": True}
    again = _sendq("remove", RECIPIENT, "--scope", PROFILE, "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["removed"] is False
    assert Suppressions.of(store).suppressed([RECIPIENT], sender=None, profile=PROFILE) == []


@pytest.mark.parametrize(("args", "field"), [
    (["add", "3125550002", "--scope", PROFILE], "number"),
    (["add", RECIPIENT, "--scope", "no such scope"], "scope"),
    (["remove", RECIPIENT, "--scope", "+1"], "scope"),
    (["add", RECIPIENT], "--scope"),
    (["list", "--profile", PROFILE], "profile"),
    (["list", "--telnyx", "--scope", PROFILE], "scope"),
])
def test_cli_bad_input_exits_2_naming_the_field(env, store, args, field):
    done = _sendq(*args, "--json", env=env)

    assert done.returncode == 2, done.stderr
    assert field in done.stderr and done.stdout == ""
    assert list(Suppressions.of(store).iterate()) == []
