"""Rate-limit configuration: precedence, validation, what a message is metered against, and ``sendq limits``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis

from worker.errors import ValidationError
from worker.limits import (
    DEFAULT_ACCOUNT_MPS,
    DEFAULT_MPS,
    LimitKeys,
    RateLimits,
    classify,
    keys_for,
    message_cost,
    meter,
)
from worker.settings import Settings

PROFILE = "4001767e-ce0f-4cae-9d5f-0d5e636e7809"
SENDQ = [sys.executable, "-m", "producers.cli"]


# -- precedence ---------------------------------------------------------------------------------------

def test_defaults_are_telnyx_defaults_where_they_apply():
    limits = RateLimits()

    assert limits.sender_rate("toll_free", "+18005550100").mps == 20
    assert limits.sender_rate("short_code", "12345").mps == 1000
    assert limits.sender_rate("alphanumeric", "ACME").mps == 0.1
    assert limits.sender_rate("long_code", "+13125550001").mps == DEFAULT_MPS["long_code"] == 1
    assert limits.sender_rate("number_pool", PROFILE).source == "default"
    assert {s: limits.account_rate(s).mps for s in ("sms", "mms")} == DEFAULT_ACCOUNT_MPS == {"sms": 50, "mms": 15}


def test_exact_sender_wins_over_its_type_and_an_override_wins_at_the_same_level():
    limits = RateLimits({"long_code": 4, "+13125550001": 7}, {"sms": 30})

    assert vars(limits.sender_rate("long_code", "+13125550002")) == {"mps": 4, "source": "config",
                                                                      "matched": "long_code"}
    assert vars(limits.sender_rate("long_code", "+13125550001")) == {"mps": 7, "source": "config",
                                                                      "matched": "+13125550001"}
    # A live override of the type does not beat a sender configured on its own; one of the sender does.
    overrides = {"long_code": 2.0}
    assert limits.sender_rate("long_code", "+13125550001", overrides).mps == 7
    assert vars(limits.sender_rate("long_code", "+13125550002", overrides)) == {"mps": 2, "source": "override",
                                                                                 "matched": "long_code"}
    assert limits.sender_rate("long_code", "+13125550001", {"+13125550001": 9.0}).source == "override"
    assert limits.account_rate("sms").mps == 30
    assert limits.account_rate("mms").source == "default"


def test_number_pools_are_configured_by_profile_id():
    limits = RateLimits({PROFILE: 12})

    assert limits.sender_rate("number_pool", PROFILE).mps == 12
    assert limits.sender_rate("number_pool", "00000000-0000-0000-0000-000000000000").mps == 1


# -- validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    {"long_code": -1}, {"long_code": 0}, {"long_code": "fast"}, {"long_code": True}, {"long_code": float("inf")},
    {"pigeon_post": 1}, {"+1-312": 1}, ["long_code"], "{not json",
])
def test_bad_rate_limits_name_the_variable(config):
    with pytest.raises(ValidationError) as caught:
        Settings(rate_limits=config)
    assert "SENDQ_RATE_LIMITS" in str(caught.value)
    if isinstance(config, dict):
        with pytest.raises(ValidationError, match="SENDQ_RATE_LIMITS"):
            RateLimits(config)


@pytest.mark.parametrize("account", [{"sms": -5}, {"rcs": 1}, {"mms": "many"}])
def test_bad_account_rates_name_the_variable(account):
    with pytest.raises(ValidationError, match="SENDQ_ACCOUNT_MPS"):
        Settings(account_mps=account)


def test_settings_read_both_variables_as_json(monkeypatch):
    monkeypatch.setenv("SENDQ_RATE_LIMITS", json.dumps({"toll_free": 3, "+13125550001": 0.5, PROFILE: 40}))
    monkeypatch.setenv("SENDQ_ACCOUNT_MPS", '{"sms": 100}')

    settings = Settings.from_env()
    limits = RateLimits.from_settings(settings)

    assert settings.rate_limits == {"toll_free": 3, "+13125550001": 0.5, PROFILE: 40}
    assert limits.sender_rate("toll_free", "+18885550100").mps == 3
    assert limits.account_rate("sms").mps == 100 and limits.account_rate("mms").mps == 15

    monkeypatch.setenv("SENDQ_RATE_LIMITS", '{"long_code": -2}')
    with pytest.raises(ValidationError, match="SENDQ_RATE_LIMITS"):
        Settings.from_env()


@pytest.mark.parametrize(("name", "expected"), [
    ("+13125550001", ("long_code", "+13125550001")), ("+18445550100", ("toll_free", "+18445550100")),
    ("12345", ("short_code", "12345")), ("ACME Inc", ("alphanumeric", "ACME Inc")),
    (PROFILE, ("number_pool", PROFILE)), ("toll_free", ("toll_free", None)),
])
def test_senders_are_classified_by_format(name, expected):
    assert classify(name) == expected


# -- what a message is metered against ----------------------------------------------------------------

def test_each_kind_maps_to_its_sender_key_and_the_account_stream():
    assert keys_for("long_code", "+13125550001", None, mms=False) == LimitKeys("long_code", "+13125550001", "sms")
    assert keys_for("long_code", "+18005550100", None, mms=True) == LimitKeys("toll_free", "+18005550100", "mms")
    assert keys_for("short_code", "12345", None, mms=False) == LimitKeys("short_code", "12345", "sms")
    assert keys_for("alphanumeric", "ACME", PROFILE, mms=False) == LimitKeys("alphanumeric", "ACME", "sms")
    assert keys_for("number_pool", None, PROFILE, mms=False) == LimitKeys("number_pool", PROFILE, "sms")
    assert keys_for("group_mms", "+13125550001", None, mms=False) == LimitKeys("long_code", "+13125550001", "mms")
    assert keys_for("whatsapp", "+13125550001", None, mms=False) is None


def test_cost_is_segments_or_one_per_message():
    three_parts = "x" * 400

    assert message_cost("hi", mms=False) == 1
    assert message_cost(three_parts, mms=False) == 3
    assert message_cost(three_parts, mms=False, mode="message") == 1
    assert message_cost(three_parts, mms=True) == 1
    assert message_cost(None, mms=True, recipients=3) == 3


def test_meter_reads_a_stored_message():
    sms = meter("long_code", "+13125550001", None, {"to": "+13125550002", "text": "ж" * 100})
    mms = meter("long_code", "+13125550001", None, {"to": "+13125550002", "media_urls": ["https://x/y.png"]})
    group = meter("group_mms", "+13125550001", None, {"to": ["+13125550002", "+13125550003"], "text": "hi"})

    assert (sms.keys.account, sms.cost) == ("sms", 2)  # UCS-2: 67 per part
    assert (mms.keys.account, mms.cost) == ("mms", 1)
    assert (group.keys.account, group.cost) == ("mms", 2)
    assert meter("long_code", "+13125550001", None, {"text": "x" * 400}, cost_mode="message").cost == 1
    assert meter("whatsapp", "+13125550001", None, {"to": "+13125550002"}) is None


# -- sendq limits ----------------------------------------------------------------------------------------

@pytest.fixture
def env(redis_url, namespace) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "SENDQ_NAMESPACE": namespace,
            "SENDQ_RATE_LIMITS": json.dumps({"toll_free": 10, "+13125550009": 3})}


def limits(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SENDQ, "limits", *args], env=env, capture_output=True, text=True, timeout=60)


def test_show_set_reset_round_trip(env, redis_url, namespace):
    shown = limits("show", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    overview = json.loads(shown.stdout)
    assert overview["effective"]["toll_free"] == {"mps": 10, "source": "config", "matched": "toll_free"}
    assert overview["effective"]["long_code"]["source"] == "default"
    assert overview["config"]["+13125550009"] == 3 and overview["overrides"] == {}

    done = limits("set", "+13125550001", "2.5", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout).items() >= {"sender": "+13125550001", "mps": 2.5, "source": "override"}.items()
    assert redis.Redis.from_url(redis_url).hget(f"{namespace}:rl:overrides", "+13125550001") == b"2.5"

    one = json.loads(limits("show", "+13125550001", "--json", env=env).stdout)
    assert (one["mps"], one["source"], one["type"], one["backlog_s"]) == (2.5, "override", "long_code", 0.0)
    assert json.loads(limits("show", "--json", env=env).stdout)["overrides"] == {"+13125550001": 2.5}
    assert "+13125550001" in limits("show", env=env).stdout

    reset = json.loads(limits("reset", "+13125550001", "--json", env=env).stdout)
    assert (reset["removed"], reset["mps"], reset["source"]) == (True, 1, "default")
    assert json.loads(limits("reset", "+13125550001", "--json", env=env).stdout)["removed"] is False


def test_a_sender_type_can_be_overridden(env):
    assert limits("set", "long_code", "0.5", env=env).returncode == 0

    shown = json.loads(limits("show", "+13125550001", "--json", env=env).stdout)
    assert (shown["mps"], shown["source"], shown["matched"]) == (0.5, "override", "long_code")
    assert json.loads(limits("show", "+13125550009", "--json", env=env).stdout)["mps"] == 3  # its own config wins


@pytest.mark.parametrize(("args", "field"), [
    (["set", "1234", "5"], "sender"), (["set", "pigeon_post", "5"], "sender"), (["set", "long_code", "0"], "mps"),
    (["set", "long_code", "-1"], "mps"), (["set", "long_code", "fast"], "mps"), (["show", "not a sender!"], "sender"),
    (["reset", "+0123"], "sender"),
])
def test_bad_input_exits_2_naming_the_field_and_stores_nothing(env, redis_url, namespace, args, field):
    done = limits(*args, "--json", env=env)

    assert done.returncode == 2, done.stderr
    assert field in done.stderr and done.stdout == ""
    assert redis.Redis.from_url(redis_url).exists(f"{namespace}:rl:overrides") == 0


def test_bad_configuration_exits_2_naming_the_variable(env):
    done = limits("show", "--json", env={**env, "SENDQ_RATE_LIMITS": '{"long_code": "fast"}'})

    assert done.returncode == 2
    assert "SENDQ_RATE_LIMITS" in done.stderr
