"""Management operations (numbers, hosted and mobile numbers, bulk updates, sender IDs, profile metrics,
secrets, auto-response configs): the official telnyx SDK and sendq's own client against the simulator over
real HTTP, and the read-only ops commands of the ``sendq`` CLI.

The SDK's models are lenient (``construct``), so every SDK answer is also validated strictly against the
SDK's own response model: a field of the wrong type or a missing required one fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import telnyx
from pydantic import BaseModel

from worker.errors import TelnyxRefused
from worker.simulator import inventory
from worker.simulator.profiles import SECOND_PROFILE_ID, SEEDED_SENDER
from worker.telnyx import TelnyxClient

MAIN, SPARE, TOLL_FREE, SHORT = inventory.MAIN_NUMBER, inventory.SPARE_NUMBER, inventory.TOLL_FREE, inventory.SHORT_CODE
MOBILE, HOSTED = inventory.MOBILE_NUMBER, inventory.HOSTED_NUMBER
NOBODYS = "+19995550123"  # E.164 but not on the account


@pytest.fixture
def sdk(simulator) -> Iterator[telnyx.Telnyx]:
    client = telnyx.Telnyx(api_key="KEY-test", base_url=f"{simulator.url}/v2", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def paths() -> list[str]:
    return []


@pytest.fixture
def client(simulator, paths) -> Iterator[TelnyxClient]:
    """sendq's client, recording the path of every request it makes."""
    http = httpx.Client(event_hooks={"request": [lambda request: paths.append(request.url.path)]})
    yield TelnyxClient(http, api_key="KEY-test", base_url=f"{simulator.url}/v2", attempts=1)
    http.close()


@pytest.fixture
def profile_id(simulator) -> str:
    return simulator.config.profile_id


@pytest.fixture
def one_per_poll(simulator) -> None:
    """Bulk orders settle one number per poll and never by time, so a test sees every step."""
    book = inventory.book(simulator)
    book.bulk_batch, book.bulk_interval_s = 1, 3600.0


def strict(raw_call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an SDK method via ``with_raw_response``, validate the JSON strictly against the SDK's model for it,
    and return the SDK's parsed answer."""
    raw = raw_call(*args, **kwargs)
    parsed = raw.parse()
    if isinstance(parsed, BaseModel):
        type(parsed).model_validate(raw.http_response.json())
    return parsed


def error_of(response: httpx.Response) -> dict[str, Any]:
    return response.json()["errors"][0]


# -- the official SDK, every operation -------------------------------------------------------------------

def test_sdk_phone_number_messaging_settings(sdk, simulator, profile_id):
    messaging = sdk.phone_numbers.messaging.with_raw_response
    page = strict(messaging.list, page_size=2)
    every = list(sdk.phone_numbers.messaging.list(page_size=2))  # the SDK pages on by itself
    assert page.meta.total_results == len(every) == 4 + len(simulator.config.pool_numbers)
    assert [n.phone_number for n in sdk.phone_numbers.messaging.list(filter_type="tollfree")] == [TOLL_FREE]
    on_profile = sdk.phone_numbers.messaging.list(filter_messaging_profile_id=profile_id)
    assert SPARE not in {n.phone_number for n in on_profile}

    found = strict(messaging.retrieve, MAIN).data
    assert (found.phone_number, found.messaging_profile_id, found.type) == (MAIN, profile_id, "long-code")
    assert found.record_type == "messaging_settings" and found.features.sms.domestic_two_way
    assert strict(messaging.retrieve, found.id).data.phone_number == MAIN

    unassigned = strict(messaging.update, found.id, messaging_profile_id="", tags=["ops"]).data
    assert (unassigned.messaging_profile_id, unassigned.tags) == (None, ["ops"])
    moved = strict(messaging.update, found.id, messaging_profile_id=SECOND_PROFILE_ID, messaging_product="P2P").data
    assert (moved.messaging_profile_id, moved.messaging_product, moved.tags) == (SECOND_PROFILE_ID, "P2P", ["ops"])
    kept = strict(messaging.update, found.id).data  # nothing sent: everything kept
    assert (kept.messaging_profile_id, kept.messaging_product) == (SECOND_PROFILE_ID, "P2P")


def test_sdk_mobile_phone_numbers(sdk, profile_id):
    messaging = sdk.mobile_phone_numbers.messaging.with_raw_response
    page = strict(messaging.list)
    assert [n.phone_number for n in page.data] == [MOBILE]
    found = strict(messaging.retrieve, page.data[0].id).data
    assert (found.phone_number, found.messaging_profile_id, found.type) == (MOBILE, profile_id, "longcode")
    assert found.features.sms is not None


def test_sdk_messaging_hosted_numbers(sdk, profile_id):
    hosted = sdk.messaging_hosted_numbers.with_raw_response
    page = strict(hosted.list, filter_messaging_profile_id=profile_id)
    assert [n.phone_number for n in page.data] == [HOSTED]
    number_id = page.data[0].id
    assert strict(hosted.retrieve, number_id).data.phone_number == HOSTED
    updated = strict(hosted.update, number_id, messaging_profile_id=SECOND_PROFILE_ID, tags=["hosted"]).data
    assert (updated.messaging_profile_id, updated.tags) == (SECOND_PROFILE_ID, ["hosted"])

    order = strict(hosted.delete, number_id).data
    assert order.phone_numbers[0].phone_number == HOSTED and order.phone_numbers[0].status == "deleted"
    assert list(sdk.messaging_hosted_numbers.list()) == []


def test_sdk_bulk_update_goes_from_pending_to_completed(sdk, one_per_poll):
    bulk = sdk.messaging_numbers_bulk_updates.with_raw_response
    order = strict(bulk.create, messaging_profile_id=SECOND_PROFILE_ID, numbers=[MAIN, SPARE, NOBODYS, SHORT]).data
    assert order.record_type == "messaging_numbers_bulk_update"
    assert (order.pending, order.success, order.failed) == ([MAIN, SPARE], [], [NOBODYS, SHORT])

    seen = [strict(bulk.retrieve, order.order_id).data for _ in range(3)]
    assert [(s.pending, s.success) for s in seen] == [([SPARE], [MAIN]), ([], [MAIN, SPARE]), ([], [MAIN, SPARE])]
    for number in (MAIN, SPARE):
        assert sdk.phone_numbers.messaging.retrieve(number).data.messaging_profile_id == SECOND_PROFILE_ID


def test_sdk_alphanumeric_sender_ids(sdk, profile_id):
    senders = sdk.alphanumeric_sender_ids.with_raw_response
    created = strict(senders.create, alphanumeric_sender_id="Acme Co", messaging_profile_id=profile_id,
                     us_long_code_fallback=MAIN).data
    assert (created.alphanumeric_sender_id, created.messaging_profile_id) == ("Acme Co", profile_id)
    assert created.us_long_code_fallback == MAIN and created.record_type == "alphanumeric_sender_id"
    assert strict(senders.retrieve, created.id).data.alphanumeric_sender_id == "Acme Co"
    listed = strict(senders.list, filter_messaging_profile_id=profile_id).data
    assert {s.alphanumeric_sender_id for s in listed} == {SEEDED_SENDER, "Acme Co"}
    assert list(sdk.alphanumeric_sender_ids.list(filter_messaging_profile_id=SECOND_PROFILE_ID)) == []

    assert strict(senders.delete, created.id).data.id == created.id
    with pytest.raises(telnyx.NotFoundError):
        sdk.alphanumeric_sender_ids.retrieve(created.id)


def test_sdk_profile_metrics_count_what_was_sent(sdk, profile_id):
    sdk.messages.send_long_code(from_=MAIN, to="+13125550002", text="metrics")
    listed = strict(sdk.messaging_profile_metrics.with_raw_response.list, time_frame="1h")
    mine = next(m for m in listed.data if m["messaging_profile_id"] == profile_id)
    assert mine["record_type"] == "messaging_profile_metrics" and mine["outbound"]["sent"] == 1
    assert mine["phone_numbers"] >= 2 and "received" in mine["inbound"]

    data = strict(sdk.messaging_profiles.with_raw_response.retrieve_metrics, profile_id, time_frame="1h").data
    assert data["overview"]["outbound"]["sent"] == 1
    buckets = data["detailed"]
    assert len(buckets) == 12 and sum(m["sent"] for b in buckets for m in b["metrics"]) == 1
    assert {"label", "sent", "delivered", "outbound_error_ratio", "received"} <= set(buckets[-1]["metrics"][0])


def test_sdk_regenerate_secret_returns_the_profile_with_a_new_secret(sdk, profile_id):
    actions = sdk.messaging_profiles.actions.with_raw_response
    first = strict(actions.regenerate_secret, profile_id).data
    second = strict(actions.regenerate_secret, profile_id).data
    assert (first.id, first.record_type, second.id) == (profile_id, "messaging_profile", profile_id)
    assert first.v1_secret and second.v1_secret and first.v1_secret != second.v1_secret


def test_sdk_autoresp_configs(sdk, profile_id):
    configs = sdk.messaging_profiles.autoresp_configs.with_raw_response
    seeded = strict(configs.list, profile_id)
    assert [c.op for c in seeded.data] == ["stop"] and seeded.meta.total_results == 1

    created = strict(configs.create, profile_id, op="info", keywords=["HELP"], country_code="US",
                     resp_text="Reply STOP to stop.").data
    assert (created.op, created.keywords, created.country_code) == ("info", ["HELP"], "US")
    assert strict(configs.retrieve, created.id, profile_id=profile_id).data.resp_text == "Reply STOP to stop."
    replaced = strict(configs.update, created.id, profile_id=profile_id, op="info", keywords=["HELP", "INFO"],
                      country_code="CA").data
    assert (replaced.keywords, replaced.country_code, replaced.resp_text) == (["HELP", "INFO"], "CA", None)
    assert replaced.created_at == created.created_at and replaced.updated_at >= created.updated_at
    assert [c.id for c in sdk.messaging_profiles.autoresp_configs.list(profile_id, country_code="CA").data] == \
        [created.id]
    assert sdk.messaging_profiles.autoresp_configs.list(profile_id, created_at={"gte": "2999-01-01T00:00:00Z"}) \
        .data == []

    assert json.loads(sdk.messaging_profiles.autoresp_configs.delete(created.id, profile_id=profile_id)) == "OK"
    with pytest.raises(telnyx.NotFoundError):
        sdk.messaging_profiles.autoresp_configs.retrieve(created.id, profile_id=profile_id)


UNKNOWN = "0f0e0d0c-0b0a-4909-8807-060504030201"
NOT_FOUND_CALLS = {
    "phone number": lambda c: c.phone_numbers.messaging.retrieve("+19995550000"),
    "phone number update": lambda c: c.phone_numbers.messaging.update("1", tags=["x"]),
    "mobile number": lambda c: c.mobile_phone_numbers.messaging.retrieve("1"),
    "hosted number": lambda c: c.messaging_hosted_numbers.retrieve(UNKNOWN),
    "bulk order": lambda c: c.messaging_numbers_bulk_updates.retrieve(UNKNOWN),
    "sender id": lambda c: c.alphanumeric_sender_ids.delete(UNKNOWN),
    "profile metrics": lambda c: c.messaging_profiles.retrieve_metrics(UNKNOWN),
    "secret": lambda c: c.messaging_profiles.actions.regenerate_secret(UNKNOWN),
    "autoresp profile": lambda c: c.messaging_profiles.autoresp_configs.list(UNKNOWN),
    "autoresp config": lambda c: c.messaging_profiles.autoresp_configs.retrieve(UNKNOWN, profile_id=SECOND_PROFILE_ID),
}


@pytest.mark.parametrize("case", sorted(NOT_FOUND_CALLS))
def test_sdk_unknown_ids_are_404_with_code_10005(sdk, case):
    with pytest.raises(telnyx.NotFoundError) as raised:
        NOT_FOUND_CALLS[case](sdk)
    assert error_of(raised.value.response)["code"] == "10005"


BAD_INPUT_CALLS = {
    "profile not a uuid": (lambda c: c.phone_numbers.messaging.update(MAIN, messaging_profile_id="nope"),
                           422, "10015", "/messaging_profile_id"),
    "unknown profile": (lambda c: c.phone_numbers.messaging.update(MAIN, messaging_profile_id=UNKNOWN),
                        422, "10005", "/messaging_profile_id"),
    "ineligible product": (lambda c: c.phone_numbers.messaging.update(TOLL_FREE, messaging_product="P2P"),
                           422, "10015", "/messaging_product"),
    "bulk without numbers": (lambda c: c.messaging_numbers_bulk_updates.create(messaging_profile_id=SECOND_PROFILE_ID,
                                                                               numbers=[]), 400, "10004", "/numbers"),
    "sender too long": (lambda c: c.alphanumeric_sender_ids.create(alphanumeric_sender_id="ABCDEFGHIJKL",
                                                                   messaging_profile_id=SECOND_PROFILE_ID),
                        422, "10015", "/alphanumeric_sender_id"),
    "fallback not e164": (lambda c: c.alphanumeric_sender_ids.create(
        alphanumeric_sender_id="Acme", messaging_profile_id=SECOND_PROFILE_ID, us_long_code_fallback="3125550001"),
        422, "10016", "/us_long_code_fallback"),
    "autoresp bad op": (lambda c: c.messaging_profiles.autoresp_configs.create(
        SECOND_PROFILE_ID, op="pause", keywords=["X"], country_code="US"), 422, "10015", "/op"),
    "autoresp bad country": (lambda c: c.messaging_profiles.autoresp_configs.create(
        SECOND_PROFILE_ID, op="info", keywords=["X"], country_code="usa"), 422, "10015", "/country_code"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT_CALLS))
def test_sdk_bad_input_is_refused_naming_the_field(sdk, case):
    call, status, code, pointer = BAD_INPUT_CALLS[case]
    with pytest.raises(telnyx.APIStatusError) as raised:
        call(sdk)
    error = error_of(raised.value.response)
    assert (raised.value.status_code, error["code"], error["source"]["pointer"]) == (status, code, pointer)


def test_a_bad_query_parameter_names_the_parameter(sdk, profile_id):
    with pytest.raises(telnyx.BadRequestError) as raised:
        sdk.messaging_profiles.retrieve_metrics(profile_id, time_frame="2h")  # type: ignore[arg-type]
    assert error_of(raised.value.response)["source"] == {"parameter": "time_frame"}


def test_requests_without_a_key_are_refused(simulator):
    answer = httpx.get(f"{simulator.url}/v2/phone_numbers/messaging")
    assert answer.status_code == 401 and error_of(answer)["code"] == "10009"


def test_reset_restores_the_seeded_account(sdk, simulator):
    sdk.phone_numbers.messaging.update(MAIN, messaging_profile_id="")
    sdk.alphanumeric_sender_ids.create(alphanumeric_sender_id="Gone", messaging_profile_id=SECOND_PROFILE_ID)
    assert httpx.post(f"{simulator.url}/_sim/reset").status_code == 204
    assert sdk.phone_numbers.messaging.retrieve(MAIN).data.messaging_profile_id == simulator.config.profile_id
    assert [s.alphanumeric_sender_id for s in sdk.alphanumeric_sender_ids.list()] == [SEEDED_SENDER]


# -- sendq's own client ------------------------------------------------------------------------------------

def test_client_numbers(client, profile_id):
    numbers = client.numbers
    listed = list(numbers.list(page_size=2))  # several pages, fetched lazily
    assert MAIN in {n["phone_number"] for n in listed} and len(listed) == len({n["id"] for n in listed})
    assert [n["phone_number"] for n in numbers.list(type="tollfree")] == [TOLL_FREE]
    assert [n["phone_number"] for n in numbers.list(phone_number=[MAIN, SPARE], sort="desc")] == [SPARE, MAIN]
    assert numbers.retrieve(MAIN)["messaging_profile_id"] == profile_id

    assert numbers.update(MAIN, messaging_profile_id="")["messaging_profile_id"] is None
    assert numbers.update(MAIN, messaging_profile_id=profile_id, tags=["a"])["tags"] == ["a"]

    mobile = list(numbers.list_mobile())
    assert numbers.retrieve_mobile(mobile[0]["id"])["phone_number"] == MOBILE
    hosted = list(numbers.list_hosted(phone_number_contains="415"))
    assert numbers.retrieve_hosted(HOSTED)["id"] == hosted[0]["id"]
    assert numbers.update_hosted(HOSTED, tags=["h"])["tags"] == ["h"]
    assert numbers.delete_hosted(HOSTED)["status"] == "deleted"


def test_client_bulk_update_polls_from_pending_to_completed(client, paths, one_per_poll):
    order = client.numbers.create_bulk_update(messaging_profile_id=SECOND_PROFILE_ID, numbers=[MAIN, SPARE, NOBODYS],
                                              assign_only=True)
    assert (order["pending"], order["failed"]) == ([MAIN, SPARE], [NOBODYS])

    polls = [order]
    while polls[-1]["pending"]:
        polls.append(client.numbers.retrieve_bulk_update(order["order_id"]))
    assert [len(p["pending"]) for p in polls] == [2, 1, 0]
    assert polls[-1]["success"] == [MAIN, SPARE] and polls[-1]["failed"] == [NOBODYS]
    assert client.numbers.retrieve(SPARE)["messaging_profile_id"] == SECOND_PROFILE_ID
    assert paths[:2] == ["/v2/messaging_numbers_bulk_updates",
                         f"/v2/messaging_numbers_bulk_updates/{order['order_id']}"]


def test_the_alternate_bulk_update_path_serves_the_same_orders(simulator, one_per_poll):
    """``/messaging_numbers/bulk_updates`` is in Telnyx's spec too; both paths see one set of orders."""
    headers = {"Authorization": "Bearer KEY-test"}
    with httpx.Client(base_url=f"{simulator.url}/v2", headers=headers) as http:
        created = http.post("/messaging_numbers/bulk_updates",
                            json={"messaging_profile_id": "", "numbers": [MAIN, TOLL_FREE]}).json()["data"]
        order = created["order_id"]
        first = http.get(f"/messaging_numbers/bulk_updates/{order}").json()["data"]
        second = http.get(f"/messaging_numbers_bulk_updates/{order}").json()["data"]
        missing = http.post("/messaging_numbers/bulk_updates", json={"numbers": [MAIN]})
        number = http.get(f"/phone_numbers/{TOLL_FREE.replace('+', '%2B')}/messaging").json()["data"]
    assert (created["pending"], first["pending"], second["pending"]) == ([MAIN, TOLL_FREE], [TOLL_FREE], [])
    assert second["success"] == [MAIN, TOLL_FREE] and number["messaging_profile_id"] is None
    assert missing.status_code == 400 and error_of(missing)["source"]["pointer"] == "/messaging_profile_id"


def test_client_profiles(client, profile_id):
    profiles = client.profiles
    sender = profiles.create_alphanumeric_sender_id(alphanumeric_sender_id="Acme", messaging_profile_id=profile_id)
    assert profiles.retrieve_alphanumeric_sender_id(sender["id"])["alphanumeric_sender_id"] == "Acme"
    assert {s["id"] for s in profiles.list_alphanumeric_sender_ids(messaging_profile_id=profile_id)} >= {sender["id"]}
    assert profiles.delete_alphanumeric_sender_id(sender["id"])["id"] == sender["id"]

    assert {m["messaging_profile_id"] for m in profiles.list_metrics(time_frame="7d")} == {profile_id,
                                                                                           SECOND_PROFILE_ID}
    detail = profiles.metrics(profile_id, time_frame="7d")
    assert detail["overview"]["messaging_profile_id"] == profile_id and len(detail["detailed"]) == 7
    assert profiles.regenerate_secret(profile_id)["v1_secret"]

    config = profiles.create_autoresp_config(profile_id, op="start", keywords=["START"], country_code="US")
    assert profiles.retrieve_autoresp_config(profile_id, config["id"])["op"] == "start"
    assert profiles.update_autoresp_config(profile_id, config["id"], op="start", keywords=["YES"], country_code="US",
                                           resp_text="Welcome back")["resp_text"] == "Welcome back"
    assert [c["id"] for c in profiles.list_autoresp_configs(profile_id, created_at_gte=config["created_at"])] == \
        [config["id"]]
    assert profiles.delete_autoresp_config(profile_id, config["id"]) == "OK"


def test_client_errors_are_telnyx_refusals_with_the_code(client):
    with pytest.raises(TelnyxRefused) as missing:
        client.numbers.retrieve("+19995550000")
    with pytest.raises(TelnyxRefused) as bad:
        client.numbers.update(MAIN, messaging_profile_id="not-a-uuid")
    assert (missing.value.status, missing.value.codes) == (404, ["10005"])
    assert (bad.value.status, bad.value.codes) == (422, ["10015"])


# -- the ops commands of the CLI -------------------------------------------------------------------------

def sendq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producers.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def cli_env(simulator) -> dict[str, str]:
    """Only Telnyx settings: the ops commands must not need Redis or a database."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(("TELNYX_", "SENDQ_", "REDIS_"))}
    return {**clean, "TELNYX_BASE_URL": f"{simulator.url}/v2", "TELNYX_API_KEY": "KEY-cli"}


def test_cli_numbers_list_prints_an_aligned_table_or_one_json_object(cli_env, profile_id):
    shown = sendq("numbers", "list", env=cli_env)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split("  ")[0] == "PHONE NUMBER" and len(rows) == 7
    column = header.index("TYPE")
    assert {row[column:].split()[0] for row in rows} == {"long-code", "toll-free", "short-code"}

    as_json = sendq("numbers", "list", "--profile", profile_id, "--json", env=cli_env)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)["data"]
    assert MAIN in {n["phone_number"] for n in data} and {n["messaging_profile_id"] for n in data} == {profile_id}


def test_cli_numbers_show(cli_env):
    shown = sendq("numbers", "show", TOLL_FREE, env=cli_env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"phone_number: {TOLL_FREE}" in shown.stdout and "features.mms: not available" in shown.stdout
    assert len({line.index(":") for line in lines}) == 1  # aligned on the colon

    record = json.loads(sendq("numbers", "show", TOLL_FREE, "--json", env=cli_env).stdout)
    assert (record["phone_number"], record["type"]) == (TOLL_FREE, "toll-free")


def test_cli_profile_metrics(cli_env, sdk, profile_id):
    sdk.messages.send_long_code(from_=MAIN, to="+13125550002", text="counted")
    shown = sendq("profile", "metrics", profile_id, "--time-frame", "3h", env=cli_env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0].split() == ["PROFILE", "NUMBERS", "SENT", "DELIVERED", "ERROR", "RATIO",
                                                    "RECEIVED"]
    assert "TIMESTAMP" in shown.stdout

    data = json.loads(sendq("profile", "metrics", profile_id, "--json", env=cli_env).stdout)
    assert data["overview"]["outbound"]["sent"] == 1 and len(data["detailed"]) == 24


def test_cli_failures_exit_1_with_one_line_on_stderr(cli_env):
    unknown = sendq("numbers", "show", "+19995550000", "--json", env=cli_env)
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert "10005" in unknown.stderr

    no_key = {k: v for k, v in cli_env.items() if k != "TELNYX_API_KEY"}
    refused = sendq("profile", "metrics", SECOND_PROFILE_ID, env=no_key)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert "TELNYX_API_KEY" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
