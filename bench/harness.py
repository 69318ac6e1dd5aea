"""What every benchmark needs: isolated settings on real services, and sendq's processes as subprocesses."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from worker.embedded import resolve_redis
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


#: Limits no benchmark reaches, for the benchmarks whose senders must not be the bottleneck.
UNBOUND_LIMITS = {"rate_limits": dict.fromkeys(("long_code", "toll_free", "short_code", "alphanumeric", "number_pool"),
                                               100_000.0),
                  "account_mps": {"sms": 1_000_000.0, "mms": 1_000_000.0}}


def fresh_settings(tmp: str, **overrides: Any) -> Settings:
    """Settings on ``REDIS_URL`` / ``DATABASE_URL`` when set (new namespace, new PostgreSQL schema), else an
    embedded Redis and SQLite under ``tmp``."""
    database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{tmp}/bench.db"
    if database_url.startswith(("postgresql", "postgres")):
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        engine.dispose()
        atexit.register(_drop_schema, database_url, schema)
        database_url += ("&" if "?" in database_url else "?") + f"options=-csearch_path%3D{schema}"
    settings = Settings(database_url=database_url, namespace=f"bench-{uuid.uuid4().hex[:8]}",
                        telnyx_api_key="KEY-bench", embedded_redis_path=f"{tmp}/redis.db", **overrides)
    settings, _embedded = resolve_redis(settings)
    return settings


def _drop_schema(database_url: str, schema: str) -> None:
    """A run's schema goes with it: a benchmark of a million rows must not leave them in the database."""
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


def environment(settings: Settings) -> dict[str, str]:
    """The environment that makes a sendq subprocess use ``settings``."""
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "DATABASE_URL": settings.database_url,
           "SENDQ_NAMESPACE": settings.namespace, "TELNYX_BASE_URL": settings.telnyx_base_url,
           "TELNYX_API_KEY": settings.api_key() or "", "SENDQ_LOG_LEVEL": "WARNING"}
    for name, value in settings.model_dump(exclude_none=True).items():
        if name.startswith(("scheduler_", "schedule_", "worker_", "send_", "http_", "rate_", "account_", "limiter_",
                            "urgent_")):
            env[f"SENDQ_{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    return env


class Processes:
    """``with Processes(settings, ["worker", ...], ["scheduler"]):`` runs those sendq commands meanwhile."""

    def __init__(self, settings: Settings, *commands: list[str]) -> None:
        self.env = environment(settings)
        self.commands = commands
        self.running: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Processes:
        for command in self.commands:
            self.running.append(subprocess.Popen([sys.executable, "-m", "producers.cli", *command], env=self.env,
                                                 cwd=ROOT, stdout=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        for proc in self.running:
            proc.send_signal(signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()


def free_port() -> int:
    from worker.serving import free_port as pick

    return pick()


def wait_http(url: str, timeout_s: float = 30) -> None:
    """Return once ``url`` answers; raise if it never does."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


class SimulatorProcess:
    """``with SimulatorProcess("--sender-mps", "+1...=5") as url:`` runs ``sendq simulator`` in its own process
    (so it does not share the benchmark's interpreter), without webhooks, until the block ends. With
    ``--any-sender``: benchmarks spread load over hundreds of made-up senders that no account owns."""

    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.flags = flags

    def __enter__(self) -> str:
        self.proc = subprocess.Popen([sys.executable, "-m", "producers.cli", "simulator", "--port", str(self.port),
                                      "--webhook-url", "", "--sent-delay", "86400", "--any-sender", *self.flags],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"{self.url}/_sim/stats")
        return self.url

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.proc.terminate()
        self.proc.wait(30)
