"""Overhead: sendq's throughput next to a bare dramatiq actor doing only the same HTTP POST.

20,000 messages over 500 senders whose limits do not bind, against ``sendq simulator`` (its own process, no
added latency, no webhooks). Both sides get the same worker processes and threads and the same Redis, and
are measured in the same run: messages per second from the workers' start until the simulator has every
message, and the workers' CPU seconds per 1,000 messages.

    python bench/overhead.py [--messages 20000] [--senders 500] [--processes 2] [--threads 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, UNBOUND_LIMITS, Processes, SimulatorProcess, environment, fresh_settings

from producers.producer import Producer
from worker.actors import Actors
from worker.broker import build_broker
from worker.store import Store


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        for each in [proc, *proc.children(recursive=True)]:
            try:
                times = each.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    return total


def measure(sim_url: str, expected: int, procs: list[subprocess.Popen], timeout_s: float) -> dict:
    """Wait until the simulator holds ``expected`` messages; rate and worker CPU from the first arrival on."""
    watched = [psutil.Process(p.pid) for p in procs]
    start_count = httpx.get(f"{sim_url}/_sim/stats").json()["messages"]
    cpu0, t0 = cpu_seconds(watched), time.perf_counter()
    deadline = t0 + timeout_s
    count = start_count
    while count < expected and time.perf_counter() < deadline:
        time.sleep(0.2)
        count = httpx.get(f"{sim_url}/_sim/stats").json()["messages"]
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(watched) - cpu0
    sent = count - start_count
    return {"sent": sent, "seconds": round(elapsed, 2), "per_s": round(sent / elapsed, 1),
            "cpu_s_per_1000": round(cpu / max(sent, 1) * 1000, 2)}


def run_sendq(settings, sim_url: str, args: argparse.Namespace) -> dict:
    store = Store.from_url(settings.database_url).migrate()
    producer = Producer(settings, store, Actors(build_broker(settings)))
    senders = [f"+1312700{i:04d}" for i in range(args.senders)]
    for i in range(args.messages):
        producer.send(f"+1312555{i % 10000:04d}", from_=senders[i % len(senders)], text="overhead")
    producer.close()
    base = httpx.get(f"{sim_url}/_sim/stats").json()["messages"]
    with Processes(settings, ["worker", "--processes", str(args.processes), "--threads", str(args.threads)]) as p:
        return measure(sim_url, base + args.messages, p.running, 600)


def run_bare(settings, sim_url: str, args: argparse.Namespace) -> dict:
    env = {**environment(settings), "BARE_NAMESPACE": f"bare-{uuid.uuid4().hex[:8]}",
           "BARE_URL": f"{sim_url}/v2/messages", "PYTHONPATH": str(ROOT)}
    os.environ.update({k: env[k] for k in ("BARE_NAMESPACE", "BARE_URL")})
    os.environ["REDIS_URL"] = settings.redis_url or ""
    import bare_actor  # configured by the environment, as dramatiq's CLI would load it

    senders = [f"+1312800{i:04d}" for i in range(args.senders)]
    for i in range(args.messages):
        bare_actor.post.send(uuid.uuid4().hex, {"to": f"+1312555{i % 10000:04d}",
                                                "from": senders[i % len(senders)], "text": "overhead"})
    base = httpx.get(f"{sim_url}/_sim/stats").json()["messages"]
    proc = subprocess.Popen([sys.executable, "-m", "dramatiq", "bench.bare_actor", "--processes",
                             str(args.processes), "--threads", str(args.threads)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return measure(sim_url, base + args.messages, [proc], 600)
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--senders", type=int, default=500)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    with SimulatorProcess() as sim_url, tempfile.TemporaryDirectory() as tmp:
        settings = fresh_settings(tmp, telnyx_base_url=f"{sim_url}/v2", **UNBOUND_LIMITS)
        results = {"bare": run_bare(settings, sim_url, args), "sendq": run_sendq(settings, sim_url, args)}
    ratio = results["sendq"]["per_s"] / results["bare"]["per_s"]
    for name, figures in results.items():
        print(f"{name:6} {figures['sent']:6} msgs in {figures['seconds']:6.1f} s = {figures['per_s']:7.1f}/s  "
              f"CPU {figures['cpu_s_per_1000']:.2f} s per 1,000")
    print(f"ratio sendq/bare = {ratio:.2f}")
    print(json.dumps({"benchmark": "overhead", "date": datetime.now(UTC).date().isoformat(),
                      "machine": f"{platform.machine()} {os.cpu_count()} cpu",
                      "store": settings.database_url.split(":")[0],
                      "processes": args.processes, "threads": args.threads, "ratio": round(ratio, 2), **results}))


if __name__ == "__main__":
    main()
