"""A full sendq run for the operations tests: ``sendq simulator``, ``web``, ``worker`` and ``scheduler`` as real
processes, JSON logs at DEBUG, one multiprocess metrics directory, a recognisable API key, and a mixed batch that
touches every metric (deliveries, faults, retries, deferrals, a scheduled message, an opted-out recipient, and
webhooks that are refused for each reason).

Processes run in sessions of their own (tests/chaos_support.Proc), so stopping them touches nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from chaos_support import Proc, process_env

from producers.producer import Producer
from worker import statuses
from worker.serving import free_port
from worker.settings import Settings
from worker.signature import Signer

#: The API key of the run: long and unmistakable, so finding it anywhere in the output is certain.
SECRET_API_KEY = "KEYsecret" + uuid.uuid4().hex + "DoNotLog"
KEY_SEED = "sendq-ops-test"
FAST, SLOW, OTHER = "+13125550101", "+13125550109", "+13125550102"
SLOW_MPS = 2.0
WEBHOOK_MAX_BODY = 4096


@dataclass
class FullRun:
    """The running processes, where they answer, and what they wrote."""

    settings: Settings
    tmp: Path
    sim_url: str
    web_url: str
    worker_ops_url: str
    scheduler_ops_url: str
    procs: dict[str, Proc] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def start(self, name: str, *args: str, **env: str) -> None:
        base = process_env(self.settings, log_level="DEBUG", log_format="json")
        base["PROMETHEUS_MULTIPROC_DIR"] = str(self.tmp / "metrics")
        base.update(env)
        self.procs[name] = Proc([sys.executable, "-m", "producers.cli", *args], base, self.tmp / f"{name}.log")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop(20)


def wait_until(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def postgres_schema_url(base: str) -> tuple[str, sa.Engine, str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}", admin, schema


@contextlib.contextmanager
def full_run(redis_url: str, tmp: Path) -> Iterator[FullRun]:
    """Start everything, send the batch, wait for it to settle; stop everything on exit."""
    admin: sa.Engine | None = None
    database_url = f"sqlite:///{tmp / 'sendq.db'}"
    if os.environ.get("DATABASE_URL", "").startswith(("postgresql", "postgres")):
        database_url, admin, schema = postgres_schema_url(os.environ["DATABASE_URL"])
    (tmp / "metrics").mkdir()
    ports = {name: free_port() for name in ("sim", "web", "worker", "scheduler")}
    settings = Settings(
        redis_url=redis_url, database_url=database_url, namespace=f"sendq-ops-{uuid.uuid4().hex[:8]}",
        telnyx_api_key=SECRET_API_KEY, telnyx_base_url=f"http://127.0.0.1:{ports['sim']}/v2",
        telnyx_public_key=Signer.from_seed(KEY_SEED).public_key,
        webhook_url=f"http://127.0.0.1:{ports['web']}/webhooks/telnyx", send_min_backoff_ms=50,
        send_max_backoff_ms=200, rate_limits={"long_code": 1000.0, SLOW: SLOW_MPS},
        account_mps={"sms": 10_000.0, "mms": 10_000.0}, webhook_max_body_bytes=WEBHOOK_MAX_BODY,
    )
    run = FullRun(settings, tmp, f"http://127.0.0.1:{ports['sim']}", f"http://127.0.0.1:{ports['web']}",
                  f"http://127.0.0.1:{ports['worker']}", f"http://127.0.0.1:{ports['scheduler']}")
    try:
        run.start("simulator", "simulator", "--port", str(ports["sim"]), "--webhook-url", settings.webhook_url or "",
                  "--api-key", SECRET_API_KEY, "--key-seed", KEY_SEED, "--seed", "5", "--fail-5xx", "0.1",
                  "--fail-reset", "0.04", "--sent-delay", "0.02", "--final-delay", "0.02", "--numbers", SLOW)
        run.start("web", "web", "--port", str(ports["web"]), SENDQ_WEBHOOK_MAX_BODY_BYTES=str(WEBHOOK_MAX_BODY))
        run.start("worker", "worker", "--processes", "2", "--threads", "4", SENDQ_METRICS_PORT=str(ports["worker"]))
        run.start("scheduler", "scheduler", SENDQ_METRICS_PORT=str(ports["scheduler"]),
                  SENDQ_SCHEDULER_INTERVAL_S="0.2")
        for url in (f"{run.sim_url}/_sim/public_key", f"{run.web_url}/healthz", f"{run.worker_ops_url}/healthz",
                    f"{run.scheduler_ops_url}/healthz"):
            wait_until(lambda url=url: _answers(url), 60, url)
        _send_batch(run)
        _post_bad_webhooks(run)
        yield run
    finally:
        run.stop()
        if admin is not None:
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()


def _send_batch(run: FullRun) -> None:
    # The recipient of the last message texted STOP to another number of the same messaging profile: sendq's
    # list ties the block to that number only, Telnyx blocks the whole profile, so the send is refused with 40300.
    httpx.post(f"{run.sim_url}/_sim/inbound", json={"from": "+13125550199", "to": OTHER, "text": "STOP"}, timeout=5)
    with Producer.connect(run.settings) as producer:
        for i in range(12):
            run.ids.append(producer.send(f"+1312555{2000 + i:04d}", from_=FAST, text=f"hello {i}"))
        for i in range(4):
            run.ids.append(producer.send(f"+1312555{3000 + i:04d}", from_=FAST, text=f"code {i}", priority="urgent"))
        for i in range(6):  # two a second: the later ones are deferred, not slept for
            run.ids.append(producer.send(f"+1312555{4000 + i:04d}", from_=SLOW, text=f"slow {i}", priority="bulk"))
        soon = datetime.now(UTC) + timedelta(seconds=1.5)
        run.ids.append(producer.send("+13125555000", from_=FAST, text="scheduled", send_at=soon))
        time.sleep(1.0)  # let the STOP webhook be applied first: sendq's list must not be what stops the send
        run.ids.append(producer.send("+13125550199", from_=FAST, text="to someone who said STOP"))

        def settled() -> bool:
            return all(statuses.is_final(producer.status(i)["status"]) for i in run.ids)

        wait_until(settled, 90, "every message of the batch to reach a final status")


def _post_bad_webhooks(run: FullRun) -> None:
    """One webhook refused for each reason, and one duplicate."""
    url, signer, now = f"{run.web_url}/webhooks/telnyx", Signer.from_seed(KEY_SEED), int(time.time())
    event = json.dumps({"data": {"event_type": "message.sent", "id": str(uuid.uuid4()), "record_type": "event",
                                 "payload": {"id": str(uuid.uuid4()), "direction": "outbound"}}}).encode()
    malformed = b'{"data": "not an event"}'
    with httpx.Client(timeout=5) as client:
        client.post(url, content=event, headers=Signer.from_seed("someone else").headers(event, now))
        client.post(url, content=event, headers=signer.headers(event, now - 3600))
        client.post(url, content=malformed, headers=signer.headers(malformed, now))
        client.post(url, content=b"x" * (WEBHOOK_MAX_BODY + 1), headers=signer.headers(b"", now))
        for _ in range(2):
            client.post(url, content=event, headers=signer.headers(event, now))


def promtool() -> str:
    """The path of ``promtool``; the test is skipped without it, or fails when ``SENDQ_REQUIRE_PROMTOOL=1`` (CI)."""
    import shutil

    import pytest

    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("SENDQ_REQUIRE_PROMTOOL") == "1":
        pytest.fail("promtool is required (SENDQ_REQUIRE_PROMTOOL=1) but not on PATH: apt-get install prometheus")
    pytest.skip("promtool not on PATH (Debian: apt-get install prometheus); .ci/run installs it")
