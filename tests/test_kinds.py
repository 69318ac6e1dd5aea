"""Every kind goes to its own Telnyx endpoint with its own body, end to end to a final status."""

from __future__ import annotations

import pytest

from worker import statuses

PROFILE = "4001767e-ce0f-4cae-9d5f-0d5e636e7809"
GROUP = ["+13125550201", "+13125550202", "+13125550203"]

KINDS = {
    "long code": ({"from_": "+13125550001", "text": "hi"}, "long_code", "/v2/messages/long_code"),
    "long code MMS": ({"from_": "+13125550001", "media_urls": ["https://example.com/a.png"]}, "long_code",
                      "/v2/messages/long_code"),
    "toll-free": ({"from_": "+18885550001", "text": "hi"}, "long_code", "/v2/messages"),
    "short code": ({"from_": "24680", "text": "hi"}, "short_code", "/v2/messages/short_code"),
    "alphanumeric": ({"from_": "MyShop", "profile": PROFILE, "text": "hi"}, "alphanumeric",
                     "/v2/messages/alphanumeric_sender_id"),
    "number pool": ({"profile": PROFILE, "text": "hi"}, "number_pool", "/v2/messages/number_pool"),
    "whatsapp text": ({"from_": "+13125550001", "text": "hi", "kind": "whatsapp"}, "whatsapp", "/v2/messages/whatsapp"),
    "whatsapp image": ({"from_": "+13125550001", "media_urls": ["https://example.com/a.png"], "kind": "whatsapp"},
                       "whatsapp", "/v2/messages/whatsapp"),
    "whatsapp template": ({"from_": "+13125550001", "kind": "whatsapp", "whatsapp_message": {
        "type": "template", "template": {"name": "otp", "language": {"code": "en_US", "policy": "deterministic"}}}},
        "whatsapp", "/v2/messages/whatsapp"),
}


@pytest.mark.parametrize("case", list(KINDS))
def test_each_kind_reaches_its_endpoint_and_a_final_status(stack, case):
    options, kind, endpoint = KINDS[case]

    message_id = stack.producer.send("+447700900123" if kind == "alphanumeric" else "+13125550002", **options)
    record = stack.wait_final(message_id)

    assert record["status"] == statuses.DELIVERED
    assert record["kind"] == kind
    [sent] = stack.sim_messages()
    assert sent.endpoint == endpoint
    assert sent.idempotency_key == message_id


def test_a_group_mms_is_final_once_every_recipient_is(stack):
    message_id = stack.producer.send(GROUP, from_="+13125550001", kind="group_mms", text="dinner at 8?",
                                     media_urls=["https://example.com/menu.png"])

    record = stack.wait_final(message_id)

    assert record["status"] == statuses.DELIVERED
    assert record["to"] == GROUP
    assert record["recipient_statuses"] == dict.fromkeys(GROUP, "delivered")
    [sent] = stack.sim_messages()
    assert sent.endpoint == "/v2/messages/group_mms"
    assert [e["data"]["event_type"] for e in sent.events] == ["message.sent"] + ["message.finalized"] * 3


def test_a_group_mms_with_mixed_outcomes_keeps_each_and_reports_the_failure(stack):
    stack.simulator.config.outcomes = {"delivered": 1, "delivery_failed": 1}
    message_id = stack.producer.send(GROUP, from_="+13125550001", kind="group_mms", text="hi")

    stack.wait_final(message_id)
    stack.actors.broker.join("events", timeout=10_000)  # the other recipients' events may still be applying
    record = stack.producer.status(message_id)

    [sent] = stack.sim_messages()
    expected = dict(zip(GROUP, sent.outcomes, strict=True))
    assert record["recipient_statuses"] == expected
    if len(set(sent.outcomes)) == 1:
        assert record["status"] == sent.outcomes[0]
    else:
        assert record["status"] == statuses.DELIVERY_FAILED
    assert len(record["errors"]) == sent.outcomes.count("delivery_failed")


@pytest.mark.parametrize("outcome", ["delivery_failed", "delivery_unconfirmed", "sending_failed", "expired"])
def test_telnyx_final_outcomes_are_recorded_with_their_errors(stack, outcome):
    stack.simulator.config.outcomes = {outcome: 1}

    record = stack.wait_final(stack.producer.send("+13125550002", from_="+13125550001", text="hi"))

    assert record["status"] == outcome
    assert bool(record["errors"]) is (outcome != "delivery_unconfirmed")
