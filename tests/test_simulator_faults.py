"""The simulator's fault injection, seen through sendq's client: what each fault means, reproducibly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from starlette.datastructures import Headers

from worker.errors import TelnyxUnavailable
from worker.serving import ServerThread
from worker.simulator import Simulator, SimulatorConfig, create_app
from worker.simulator.faults import FaultConfig, Faults
from worker.telnyx import TelnyxClient, Timeouts

BODY = {"to": "+13125550002", "from": "+13125550001", "text": "hi"}
AUTH = {"authorization": "Bearer KEY"}


@contextmanager
def serve(**faults: object) -> Iterator[Simulator]:
    sim = Simulator(SimulatorConfig(sent_delay_s=0.01, final_delay_s=0.01, faults=FaultConfig(**faults)))
    with ServerThread(create_app(sim)) as server:
        sim.url = server.url
        yield sim


def client(url: str, *, fault: str | None = None, read_timeout_s: float = 10.0) -> TelnyxClient:
    """sendq's client with one attempt; ``fault`` asks the simulator for it on every request."""
    http = httpx.Client(timeout=Timeouts(total_s=read_timeout_s).to_httpx(),
                        headers={"x-sim-fault": fault} if fault else {})
    return TelnyxClient(http, api_key="KEY", base_url=f"{url}/v2", attempts=1)


def injected(sim: Simulator) -> dict[str, int]:
    return httpx.get(f"{sim.url}/_sim/faults").json()["injected"]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_is_unavailable_and_nothing_was_accepted(simulator, status):
    telnyx = client(simulator.url, fault=str(status))

    with pytest.raises(TelnyxUnavailable) as raised:
        telnyx.messages.send("/messages", BODY, idempotency_key="k-5xx")
    assert raised.value.status == status
    assert raised.value.codes == ["10007"]
    assert raised.value.ambiguous is False
    assert simulator.state.messages == {}
    assert injected(simulator)[str(status)] == 1
    telnyx.close()


def test_a_429_carries_rate_limit_headers_and_nothing_was_accepted():
    with serve(ratelimit_limit=7, ratelimit_reset_s=3) as sim:
        telnyx = client(sim.url, fault="429")
        with pytest.raises(TelnyxUnavailable) as raised:
            telnyx.messages.send("/messages", BODY, idempotency_key="k-429")
        raw = httpx.post(f"{sim.url}/v2/messages", json=BODY, headers={**AUTH, "x-sim-fault": "429"})
        telnyx.close()

        assert (raised.value.status, raised.value.codes, raised.value.retry_after_s) == (429, ["10011"], 3)
        assert raised.value.ambiguous is False
        assert raw.json()["errors"][0]["title"] == "Too many requests"
        assert (raw.headers["x-ratelimit-limit"], raw.headers["x-ratelimit-remaining"],
                raw.headers["x-ratelimit-reset"]) == ("7", "0", "3")
        assert sim.state.messages == {}


def test_a_reset_is_ambiguous_yet_the_message_was_accepted(simulator):
    dropping = client(simulator.url, fault="reset")

    with pytest.raises(TelnyxUnavailable) as raised:
        dropping.messages.send("/messages", BODY, idempotency_key="k-reset")
    assert raised.value.ambiguous is True
    assert raised.value.status is None
    # uvicorn closes the connection part-way through the body: httpx sees a short read.
    assert isinstance(raised.value.__cause__, httpx.RemoteProtocolError)
    assert len(simulator.state.messages) == 1
    assert injected(simulator)["reset"] == 1

    # The retry with the same key is answered from the first, so the message is still sent once.
    healthy = client(simulator.url)
    again = healthy.messages.send("/messages", BODY, idempotency_key="k-reset")
    assert list(simulator.state.messages) == [again["id"]]
    dropping.close()
    healthy.close()


def test_a_raw_reset_is_a_transport_error_after_a_partial_body(simulator):
    with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|without sending complete"):
        httpx.post(f"{simulator.url}/v2/messages", json=BODY, headers={**AUTH, "x-sim-fault": "reset"})
    # The connection is gone, not the server: the next request is answered.
    assert httpx.post(f"{simulator.url}/v2/messages", json=BODY, headers=AUTH).status_code == 200


def test_a_timeout_is_ambiguous_yet_the_message_was_accepted():
    with serve(hang_s=30.0) as sim:
        telnyx = client(sim.url, fault="timeout", read_timeout_s=0.5)
        with pytest.raises(TelnyxUnavailable) as raised:
            telnyx.messages.send("/messages", BODY, idempotency_key="k-timeout")
        telnyx.close()

        assert raised.value.ambiguous is True
        assert isinstance(raised.value.__cause__, httpx.ReadTimeout)
        assert len(sim.state.messages) == 1
        assert injected(sim)["timeout"] == 1


def test_a_hang_shorter_than_the_read_timeout_answers_late():
    with serve(hang_s=0.3) as sim:
        telnyx = client(sim.url, fault="timeout")
        started = time.monotonic()
        sent = telnyx.messages.send("/messages", BODY)
        took = time.monotonic() - started
        telnyx.close()

        assert took >= 0.3
        assert list(sim.state.messages) == [sent["id"]]


def statuses(seed: int, requests: int = 40) -> list[int]:
    with serve(fail_5xx=0.2, fail_429=0.2, seed=seed) as sim, httpx.Client(headers=AUTH) as http:
        return [http.post(f"{sim.url}/v2/messages", json=BODY).status_code for _ in range(requests)]


def test_the_same_seed_gives_the_same_faults_in_the_same_order():
    first, second, other = statuses(7), statuses(7), statuses(8)

    assert first == second
    assert first != other
    assert {200, 429} <= set(first) and set(first) & {500, 502, 503}


def test_counts_match_what_was_injected():
    with serve(fail_5xx=0.3, fail_429=0.3, seed=3) as sim, httpx.Client(headers=AUTH) as http:
        seen = [http.post(f"{sim.url}/v2/messages", json=BODY).status_code for _ in range(30)]
        summary = httpx.get(f"{sim.url}/_sim/faults").json()

        assert summary["requests"] == 30
        assert {k: v for k, v in summary["injected"].items() if v} == \
            {str(s): seen.count(s) for s in set(seen) - {200}}
        assert len(sim.state.messages) == seen.count(200)


def test_a_request_header_overrides_the_configuration():
    with serve(fail_5xx=1.0) as sim, httpx.Client(headers=AUTH) as http:
        url = f"{sim.url}/v2/messages"
        assert http.post(url, json=BODY).status_code in (500, 502, 503)
        assert http.post(url, json=BODY, headers={"x-sim-fault": "none"}).status_code == 200
        assert http.post(url, json=BODY, headers={"x-sim-fault": "429"}).status_code == 429
        bad = http.post(url, json=BODY, headers={"x-sim-fault": "teapot"})
        assert (bad.status_code, bad.json()["errors"][0]["code"]) == (400, "10015")


def test_control_routes_are_never_faulted(simulator):
    httpx.post(f"{simulator.url}/_sim/faults", json={"fail_5xx": 1.0})

    assert httpx.get(f"{simulator.url}/_sim/messages").status_code == 200
    assert httpx.post(f"{simulator.url}/v2/messages", json=BODY, headers=AUTH).status_code >= 500


def test_the_configuration_changes_at_runtime(simulator):
    url = f"{simulator.url}/_sim/faults"

    changed = httpx.post(url, json={"fail_429": 1.0, "ratelimit_reset_s": 9})
    assert changed.json()["config"]["fail_429"] == 1.0
    limited = httpx.post(f"{simulator.url}/v2/messages", json=BODY, headers=AUTH)
    assert (limited.status_code, limited.headers["x-ratelimit-reset"]) == (429, "9")
    assert httpx.post(url, json={"fail_5xx": 2}).status_code == 400
    assert httpx.post(url, json={"bogus": 1}).status_code == 400
    httpx.post(url, json={})
    assert httpx.post(f"{simulator.url}/v2/messages", json=BODY, headers=AUTH).status_code == 200


def test_latency_delays_the_answer():
    with serve(latency_ms=250) as sim, httpx.Client(headers=AUTH) as http:
        started = time.monotonic()
        assert http.post(f"{sim.url}/v2/messages", json=BODY).status_code == 200
        configured = time.monotonic() - started
        started = time.monotonic()
        assert http.post(f"{sim.url}/v2/messages", json=BODY, headers={"x-sim-latency-ms": "400"}).status_code == 200
        overridden = time.monotonic() - started

    assert configured >= 0.25
    assert overridden >= 0.4


def test_latency_draws_are_seeded_and_bounded():
    def draws(seed: int) -> list[float]:
        faults = Faults(FaultConfig(latency_ms=100, latency_jitter_ms=50, seed=seed))
        return [faults.decide(Headers()).latency_s for _ in range(20)]

    assert draws(1) == draws(1) != draws(2)
    assert all(0.1 <= d <= 0.15 for d in draws(1))
    lognormal = Faults(FaultConfig(latency_ms=100, latency_sigma=0.5, seed=1))
    spread = {round(lognormal.decide(Headers()).latency_s, 6) for _ in range(20)}
    assert len(spread) == 20 and all(d > 0 for d in spread)


def test_turning_latency_on_does_not_change_which_requests_fail():
    def faults(**latency: float) -> list[str | None]:
        decider = Faults(FaultConfig(fail_5xx=0.3, fail_reset=0.2, seed=5, **latency))
        return [decider.decide(Headers()).fault for _ in range(50)]

    assert faults() == faults(latency_ms=10, latency_jitter_ms=5, latency_sigma=0.3)


@pytest.mark.parametrize("bad", [{"fail_5xx": -0.1}, {"fail_5xx": 0.6, "fail_reset": 0.6}, {"hang_s": -1}])
def test_an_impossible_configuration_is_refused(bad):
    with pytest.raises(ValueError):
        FaultConfig(**bad)
