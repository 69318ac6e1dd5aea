"""The simulator refuses what Telnyx refuses and keeps what Telnyx keeps (issue 15's findings 1-5), so sendq's
tests against it catch the mistakes sendq could make."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from sim_support import FAST, running_simulator

from producers.cli import build_parser
from worker.simulator import Simulator, SimulatorConfig
from worker.simulator.app import DEFAULT_PROFILE_ID, POOL_NUMBERS
from worker.simulator.inventory import MAIN_NUMBER, SHORT_CODE, TOLL_FREE
from worker.simulator.profiles import SECOND_PROFILE_ID

AUTH = {"Authorization": "Bearer KEY-test"}
UNOWNED = "+13125559876"
UNKNOWN_PROFILE = "0b7e2b8a-50a4-4a4e-9a55-3c1c1f0d9e11"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with running_simulator(SimulatorConfig(**FAST)) as running:
        yield running


def post(sim: Simulator, path: str, body: dict | bytes, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{sim.url}/v2{path}", content=content,
                      headers={**AUTH, "content-type": "application/json", **headers})


def code(answer: httpx.Response) -> str:
    return answer.json()["errors"][0]["code"]


# 1. Idempotency keys are scoped to method + path and compare the body as sent.

def test_one_key_on_two_endpoints_names_two_requests(sim):
    body = {"from": MAIN_NUMBER, "to": "+13125550002", "text": "hi"}
    general = post(sim, "/messages", body, **{"Idempotency-Key": "k-1"})
    long_code = post(sim, "/messages/long_code", {**body, "text": "other"}, **{"Idempotency-Key": "k-1"})

    assert general.status_code == long_code.status_code == 200
    assert "idempotent-replayed" not in long_code.headers
    assert general.json()["data"]["id"] != long_code.json()["data"]["id"]
    assert post(sim, "/messages", body, **{"Idempotency-Key": "k-1"}).headers["idempotent-replayed"] == "true"


def test_a_key_compares_the_body_as_sent_not_reordered_json(sim):
    first = b'{"from": "+13125550001", "to": "+13125550002", "text": "hi"}'
    reordered = b'{"to": "+13125550002", "from": "+13125550001", "text": "hi"}'
    assert post(sim, "/messages", first, **{"Idempotency-Key": "k-2"}).status_code == 200

    again = post(sim, "/messages", first, **{"Idempotency-Key": "k-2"})
    assert again.headers["idempotent-replayed"] == "true"
    assert post(sim, "/messages", reordered, **{"Idempotency-Key": "k-2"}).status_code == 422


# 2. Senders must be the account's, of the endpoint's kind.

@pytest.mark.parametrize(("path", "extra"), [
    ("/messages", {"text": "x"}),
    ("/messages/long_code", {"text": "x"}),
    ("/messages/group_mms", {"to": ["+13125550002", "+13125550003"], "text": "x"}),
    ("/messages/whatsapp", {"whatsapp_message": {"type": "text", "text": {"body": "x"}}}),
])
def test_a_number_the_account_does_not_own_is_refused(sim, path, extra):
    answer = post(sim, path, {"from": UNOWNED, "to": "+13125550002", **extra})
    assert (answer.status_code, code(answer)) == (400, "40305")
    assert post(sim, path, {"from": MAIN_NUMBER, "to": "+13125550002", **extra}).status_code == 200


def test_long_code_refuses_a_toll_free_number_the_account_owns(sim):
    answer = post(sim, "/messages/long_code", {"from": TOLL_FREE, "to": "+13125550002", "text": "x"})
    assert (answer.status_code, code(answer)) == (400, "40305")
    assert post(sim, "/messages", {"from": TOLL_FREE, "to": "+13125550002", "text": "x"}).status_code == 200
    short = post(sim, "/messages/short_code", {"from": MAIN_NUMBER, "to": "+13125550002", "text": "x"})
    assert code(short) == "40305"
    assert post(sim, "/messages/short_code", {"from": SHORT_CODE, "to": "+13125550002", "text": "x"}).status_code == 200


def test_numbers_given_in_the_config_or_the_control_api_are_owned():
    with running_simulator(SimulatorConfig(**FAST, numbers=("+13125559000", "24680"))) as sim:
        assert post(sim, "/messages/long_code", {"from": "+13125559000", "to": "+13125550002",
                                                 "text": "x"}).status_code == 200
        short = post(sim, "/messages/short_code", {"from": "24680", "to": "+13125550002", "text": "x"})
        assert short.status_code == 200
        assert code(post(sim, "/messages", {"from": UNOWNED, "to": "+13125550002", "text": "x"})) == "40305"

        added = httpx.post(f"{sim.url}/_sim/numbers", json={"numbers": [UNOWNED]})
        assert added.json()["data"][0]["phone_number"] == UNOWNED
        assert post(sim, "/messages", {"from": UNOWNED, "to": "+13125550002", "text": "x"}).status_code == 200
        listed = httpx.get(f"{sim.url}/v2/phone_numbers/messaging", params={"filter[phone_number]": UNOWNED},
                           headers=AUTH).json()["data"]
        assert [(n["phone_number"], n["messaging_profile_id"]) for n in listed] == [(UNOWNED, DEFAULT_PROFILE_ID)]


def test_any_sender_keeps_the_permissive_behaviour_for_benchmarks():
    with running_simulator(SimulatorConfig(**FAST, any_sender=True)) as sim:
        assert post(sim, "/messages/long_code", {"from": UNOWNED, "to": "+13125550002", "text": "x"}).status_code == 200
        # The endpoint's kind still counts: a toll-free number is no long code.
        assert code(post(sim, "/messages/long_code", {"from": "+18005550100", "to": "+13125550002",
                                                      "text": "x"})) == "40305"


def test_the_cli_flags_choose_ownership():
    args = build_parser().parse_args(["simulator", "--numbers", "+13125559000,24680", "--any-sender"])
    assert (args.numbers, args.any_sender) == (["+13125559000", "24680"], True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulator", "--numbers", "+1312,abc"])


# 3. A named messaging profile must exist, on every route; a number pool sends from the profile's own pool.

@pytest.mark.parametrize(("path", "body"), [
    ("/messages/number_pool", {"to": "+13125550002", "text": "x"}),
    ("/messages", {"to": "+13125550002", "text": "x"}),
    ("/messages/alphanumeric_sender_id", {"from": "MyShop", "to": "+447700900123", "text": "x"}),
    ("/messages", {"from": MAIN_NUMBER, "to": "+13125550002", "text": "x"}),
])
def test_an_unknown_messaging_profile_is_refused(sim, path, body):
    answer = post(sim, path, {**body, "messaging_profile_id": UNKNOWN_PROFILE})
    assert (answer.status_code, code(answer)) == (422, "10005")
    assert post(sim, path, {**body, "messaging_profile_id": DEFAULT_PROFILE_ID}).status_code == 200


def test_a_number_pool_sends_from_the_profiles_own_numbers(sim):
    senders = {post(sim, "/messages/number_pool", {"to": f"+1312555070{i}", "text": "x",
                                                   "messaging_profile_id": DEFAULT_PROFILE_ID}
                    ).json()["data"]["from"]["phone_number"] for i in range(10)}
    assert senders <= {MAIN_NUMBER, *POOL_NUMBERS}

    # The second profile has no number pool (its number_pool_settings are null): 40321.
    refused = post(sim, "/messages/number_pool", {"to": "+13125550002", "text": "x",
                                                  "messaging_profile_id": SECOND_PROFILE_ID})
    assert (refused.status_code, code(refused)) == (400, "40321")


# 4. Inbound messages can be retrieved.

def test_an_inbound_message_is_retrievable(sim):
    received = httpx.post(f"{sim.url}/_sim/inbound", json={"from": "+13125550002", "to": MAIN_NUMBER,
                                                           "text": "hello"}).json()["data"]

    found = httpx.get(f"{sim.url}/v2/messages/{received['id']}", headers=AUTH)

    assert found.status_code == 200
    assert found.json()["data"]["direction"] == "inbound"
    assert found.json()["data"]["text"] == "hello"


# 5. A failed delivery keeps its error; one request can ask for it.

def test_a_failed_delivery_keeps_its_error_in_retrieve(sim):
    sent = post(sim, "/messages", {"from": MAIN_NUMBER, "to": "+13125550002", "text": "x"},
                **{"x-sim-outcome": "delivery_failed"}).json()["data"]
    other = post(sim, "/messages", {"from": MAIN_NUMBER, "to": "+13125550003", "text": "x"}).json()["data"]

    deadline = time.monotonic() + 5
    while (found := httpx.get(f"{sim.url}/v2/messages/{sent['id']}", headers=AUTH).json()["data"]
           )["to"][0]["status"] != "delivery_failed":
        assert time.monotonic() < deadline, found
        time.sleep(0.02)
    assert [e["code"] for e in found["errors"]] == ["40008"]
    finalized = next(e for e in sim.state.get(sent["id"]).events if e["data"]["event_type"] == "message.finalized")
    assert finalized["data"]["payload"]["errors"] == found["errors"]
    time.sleep(0.2)
    delivered = httpx.get(f"{sim.url}/v2/messages/{other['id']}", headers=AUTH).json()["data"]
    assert (delivered["to"][0]["status"], delivered["errors"]) == ("delivered", [])


def test_an_unknown_outcome_header_is_refused(sim):
    answer = post(sim, "/messages", {"from": MAIN_NUMBER, "to": "+13125550002", "text": "x"},
                  **{"x-sim-outcome": "lost"})
    assert (answer.status_code, code(answer)) == (400, "10015")
