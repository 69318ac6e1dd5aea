"""Schedule precision: how late do scheduled messages reach Telnyx?

Runs the real processes (``sendq worker`` and ``sendq scheduler`` as subprocesses) against an in-process
simulator with no rate limits, and measures lateness = the simulator's ``received_at`` minus ``send_at``:

- burst: 2,000 messages over 200 senders, all due within the same second;
- trickle: 200 messages due one every 50 ms, where throughput does not hold anything back.

Uses ``REDIS_URL`` / ``DATABASE_URL`` when set (a fresh schema/namespace each run), else an embedded Redis
and a temporary SQLite file. Prints one line per scenario and a JSON summary.

    python bench/schedule_precision.py [--burst 2000] [--senders 200] [--processes 2] [--threads 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import UNBOUND_LIMITS, Processes, fresh_settings

from producers.producer import Producer
from worker.actors import Actors
from worker.broker import build_broker
from worker.serving import ServerThread
from worker.simulator import Simulator, SimulatorConfig, create_app
from worker.store import Store


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run(producer: Producer, simulator: Simulator, due: list[tuple[str, datetime]], timeout_s: float) -> dict:
    """Schedule every (sender, send_at) in ``due``; wait until the simulator has them all; lateness stats."""
    ids = {producer.send("+13125550002", from_=sender, text="scheduled", send_at=at): at for sender, at in due}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        arrived = {m.idempotency_key: m for m in list(simulator.state.messages.values())
                   if m.idempotency_key in ids}
        if len(arrived) == len(ids):
            break
        time.sleep(0.2)
    late = [(datetime.fromisoformat(m.payload["received_at"]) - ids[key]).total_seconds()
            for key, m in arrived.items()]
    early = sum(1 for s in late if s < 0)
    return {"messages": len(ids), "arrived": len(late), "early": early,
            "p50_s": round(percentile(late, 50), 3), "p99_s": round(percentile(late, 99), 3),
            "max_s": round(max(late), 3), "mean_s": round(statistics.fmean(late), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=200)
    parser.add_argument("--trickle", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    # No webhooks needed (lateness is at arrival); any_sender: the senders are made up.
    simulator = Simulator(SimulatorConfig(sent_delay_s=3600, any_sender=True))
    with tempfile.TemporaryDirectory() as tmp, ServerThread(create_app(simulator)) as sim:
        settings = fresh_settings(tmp, telnyx_base_url=f"{sim.url}/v2", **UNBOUND_LIMITS)
        store = Store.from_url(settings.database_url).migrate()
        producer = Producer(settings, store, Actors(build_broker(settings)))
        senders = [f"+1312600{i:04d}" for i in range(args.senders)]
        with Processes(settings, ["worker", "--processes", str(args.processes), "--threads", str(args.threads)],
                       ["scheduler"]):
            time.sleep(3)  # let the workers start
            start = datetime.now(UTC) + timedelta(seconds=max(10, args.burst / 200))
            burst = [(senders[i % len(senders)], start + timedelta(seconds=i / args.burst))
                     for i in range(args.burst)]
            results = {"burst": run(producer, simulator, burst, 120)}
            start = datetime.now(UTC) + timedelta(seconds=5)
            trickle = [(senders[i % len(senders)], start + timedelta(seconds=i * 0.05)) for i in range(args.trickle)]
            results["trickle"] = run(producer, simulator, trickle, 60)
        producer.close()
    for name, figures in results.items():
        print(f"{name:8} {figures['messages']:5} msgs  p50 {figures['p50_s']:.3f} s  p99 {figures['p99_s']:.3f} s  "
              f"max {figures['max_s']:.3f} s  early {figures['early']}")
    print(json.dumps({"benchmark": "schedule_precision", "date": datetime.now(UTC).date().isoformat(),
                      "machine": f"{platform.machine()} {os.cpu_count()} cpu",
                      "store": settings.database_url.split(":")[0],
                      "processes": args.processes, "threads": args.threads, **results}))


if __name__ == "__main__":
    uuid.uuid4()
    main()
