"""The Telnyx client: errors translated once, bounded in-call retries, one Idempotency-Key throughout."""

from __future__ import annotations

import httpx
import pytest

from worker.errors import TelnyxRefused, TelnyxUnavailable
from worker.telnyx import TelnyxClient

BODY = {"to": "+13125550002", "from": "+13125550001", "text": "hi"}


class Telnyx:
    """A scripted stand-in for Telnyx at the transport seam: answers in order, records requests."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(telnyx: Telnyx, attempts: int = 3) -> TelnyxClient:
    return TelnyxClient(httpx.Client(transport=httpx.MockTransport(telnyx)), api_key="KEY", base_url="https://t/v2",
                        attempts=attempts)


def ok() -> httpx.Response:
    return httpx.Response(200, json={"data": {"id": "m-1", "parts": 1}})


def error(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"errors": [{"code": code, "title": "t"}]}, headers=headers)


def test_a_send_carries_bearer_auth_and_the_idempotency_key():
    telnyx = Telnyx(ok())

    assert client(telnyx).messages.send("/messages", BODY, idempotency_key="our-id")["id"] == "m-1"
    request = telnyx.requests[0]
    assert request.headers["authorization"] == "Bearer KEY"
    assert request.headers["idempotency-key"] == "our-id"
    assert str(request.url) == "https://t/v2/messages"


@pytest.mark.parametrize("failure", [
    error(500, "10007"), error(503, "10007"), error(429, "10011", **{"x-ratelimit-reset": "0"}),
    httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("reset"),
])
def test_transient_failures_are_retried_in_call_with_the_same_key(failure):
    telnyx = Telnyx(failure, ok())

    assert client(telnyx).messages.send("/messages", BODY, idempotency_key="our-id")["id"] == "m-1"
    assert [r.headers["idempotency-key"] for r in telnyx.requests] == ["our-id", "our-id"]


def test_retries_are_bounded_then_unavailable_escapes():
    telnyx = Telnyx(*[error(502, "10007")] * 3)

    with pytest.raises(TelnyxUnavailable) as raised:
        client(telnyx, attempts=3).messages.send("/messages", BODY, idempotency_key="k")
    assert len(telnyx.requests) == 3
    assert raised.value.status == 502


@pytest.mark.parametrize(("failure", "ambiguous"), [
    (httpx.ConnectError("refused"), False), (httpx.ReadTimeout("slow"), True), (httpx.ReadError("reset"), True),
])
def test_a_failure_after_the_request_went_out_is_ambiguous(failure, ambiguous):
    with pytest.raises(TelnyxUnavailable) as raised:
        client(Telnyx(failure), attempts=1).messages.send("/messages", BODY, idempotency_key="k")
    assert raised.value.ambiguous is ambiguous


@pytest.mark.parametrize(("status", "code"), [(400, "40310"), (401, "10009"), (409, "40300"), (422, "10016")])
def test_a_refusal_is_not_retried_and_keeps_telnyx_codes(status, code):
    telnyx = Telnyx(error(status, code))

    with pytest.raises(TelnyxRefused) as raised:
        client(telnyx).messages.send("/messages", BODY, idempotency_key="k")
    assert len(telnyx.requests) == 1
    assert raised.value.codes == [code]


def test_a_long_rate_limit_wait_is_left_to_the_job_queue():
    telnyx = Telnyx(error(429, "40318", **{"retry-after": "30"}))

    with pytest.raises(TelnyxUnavailable) as raised:
        client(telnyx).messages.send("/messages", BODY, idempotency_key="k")
    assert len(telnyx.requests) == 1
    assert raised.value.retry_after_s == 30


def test_a_single_error_object_and_a_bare_status_are_parsed():
    single = Telnyx(httpx.Response(404, json={"code": "10005", "title": "Not found"}))
    bare = Telnyx(httpx.Response(403, text="<html>forbidden</html>"))

    with pytest.raises(TelnyxRefused) as one:
        client(single).messages.retrieve("x")
    with pytest.raises(TelnyxRefused) as two:
        client(bare).messages.retrieve("x")
    assert one.value.codes == ["10005"]
    assert two.value.codes == ["403"]


def test_the_client_speaks_to_the_simulator(simulator):
    real = TelnyxClient.build(api_key="KEY", base_url=f"{simulator.url}/v2")
    sent = real.messages.send("/messages", BODY, idempotency_key="sim-1")
    again = real.messages.send("/messages", BODY, idempotency_key="sim-1")

    assert again["id"] == sent["id"]
    assert real.messages.retrieve(sent["id"])["id"] == sent["id"]
    assert len(simulator.state.messages) == 1
    real.close()
