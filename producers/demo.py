"""``sendq demo``: the whole pipeline in one process, on embedded defaults, against the simulator.

It starts the simulator, the webhook receiver and a worker, accepts a small mixed batch through the
producer API, waits until Telnyx's (simulated) webhooks have finalized every message, and prints what
happened to each. Exit 0 only if every message was delivered.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, TextIO

from pydantic import SecretStr

from producers.output import table
from producers.producer import Producer
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.embedded import resolve_redis
from worker.pool import start_worker
from worker.services import Services
from worker.serving import ServerThread, free_port
from worker.settings import Settings
from worker.simulator import Simulator
from worker.simulator import create_app as create_simulator_app
from worker.web import create_app as create_web_app

PROFILE = "4001767e-ce0f-4cae-9d5f-0d5e636e7809"
BATCH: list[dict[str, Any]] = [
    {"to": "+13125550102", "from_": "+13125550001", "text": "Your sendq code is 482913", "priority": "urgent"},
    {"to": "+13125550103", "from_": "24680", "text": "Reply YES to confirm your appointment tomorrow."},
    {"to": "+447700900123", "from_": "sendq", "profile": PROFILE, "text": "Your parcel is on its way."},
    {"to": "+13125550104", "profile": PROFILE, "text": "Spring sale: 20% off this weekend.",
     "priority": "bulk"},
    {"to": "+13125550105", "from_": "+13125550001", "text": "Your receipt",
     "media_urls": ["https://example.com/receipt.png"]},
    {"to": "+13125550106", "from_": "+13125550001", "text": "Grüße aus Köln 🎉 " * 6},
]
WAIT_S = 30.0


def run_demo(settings: Settings, *, out: TextIO) -> int:
    settings, embedded = resolve_redis(settings)
    simulator = Simulator()
    web_port = free_port()
    with ServerThread(create_simulator_app(simulator)) as sim_server:
        settings = settings.model_copy(update={
            "telnyx_base_url": f"{sim_server.url}/v2",
            "telnyx_api_key": SecretStr("KEY-sendq-demo"),
            "telnyx_public_key": simulator.public_key,
            "webhook_url": f"http://127.0.0.1:{web_port}/webhooks/telnyx",
            # A namespace of its own, so a demo never takes jobs from (or gives jobs to) other workers.
            "namespace": f"sendq-demo-{uuid.uuid4().hex[:8]}",
        })
        with ServerThread(create_web_app(settings), port=web_port):
            services = Services.build(settings)
            actors = Actors(build_broker(settings), services)
            worker = start_worker(actors, threads=8)
            try:
                producer = Producer(settings, services.store, actors)
                ids = [producer.send(**message) for message in BATCH]
                records = _wait_final(producer, ids, WAIT_S)
            finally:
                worker.stop()
                actors.broker.close()
                services.close()
    if embedded:
        embedded.close()
    print(_table(records), file=out)
    delivered = sum(r["status"] == statuses.DELIVERED for r in records)
    print(f"\n{delivered}/{len(records)} delivered", file=out)
    return 0 if delivered == len(records) else 1


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
