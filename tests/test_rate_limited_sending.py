"""The limiter in the send path, measured where it matters: at the simulator's arrival timeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from producers.producer import Producer
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.simulator.faults import FaultConfig

SENDER = "+13125550001"


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """Most arrivals in any sliding window (the window's start is always an arrival)."""
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best


def arrivals(simulator, sender: str) -> list[float]:
    return [a["t"] for a in list(simulator.state.arrivals) if a["from"] == sender]


@pytest.fixture
def limited(stack):
    """The stack with SENDER limited to 4 msg/s and a short sleep budget, so most sends are deferred."""
    settings = stack.settings.model_copy(update={
        "rate_limits": {**stack.settings.rate_limits, SENDER: 4.0}, "limiter_max_wait_s": 0.2,
        "send_max_retries": 0,  # a deferral that spent a retry would dead-letter the message
    })
    stack.services.settings = settings
    stack.services.limiter = type(stack.services.limiter).from_settings(stack.actors.broker.client, settings)
    return stack


def test_a_limited_sender_is_paced_and_deferrals_spend_no_retry(limited):
    ids = [limited.producer.send(f"+1312555{i:04d}", from_=SENDER, text="paced") for i in range(12)]

    records = [limited.wait_final(i, timeout_s=30) for i in ids]

    assert {r["status"] for r in records} == {statuses.DELIVERED}
    assert {r["attempts"] for r in records} == {1}
    times = arrivals(limited.simulator, SENDER)
    assert max_in_window(times) <= 4 + 1
    # 12 messages at 4/s: the last can go no sooner than 11 slots after the first.
    assert max(times) - min(times) >= 11 / 4 - 0.05


def test_a_telnyx_429_holds_the_sender_back_for_every_worker(limited):
    sim = limited.simulator
    sim.faults.configure(FaultConfig(fail_429=1.0, ratelimit_reset_s=2))
    first = limited.producer.send("+13125550002", from_=SENDER, text="gets a 429")
    limited.wait_for(first, lambda r: bool(r["errors"]))  # the worker has seen the 429 and pushed back
    refused_at = sim.elapsed()
    sim.faults.configure(FaultConfig())
    second = limited.producer.send("+13125550003", from_=SENDER, text="must wait too")

    for message_id in (first, second):
        assert limited.wait_final(message_id, timeout_s=30)["status"] == statuses.DELIVERED
    assert min(arrivals(sim, SENDER)) >= refused_at + 2 - 0.2
    first_record = limited.producer.status(first)
    assert [e["code"] for e in first_record["errors"]] == ["10011"]  # the 429 is on the record...
    assert first_record["attempts"] == 1  # ...but throttling is not a failed attempt: it gave its attempt back


def test_two_worker_processes_respect_one_senders_limit_at_the_simulator(base_settings, simulator, store):
    rate = 5.0
    env = {**os.environ, "REDIS_URL": base_settings.redis_url, "DATABASE_URL": base_settings.database_url,
           "SENDQ_NAMESPACE": base_settings.namespace, "TELNYX_API_KEY": "KEY-test",
           "TELNYX_BASE_URL": f"{simulator.url}/v2", "SENDQ_RATE_LIMITS": json.dumps({SENDER: rate}),
           "SENDQ_LOG_LEVEL": "WARNING"}
    producer = Producer(base_settings, store, Actors(build_broker(base_settings)))
    for i in range(25):
        producer.send(f"+1312555{i:04d}", from_=SENDER, text="two workers")
    producer.actors.broker.close()
    workers = [subprocess.Popen([sys.executable, "-m", "producers.cli", "worker", "--processes", "1", "--threads",
                                 "4"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while len(arrivals(simulator, SENDER)) < 25 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(40)

    times = arrivals(simulator, SENDER)
    assert len(times) == 25
    assert max_in_window(times) <= rate + 1
    assert (len(times) - 1) / (max(times) - min(times)) <= rate * 1.05
    assert httpx.get(f"{simulator.url}/_sim/stats").json()["idempotency_keys"] == 25
