"""``sendq demo``: the whole pipeline in one process, on embedded defaults, against the simulator.

It starts the simulator, the webhook receiver, a worker and the scheduler; accepts a small mixed batch
through the producer API (every sender kind, an urgent 2FA code, a scheduled reminder, a cancelled
message and one to a recipient who texted STOP); waits until Telnyx's (simulated) webhooks have finalized
every message; and prints what happened to each. Then it runs a small campaign (two senders, one bad row)
under a live progress bar. Exit 0 only if every message ended as expected and the campaign completed.

Without ``REDIS_URL`` the demo runs its own embedded Redis in a temporary directory and stops it on the way out
(normal end, error, Ctrl-C or SIGTERM): nothing else joins it, so nothing is left running after the demo.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import SecretStr

from producers.output import table
from producers.producer import Producer
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.embedded import EmbeddedRedis
from worker.pool import start_worker
from worker.scheduler import Scheduler
from worker.services import Services
from worker.serving import ServerThread, free_port
from worker.settings import Settings
from worker.simulator import Simulator, SimulatorConfig
from worker.simulator import create_app as create_simulator_app
from worker.web import create_app as create_web_app

PROFILE = "4001767e-ce0f-4cae-9d5f-0d5e636e7809"
OPTED_OUT = "+13125550109"
#: (what to send, the status it must end in)
BATCH: list[tuple[dict[str, Any], str]] = [
    ({"to": "+13125550102", "from_": "+13125550001", "text": "Your sendq code is 482913", "priority": "urgent"},
     statuses.DELIVERED),
    ({"to": "+13125550103", "from_": "24680", "text": "Reply YES to confirm your appointment tomorrow."},
     statuses.DELIVERED),
    ({"to": "+447700900123", "from_": "sendq", "profile": PROFILE, "text": "Your parcel is on its way."},
     statuses.DELIVERED),
    ({"to": "+13125550104", "profile": PROFILE, "text": "Spring sale: 20% off this weekend.", "priority": "bulk"},
     statuses.DELIVERED),
    ({"to": "+13125550105", "from_": "+13125550001", "text": "Your receipt",
      "media_urls": ["https://example.com/receipt.png"]}, statuses.DELIVERED),
    ({"to": "+13125550106", "from_": "+13125550001", "text": "Grüße aus Köln 🎉 " * 6}, statuses.DELIVERED),
    ({"to": ["+13125550107", "+13125550108"], "from_": "+13125550001", "kind": "group_mms",
      "text": "Dinner at 8?"}, statuses.DELIVERED),
    ({"to": OPTED_OUT, "from_": "+13125550001", "text": "We miss you!"}, statuses.SUPPRESSED),
]
#: The numbers the demo's simulated account owns beside its seeded ones (+13125550001 and the pool): the short
#: code of the batch and the campaign's two senders. Telnyx refuses any other sender, and so does the simulator.
OWNED = ("24680", "+13125550003", "+13125550004")
SCHEDULED_IN_S = 3
WAIT_S = 30.0


@contextmanager
def _running(settings: Settings, simulator: Simulator) -> Iterator[Producer]:
    """Web receiver, worker and scheduler for ``settings``; yields a producer on the same store."""
    web_port = int(settings.webhook_url.rsplit(":", 1)[1].split("/")[0])  # type: ignore[union-attr]
    with ServerThread(create_web_app(settings), port=web_port):
        broker = build_broker(settings)
        services = Services.build(settings, broker=broker)
        services.store.migrate()  # a fresh ./sendq.db has no schema yet; every process migrates at start
        actors = Actors(broker, services)
        worker = start_worker(actors, threads=8)
        stop = threading.Event()
        scheduler = threading.Thread(target=Scheduler(settings, services.store, actors).run, args=(stop,))
        scheduler.start()
        try:
            yield Producer(settings, services.store, actors)
        finally:
            stop.set()
            scheduler.join()
            worker.stop()
            actors.broker.close()
            services.close()


@contextmanager
def _redis(settings: Settings) -> Iterator[Settings]:
    """``settings`` with a Redis: ``REDIS_URL``, or an embedded server of the demo's own, stopped at the end.

    Not the shared per-directory server of :func:`worker.embedded.resolve_redis`: that one stops only once no
    client is connected, and the demo's threads may still hold connections when it returns, which left the
    server running after ``sendq demo`` exited.
    """
    if settings.redis_url:
        yield settings
        return
    with tempfile.TemporaryDirectory(prefix="sendq-demo-") as folder, _terminated_as_interrupt():
        server = EmbeddedRedis(str(Path(folder) / "redis.db"))
        try:
            yield settings.model_copy(update={"redis_url": server.url})
        finally:
            server.close(force=True)


@contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (so ``finally`` blocks stop the server) while the demo runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(settings: Settings, *, out: TextIO) -> int:
    with _redis(settings) as settings:
        return _run(settings, out)


def _run(settings: Settings, out: TextIO) -> int:
    simulator = Simulator(SimulatorConfig(numbers=OWNED))
    with ServerThread(create_simulator_app(simulator)) as sim_server:
        settings = settings.model_copy(update={
            "telnyx_base_url": f"{sim_server.url}/v2",
            "telnyx_api_key": SecretStr("KEY-sendq-demo"),
            "telnyx_public_key": simulator.public_key,
            "webhook_url": f"http://127.0.0.1:{free_port()}/webhooks/telnyx",
            "scheduler_interval_s": 0.2,
            # A namespace of its own, so a demo never takes jobs from (or gives jobs to) other workers.
            "namespace": f"sendq-demo-{uuid.uuid4().hex[:8]}",
        })
        # The recipient texts STOP first: Telnyx then refuses sends to them (40300) and sendq records it.
        httpx.post(f"{sim_server.url}/_sim/inbound", json={"from": OPTED_OUT, "to": "+13125550001", "text": "STOP"})
        with _running(settings, simulator) as producer:
            expected = {producer.send(**message): status for message, status in BATCH}
            later = datetime.now(UTC) + timedelta(seconds=SCHEDULED_IN_S)
            expected[producer.send("+13125550110", from_="+13125550001", text="Reminder: meeting at 9:00",
                                   send_at=later)] = statuses.DELIVERED
            called_off = producer.send("+13125550111", from_="+13125550001", text="Campaign we called off",
                                       send_at=later + timedelta(hours=1))
            producer.cancel(called_off)
            expected[called_off] = statuses.CANCELLED
            records = _wait_final(producer, list(expected), WAIT_S)
            print(_table(records), file=out)
            right = sum(r["status"] == expected[r["id"]] for r in records)
            print(f"\n{right}/{len(records)} ended as expected "
                  f"({sum(r['status'] == statuses.DELIVERED for r in records)} delivered, 1 scheduled "
                  f"{SCHEDULED_IN_S} s ahead, 1 cancelled, 1 suppressed by an opt-out)\n", file=out)
            campaign_ok = _campaign(producer, out)
    return 0 if right == len(records) and campaign_ok else 1


def _campaign(producer: Producer, out: TextIO) -> bool:
    """A 40-row campaign over two senders, one row without a name, watched to the end."""
    from producers.campaign_cli import watch

    rows = [{"phone": f"+1312555{2100 + i}", "first_name": "" if i == 7 else f"Guest {i}"} for i in range(40)]
    created = producer.campaign(rows, template="Hi {first_name}, doors open at 7.", name="demo campaign",
                                from_=["+13125550003", "+13125550004"])
    print(f"campaign {created['id'][:8]}: {created['recipients']} recipients, {created['rows_invalid']} row "
          f"error (no first_name)", file=out)
    record = watch(producer, created["id"], 0.2, out=out, timeout_s=WAIT_S)
    status: str = record["status"]
    delivered: int = record["messages"].get(statuses.DELIVERED, 0)
    recipients: int = created["recipients"]
    print(f"campaign {status}: {delivered} delivered", file=out)
    return status == "completed" and delivered == recipients == 39


def _wait_final(producer: Producer, ids: list[str], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        records = [producer.status(i) for i in ids]
        if all(statuses.is_final(r["status"]) for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _table(records: list[dict[str, Any]]) -> str:
    return table(("ID", "KIND", "PRIORITY", "TO", "STATUS", "PARTS", "HISTORY"), [
        (r["id"][:8], r["kind"], r["priority"], r["to"], r["status"], r["parts"],
         " > ".join(h["status"] for h in r["history"]))
        for r in records
    ])
