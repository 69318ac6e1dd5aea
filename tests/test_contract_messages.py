"""The official telnyx SDK accepts the simulator: every message and opt-out operation, typed responses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
import telnyx
from sim_support import FAST, running_simulator

from worker.simulator import SimulatorConfig
from worker.simulator.inventory import SHORT_CODE
from worker.telnyx import TelnyxClient

PROFILE = "4001767e-ce0f-4cae-9d5f-0d5e636e7809"


@pytest.fixture
def simulator():
    """Sends only from the numbers the simulated account owns, as Telnyx does."""
    with running_simulator(SimulatorConfig(**FAST)) as sim:
        yield sim


@pytest.fixture
def sdk(simulator):
    client = telnyx.Telnyx(api_key="KEY-test", base_url=f"{simulator.url}/v2", max_retries=0)
    yield client
    client.close()


def assert_sendq_fields(message, *, recipients=1):
    """The fields sendq reads from a send or retrieve answer."""
    assert message.id
    assert len(message.to) == recipients and message.to[0].phone_number and message.to[0].status
    assert message.parts >= 1
    assert message.cost is not None and message.cost.amount and message.cost.currency == "USD"
    assert message.from_ is not None and message.from_.phone_number
    assert message.messaging_profile_id


def test_send_on_every_endpoint(sdk):
    sends = [
        sdk.messages.send(to="+13125550002", from_="+13125550001", text="general", idempotency_key="c-1"),
        sdk.messages.send_long_code(to="+13125550002", from_="+13125550001", text="long code"),
        sdk.messages.send_short_code(to="+13125550002", from_=SHORT_CODE, text="short code"),
        sdk.messages.send_number_pool(to="+13125550002", messaging_profile_id=PROFILE, text="pool"),
        sdk.messages.send_with_alphanumeric_sender(to="+447700900123", from_="MyShop", messaging_profile_id=PROFILE,
                                                   text="alpha"),
    ]
    for response in sends:
        assert_sendq_fields(response.data)
        assert response.data.to[0].status == "queued"

    group = sdk.messages.send_group_mms(from_="+13125550001", to=["+13125550002", "+13125550003"], text="group",
                                        media_urls=["https://example.com/a.png"])
    assert_sendq_fields(group.data, recipients=2)
    assert group.data.type == "MMS"


def test_whatsapp_send(sdk):
    response = sdk.messages.whatsapp(from_="+13125550001", to="+13125550002",
                                     whatsapp_message={"type": "text", "text": {"body": "hello"}})
    assert response.data.id
    assert response.data.to and response.data.to[0].phone_number == "+13125550002"


def test_schedule_retrieve_and_cancel(sdk):
    send_at = datetime.now(UTC) + timedelta(minutes=10)
    scheduled = sdk.messages.schedule(to="+13125550002", from_="+13125550001", text="later", send_at=send_at)
    assert scheduled.data.to[0].status == "scheduled"

    retrieved = sdk.messages.retrieve(scheduled.data.id)
    assert retrieved.data.id == scheduled.data.id

    cancelled = sdk.messages.cancel_scheduled(scheduled.data.id)
    assert cancelled.id == scheduled.data.id  # top-level, not wrapped in "data"
    assert cancelled.to[0].status == "cancelled"


def test_retrieve_group_messages(sdk):
    group = sdk.messages.send_group_mms(from_="+13125550001", to=["+13125550002", "+13125550003"], text="g")

    members = sdk.messages.retrieve_group_messages(group.data.id)

    assert [m.to[0].phone_number for m in members.data] == ["+13125550002", "+13125550003"]


def test_sdk_errors_carry_telnyx_codes(sdk):
    with pytest.raises(telnyx.BadRequestError) as refused:
        sdk.messages.send(to="not-a-number", from_="+13125550001", text="x")
    assert refused.value.body["errors"][0]["code"] == "40310"


def test_opt_outs_list_pages_through_the_sdk_and_sendqs_client(sdk, simulator):
    for i in range(7):
        httpx.post(f"{simulator.url}/_sim/inbound", json={"from": f"+1312555090{i}", "to": "+13125550001",
                                                          "text": " Stop "}).raise_for_status()

    first_page = sdk.messaging_optouts.list(page_size=3)
    assert len(first_page.data) == 3 and first_page.meta.total_pages == 3
    through_sdk = list(first_page)  # the SDK's auto-paging walks pages 2 and 3
    assert len(through_sdk) == 7
    assert {o.keyword for o in through_sdk} == {"STOP"}
    assert all(o.to and o.from_ == "+13125550001" and o.messaging_profile_id and o.created_at for o in through_sdk)

    ours = TelnyxClient.build(api_key="KEY", base_url=f"{simulator.url}/v2")
    assert len(list(ours.optouts.list(page_size=2))) == 7
    assert list(ours.optouts.list(from_="+19999999999")) == []
    ours.close()


def test_an_opted_out_recipient_is_refused_with_40300_until_start(sdk, simulator):
    stop = {"from": "+13125550002", "to": "+13125550001", "text": "STOP"}
    httpx.post(f"{simulator.url}/_sim/inbound", json=stop).raise_for_status()

    with pytest.raises(telnyx.ConflictError) as blocked:
        sdk.messages.send(to="+13125550002", from_="+13125550001", text="x")
    assert blocked.value.status_code == 409
    assert blocked.value.body["errors"][0]["code"] == "40300"

    httpx.post(f"{simulator.url}/_sim/inbound", json={**stop, "text": "START"}).raise_for_status()
    assert sdk.messages.send(to="+13125550002", from_="+13125550001", text="x").data.id


def test_sendq_optouts_list_telnyx_prints_every_page(simulator):
    import json
    import os
    import subprocess
    import sys

    for i in range(3):
        httpx.post(f"{simulator.url}/_sim/inbound", json={"from": f"+1312555091{i}", "to": "+13125550001",
                                                          "text": "unsubscribe"}).raise_for_status()
    env = {**os.environ, "TELNYX_BASE_URL": f"{simulator.url}/v2", "TELNYX_API_KEY": "KEY-test"}
    done = subprocess.run([sys.executable, "-m", "producers.cli", "optouts", "list", "--telnyx", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert sorted(o["to"] for o in json.loads(done.stdout)["data"]) == [f"+1312555091{i}" for i in range(3)]
    table = subprocess.run([sys.executable, "-m", "producers.cli", "optouts", "list", "--telnyx"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert "UNSUBSCRIBE" in table.stdout and table.stdout.startswith("TO")
