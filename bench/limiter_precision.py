"""Limiter precision: do limited senders run at their rate, never above it, for about one Redis call a send?

``sendq worker`` (4 processes x 8 threads) drains a backlog of ``--seconds`` worth of messages for senders
limited to 1, 5 and 20 msg/s. The simulator (its own process) meters the same senders at the same rates with
a one-second queue, so an overshoot would show as 429 / 40318. Measured at the simulator's arrival timeline:
achieved rate per sender, most arrivals in any sliding 1 s, 429s; and, from the workers' own Prometheus
samples, limiter calls (reservations granted + deferred) per message sent.

    python bench/limiter_precision.py [--seconds 60] [--processes 4] [--threads 8]
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

RATES = {"+13129000001": 1.0, "+13129000005": 5.0, "+13129000020": 20.0}


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times, best, j = sorted(times), 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best


def limiter_calls(metrics_dir: str) -> float:
    """Reservations granted plus deferred, summed over every worker process's samples."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in ("sendq_limiter_wait_seconds_count", "sendq_deferrals_total"):
                total += sample.value
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    sender_flags = [flag for sender, rate in RATES.items() for flag in ("--sender-mps", f"{sender}={rate}")]
    with SimulatorProcess("--queue-horizon", "1", *sender_flags) as sim_url, tempfile.TemporaryDirectory() as tmp:
        metrics_dir = f"{tmp}/metrics"
        os.mkdir(metrics_dir)
        settings = fresh_settings(tmp, telnyx_base_url=f"{sim_url}/v2", rate_limits=RATES)
        producer = Producer(settings, Store.from_url(settings.database_url).migrate(), Actors(build_broker(settings)))
        for sender, rate in RATES.items():
            for i in range(int(rate * args.seconds)):
                producer.send(f"+1312555{i:04d}", from_=sender, text="paced")
        producer.close()
        total = int(sum(RATES.values()) * args.seconds)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        with Processes(settings, ["worker", "--processes", str(args.processes), "--threads", str(args.threads)]):
            deadline = time.monotonic() + args.seconds * 2 + 60
            while httpx.get(f"{sim_url}/_sim/stats").json()["messages"] < total and time.monotonic() < deadline:
                time.sleep(0.5)
        calls = limiter_calls(metrics_dir)
        arrivals = httpx.get(f"{sim_url}/_sim/arrivals").json()["data"]
        metered = httpx.get(f"{sim_url}/_sim/throughput").json()

    results = {}
    for sender, rate in RATES.items():
        times = sorted(a["t"] for a in arrivals if a["from"] == sender)
        achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        results[sender] = {"limit": rate, "sent": len(times), "achieved_per_s": round(achieved, 3),
                           "achieved_ratio": round(achieved / rate, 3), "max_in_1s": max_in_window(times)}
        print(f"{sender} limit {rate:5.1f}/s  sent {len(times):5}  achieved {achieved:7.3f}/s "
              f"({achieved / rate:.3f} x)  max in any 1 s: {max_in_window(times)}")
    sent = sum(r["sent"] for r in results.values())
    refused = sum(metered["refused"].values())
    queued = max((a["departs"] - a["t"] for a in arrivals if a.get("departs") is not None), default=0.0)
    print(f"limiter calls per sent message: {calls / max(sent, 1):.3f}   429s from the simulator: {refused}   "
          f"longest wait in the simulator's queue: {queued:.3f} s")
    print(json.dumps({"benchmark": "limiter_precision", "date": datetime.now(UTC).date().isoformat(),
                      "machine": f"{platform.machine()} {os.cpu_count()} cpu",
                      "store": settings.database_url.split(":")[0], "processes": args.processes,
                      "threads": args.threads, "seconds": args.seconds, "senders": results,
                      "limiter_calls_per_message": round(calls / max(sent, 1), 3), "simulator_429s": refused,
                      "simulator_max_queue_wait_s": round(queued, 3)}))


if __name__ == "__main__":
    main()
