"""Urgent latency: does a 2FA code on a saturated sender go out in the next slots, not after the backlog?

A bulk backlog (``--backlog`` messages, priority bulk) saturates ``--senders`` senders limited to ``--rate``
msg/s each; meanwhile one urgent message every 200 ms goes to those same senders, round robin. ``sendq worker``
serves bulk and default queues; a second ``sendq worker --queues urgent`` is the Procfile's ``urgent`` process.
Latency = the simulator's ``received_at`` minus the message's ``created_at`` (enqueue to accepted). Reported
with the floor the urgent share sets: an urgent message may have to wait one slot of the share reserved for
it, 1 / (share x rate).

    python bench/urgent_latency.py [--backlog 20000] [--senders 10] [--rate 20] [--urgent 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Processes, SimulatorProcess, fresh_settings

from producers.producer import Producer
from worker.actors import Actors
from worker.broker import build_broker
from worker.store import Store


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--urgent", type=int, default=100, help="urgent messages, one every 200 ms")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    senders = [f"+1312910{i:04d}" for i in range(args.senders)]
    with SimulatorProcess() as sim_url, tempfile.TemporaryDirectory() as tmp:
        settings = fresh_settings(tmp, telnyx_base_url=f"{sim_url}/v2",
                                  rate_limits=dict.fromkeys(senders, args.rate))
        producer = Producer(settings, Store.from_url(settings.database_url).migrate(), Actors(build_broker(settings)))
        for i in range(args.backlog):
            producer.send(f"+1312555{i % 10000:04d}", from_=senders[i % len(senders)], text="sale",
                          priority="bulk")
        workers = ["worker", "--processes", str(args.processes), "--threads", str(args.threads),
                   "--queues", "default,bulk,events"]
        with Processes(settings, workers, ["worker", "--processes", "1", "--threads", "4", "--queues", "urgent"]):
            time.sleep(5)  # the backlog is flowing and every sender is saturated
            urgent = []
            for i in range(args.urgent):
                urgent.append(producer.send("+13125559999", from_=senders[i % len(senders)],
                                            text=f"Your code is {100000 + i}", priority="urgent"))
                time.sleep(0.2)
            deadline = time.monotonic() + 60
            latencies: list[float] = []
            while time.monotonic() < deadline:
                got = {m["idempotency_key"]: m for m in httpx.get(f"{sim_url}/_sim/messages").json()["data"]
                       if m["idempotency_key"] in set(urgent)}
                if len(got) == len(urgent):
                    break
                time.sleep(1)
            records = {i: producer.status(i) for i in urgent}
            latencies = [(datetime.fromisoformat(arrival(sim_url, m["id"])) -
                          datetime.fromisoformat(records[key]["created_at"])).total_seconds()
                         for key, m in got.items()]
            backlog_left = args.backlog - (httpx.get(f"{sim_url}/_sim/stats").json()["messages"] - len(got))
        producer.close()
    floor = 1 / (settings.urgent_share * args.rate)
    figures = {"urgent": len(latencies), "p50_s": round(percentile(latencies, 50), 3),
               "p99_s": round(percentile(latencies, 99), 3), "max_s": round(max(latencies), 3),
               "share_slot_floor_s": round(floor, 3), "bulk_backlog_left": backlog_left}
    print(f"{args.senders} senders at {args.rate}/s, bulk backlog {args.backlog} ({backlog_left} still queued at the "
          f"end): urgent enqueue-to-accepted p50 {figures['p50_s']:.3f} s, p99 {figures['p99_s']:.3f} s, "
          f"max {figures['max_s']:.3f} s; urgent-share slot floor {floor:.3f} s")
    print(json.dumps({"benchmark": "urgent_latency", "date": datetime.now(UTC).date().isoformat(),
                      "machine": f"{platform.machine()} {os.cpu_count()} cpu",
                      "store": settings.database_url.split(":")[0], "senders": args.senders, "rate": args.rate,
                      "backlog": args.backlog, **figures}))


def arrival(sim_url: str, telnyx_id: str) -> str:
    return httpx.get(f"{sim_url}/v2/messages/{telnyx_id}", headers={"Authorization": "Bearer k"}).json()["data"][
        "received_at"]


if __name__ == "__main__":
    main()
