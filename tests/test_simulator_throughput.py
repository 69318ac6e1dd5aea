"""The simulator's per-sender throughput: Telnyx-style FIFO queues, measured on its computed schedule."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import httpx
import pytest

from producers.cli import build_parser, main
from worker.errors import TelnyxUnavailable
from worker.serving import ServerThread
from worker.simulator import Simulator, SimulatorConfig, create_app
from worker.simulator.app import POOL_NUMBERS
from worker.simulator.inventory import MAIN_NUMBER
from worker.simulator.throughput import Calendar, Throughput, ThroughputConfig, max_in_window, sender_type
from worker.telnyx import TelnyxClient

SENDER = "+13125550001"
TO = "+13125550002"
AUTH = {"authorization": "Bearer KEY"}
#: A GSM-7 text of exactly ``n`` parts (153 characters per part once concatenated).
PARTS = {1: "hi", 2: "x" * 200, 3: "x" * 400}


@contextmanager
def serve(sent_delay_s: float = 0.01, **throughput: object) -> Iterator[Simulator]:
    # any_sender: these tests meter many made-up senders, none of them the account's.
    sim = Simulator(SimulatorConfig(sent_delay_s=sent_delay_s, final_delay_s=0.01, any_sender=True,
                                    throughput=ThroughputConfig(**throughput)))
    with ServerThread(create_app(sim)) as server:
        sim.url = server.url
        yield sim


def send(http: httpx.Client, sim: Simulator, *, sender: str = SENDER, parts: int = 1,
         **extra: object) -> httpx.Response:
    body = {"from": sender, "to": TO, "text": PARTS[parts], **extra}
    return http.post(f"{sim.url}/v2/messages", json=body, headers=AUTH)


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def test_by_default_nothing_waits(simulator):
    data = httpx.post(f"{simulator.url}/v2/messages", json={"from": SENDER, "to": TO, "text": "hi"},
                      headers=AUTH).json()["data"]
    arrival = httpx.get(f"{simulator.url}/_sim/arrivals").json()["data"][0]

    assert data["wait_seconds"] == 0.0
    assert arrival["departs"] == arrival["t"]


def test_each_queued_message_waits_its_predecessors_cost_over_the_rate():
    with serve(sender_mps={SENDER: 1.0}) as sim, httpx.Client() as http:
        answers = [send(http, sim, parts=p).json()["data"] for p in (1, 2, 3, 1)]
        timeline = sim.throughput.timeline

        departs = [entry["departs"] for entry in timeline]
        assert [b - a for a, b in itertools.pairwise(departs)] == pytest.approx([1.0, 2.0, 3.0])
        assert [a["wait_seconds"] for a in answers] == \
            pytest.approx([e["departs"] - e["t"] for e in timeline], abs=1e-5)
        assert answers[0]["wait_seconds"] == pytest.approx(0.0, abs=1e-5)
        assert answers[3]["wait_seconds"] > answers[2]["wait_seconds"] > answers[1]["wait_seconds"] > 0


def test_valid_until_is_the_queue_horizon_after_receipt():
    with serve(sender_mps={SENDER: 1.0}, queue_horizon_s=60) as sim, httpx.Client() as http:
        answers = [send(http, sim).json()["data"] for _ in range(3)]

    for answer in answers:
        received, valid_until = when(answer["received_at"]), when(answer["valid_until"])
        assert valid_until - received == timedelta(seconds=60)
        assert valid_until > received + timedelta(seconds=answer["wait_seconds"])


def test_a_full_queue_answers_40318_and_accepts_nothing():
    with serve(sender_mps={SENDER: 1.0}, queue_horizon_s=2.5) as sim, httpx.Client() as http:
        accepted = [send(http, sim) for _ in range(3)]
        full = send(http, sim)
        telnyx = TelnyxClient.build(api_key="KEY", base_url=f"{sim.url}/v2", attempts=1)
        with pytest.raises(TelnyxUnavailable) as raised:
            telnyx.messages.send("/messages", {"from": SENDER, "to": TO, "text": "hi"}, idempotency_key="k-full")
        telnyx.close()

        assert [a.status_code for a in accepted] == [200, 200, 200]
        assert full.status_code == 429
        assert full.json()["errors"][0]["code"] == "40318"
        assert (full.headers["x-ratelimit-limit"], full.headers["x-ratelimit-remaining"]) == ("1", "0")
        assert int(full.headers["x-ratelimit-reset"]) >= 1
        assert (raised.value.status, raised.value.codes) == (429, ["40318"])
        assert raised.value.retry_after_s is not None and raised.value.retry_after_s >= 1
        assert len(sim.state.messages) == len(sim.throughput.timeline) == 3


def test_message_sent_follows_the_queue():
    with serve(sender_mps={SENDER: 5.0}) as sim, httpx.Client() as http:
        answers = [send(http, sim).json()["data"] for _ in range(4)]
        deadline = time.monotonic() + 20
        while not all(sim.state.get(a["id"]).payload["sent_at"] for a in answers):
            assert time.monotonic() < deadline, "message.sent never came"
            time.sleep(0.05)
        payloads = [sim.state.get(a["id"]).payload for a in answers]

    slack = timedelta(milliseconds=5)  # both stamps are rounded to the millisecond
    for answer, payload in zip(answers, payloads, strict=True):
        assert when(payload["sent_at"]) + slack >= when(answer["received_at"]) + timedelta(
            seconds=answer["wait_seconds"])
    assert [when(p["sent_at"]) for p in payloads] == sorted(when(p["sent_at"]) for p in payloads)
    assert all("message.sent" in [e["data"]["event_type"] for e in sim.state.get(a["id"]).events] for a in answers)


def test_the_account_rate_applies_across_senders_and_streams_apart():
    senders = ["+13125550011", "+13125550012", "+13125550013", "+13125550014"]
    with serve(account_sms_mps=1.0, account_mms_mps=100.0) as sim, httpx.Client() as http:
        for sender in senders:
            send(http, sim, sender=sender)
        mms = send(http, sim, sender=senders[0], media_urls=["https://example.com/a.png"]).json()["data"]
        sms_departs = [e["departs"] for e in sim.throughput.timeline if e["type"] == "sms"]

    assert [b - a for a, b in itertools.pairwise(sms_departs)] == pytest.approx([1.0] * 3)
    assert mms["wait_seconds"] == pytest.approx(0.0, abs=1e-5)


def test_a_slow_senders_backlog_does_not_hold_up_other_senders():
    slow, fast = "+13125550021", "+13125550022"
    with serve(sender_mps={slow: 0.1}, account_sms_mps=10.0) as sim, httpx.Client() as http:
        slow_waits = [send(http, sim, sender=slow).json()["data"]["wait_seconds"] for _ in range(3)]
        fast_wait = send(http, sim, sender=fast).json()["data"]["wait_seconds"]

    assert slow_waits[2] > 15
    # At most the account slot the slow sender's first message holds (1/10 s), not its 20 s backlog.
    assert fast_wait <= 0.1 + 1e-6


def test_sender_and_account_rates_hold_together_on_any_schedule():
    rng = random.Random(11)
    senders = {"+13125550031": 0.5, "+13125550032": 2.0, "+13125550033": None, "+13125550034": None}
    throughput = Throughput(ThroughputConfig(sender_mps={k: v for k, v in senders.items() if v},
                                             account_sms_mps=3.0))
    now = 0.0
    for n in range(300):
        now += rng.expovariate(4.0)
        sender = rng.choice(list(senders))
        payload = {"id": str(n), "from": {"phone_number": sender}, "type": "SMS", "parts": rng.choice((1, 1, 2)),
                   "received_at": "2026-01-01T00:00:00+00:00"}
        throughput.admit(payload, now)

    timeline = throughput.timeline
    assert all(e["departs"] >= e["t"] for e in timeline)
    assert max_in_window([(e["departs"], e["cost"]) for e in timeline]) <= 3 + 2
    for sender, rate in senders.items():
        mine = [e for e in timeline if e["from"] == sender]
        assert [e["departs"] for e in mine] == sorted(e["departs"] for e in mine)  # FIFO per sender
        if rate:
            assert all(b["departs"] - a["departs"] >= a["cost"] / rate - 1e-9 for a, b in itertools.pairwise(mine))


def test_the_departure_timeline_keeps_to_the_rate_in_every_second():
    with serve(sender_mps={SENDER: 2.0}, mps={"long_code": 50.0}) as sim, httpx.Client() as http:
        for _ in range(30):
            send(http, sim)
        other = send(http, sim, sender="+13125550099").json()["data"]
        summary = httpx.get(f"{sim.url}/_sim/throughput").json()
        only = httpx.get(f"{sim.url}/_sim/throughput", params={"from": SENDER}).json()
        arrivals = httpx.get(f"{sim.url}/_sim/arrivals", params={"from": SENDER}).json()["data"]

    mine = summary["senders"][SENDER]
    assert (mine["messages"], mine["mps"], mine["type"]) == (30, 2.0, "long_code")
    assert mine["max_in_1s"] <= 2 + 1
    assert mine["rate"] == pytest.approx(2.0)
    assert summary["senders"]["+13125550099"]["mps"] == 50.0 and other["wait_seconds"] < 0.5
    assert list(only["senders"]) == [SENDER]
    assert max_in_window([(a["departs"], 1) for a in arrivals]) <= 2 + 1
    assert mine["last_departs"] - mine["first_departs"] == pytest.approx(29 / 2.0)


def test_a_number_pool_is_metered_per_pool_number_chosen():
    with serve(mps={"long_code": 1.0}) as sim, httpx.Client() as http:
        for n in range(9):
            answer = http.post(f"{sim.url}/v2/messages/number_pool", headers=AUTH, json={
                "messaging_profile_id": sim.config.profile_id, "to": f"+1312555{n:04d}", "text": "hi"})
            assert answer.status_code == 200
        by_sender: dict[str, list[float]] = {}
        for entry in sim.throughput.timeline:
            by_sender.setdefault(entry["from"], []).append(entry["departs"])

    # The pool is every long code on the profile (Telnyx's rule): the seeded pool numbers and the main number.
    assert set(by_sender) <= {*POOL_NUMBERS, MAIN_NUMBER}
    for departs in by_sender.values():
        assert [b - a for a, b in itertools.pairwise(departs)] == pytest.approx([1.0] * (len(departs) - 1))


def test_the_rates_change_at_runtime(simulator):
    url = f"{simulator.url}/_sim/throughput"

    assert httpx.post(url, json={"sender_mps": {SENDER: 1.0}}).json()["config"]["sender_mps"] == {SENDER: 1.0}
    with httpx.Client() as http:
        waits = [send(http, simulator).json()["data"]["wait_seconds"] for _ in range(2)]
    assert waits[1] > 0.5
    assert httpx.post(url, json={"mps": {"landline": 1}}).status_code == 400


def test_sender_types():
    assert [sender_type(s) for s in ("+13125550001", "+18885550001", "12345", "ACME")] == \
        ["long_code", "toll_free", "short_code", "alphanumeric"]


@pytest.mark.parametrize("flags", [["--mps", "landline=1"], ["--fail-5xx", "2"],
                                   ["--fail-5xx", "0.6", "--fail-429", "0.6"]])
def test_the_cli_refuses_impossible_simulator_flags(flags, capsys):
    assert main(["simulator", "--port", "1", *flags]) == 2
    assert "sendq: error" in capsys.readouterr().err


def test_the_cli_reads_rates_as_name_equals_mps():
    args = build_parser().parse_args(["simulator", "--mps", "long_code=0.5", "--sender-mps", "+13125550001=3"])

    assert (args.mps, args.sender_mps) == ([("long_code", 0.5)], [("+13125550001", 3.0)])
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["simulator", "--mps", "long_code=0"])
    assert exited.value.code == 2


def test_the_account_calendar_takes_the_first_gap_wide_enough():
    calendar = Calendar()
    for start, end in ((0.0, 1.0), (1.0, 2.0), (3.0, 4.0)):
        calendar.book(start, end)

    assert (calendar.starts, calendar.ends) == ([0.0, 3.0], [2.0, 4.0])  # touching slots merge
    assert calendar.first_fit(0.5, 1.0) == 2.0
    assert calendar.first_fit(0.5, 1.5) == 4.0
    calendar.forget_before(2.5)
    assert calendar.starts == [3.0]
