"""End to end: sendq's whole path, from enqueue to a final status, next to a bare dramatiq actor in the same run.

``--messages`` messages over ``--senders`` senders whose limits do not bind. sendq's side runs the Procfile's
``sendq web`` and ``sendq worker --processes P --threads T`` as subprocesses on the store (``DATABASE_URL``,
a fresh PostgreSQL schema; SQLite when unset) and Redis (``REDIS_URL``; an embedded Redis when unset). A
``sendq simulator`` in its own process accepts the sends and, after ``--sent-delay`` and ``--final-delay``
seconds, sends ``message.sent`` and ``message.finalized`` to that ``sendq web``, signed with the key whose
public half is ``sendq web``'s ``TELNYX_PUBLIC_KEY`` (so every webhook is verified). Printed:

* enqueue/s: the producer writing every row and enqueuing its job, before any worker runs;
* accepted at Telnyx/s and final/s: messages over the time from the workers' start until the simulator holds
  every message, and until the store holds every message in a final status;
* CPU-ms per message of sendq's processes (worker supervisor and its children, plus web) and of the simulator,
  from the workers' start until every message is final.

The reference, measured first and in the same run, is bench/bare_actor.py run by dramatiq's CLI with the
same processes and threads, against a simulator of its own without webhooks (as bench/overhead.py does): its
POST/s and CPU-ms per message. Ratios printed: sendq final/s over bare POST/s (goal >= 0.3) and sendq CPU per
message over bare CPU per message (goal <= 3). Both sides include their workers' start-up in time and CPU.

How "final" is seen: the benchmark polls ``SELECT count(*) FROM messages WHERE status IN (final statuses)``
and the simulator's ``/_sim/stats`` every ``--poll`` seconds (0.5). A poll is one indexed count on one
connection and one cheap HTTP call, a few hundred over a run: small next to the thousands of statements and
requests being measured, though the simulator's CPU includes answering them. The rates are read at the first
poll that sees everything, so they are understated by up to one poll interval over the run's length.

Per message, also printed, split into the enqueue and the processing (workers' start to all final, start-up
and shutdown included):

* PostgreSQL: transactions committed (``pg_stat_database.xact_commit``) and rows inserted and updated;
  statements only if ``pg_stat_statements`` is installed (it is not on this project's machine). The run gets a
  database of its own on the ``DATABASE_URL`` server (created and dropped by the benchmark), because these
  counters are per database and a shared one counts everyone's tests. Counters are read once the backends
  that did the work have exited (a backend reports them as it exits, else up to 10 s late); the benchmark's
  polls are subtracted; autovacuum, if it runs meanwhile, is in them.
* Redis: commands sent, counted by the clients themselves (bench/redis_count.py, loaded into every process of
  both sides and into the producer), with the most sent commands. The server's own ``INFO`` count is in the
  JSON line too, but a shared server's count is mostly other clients': this machine's Redis served about
  4,500 commands/s for others during development, ten times sendq's own. Idle dramatiq consumers polling
  their queues add a cost per second rather than per message.

Every process the benchmark starts runs in its own session and is stopped (SIGTERM, then SIGKILL to its
whole group) when the run ends, fails, times out (``--timeout`` seconds per side; the message says how many
messages were final) or is interrupted (Ctrl-C, SIGTERM). The run's Redis keys and database are removed
at the end.

    python bench/end_to_end.py [--messages 5000] [--senders 500] [--processes 2] [--threads 8]
                               [--sent-delay 0.05] [--final-delay 0.05] [--poll 0.5] [--timeout 300]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil
import redis
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis_count
from harness import ROOT, UNBOUND_LIMITS, environment, free_port, fresh_settings, wait_http

from producers.producer import Producer
from worker import statuses
from worker.actors import Actors
from worker.broker import build_broker
from worker.settings import Settings
from worker.store import Store, create_engine, messages

WEBHOOK_PATH = "/webhooks/telnyx"
STOP_TIMEOUT_S = 45.0  # longer than a sendq worker's own 30 s drain, so a clean stop is not cut short
COUNTING_SITE = Path(__file__).resolve().parent / "redis_count_site"
PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")


class RunTimeout(RuntimeError):
    """A side did not finish within ``--timeout``; the message says how far it got."""


# -- processes -------------------------------------------------------------------------------------------------

class Service:
    """One subprocess in its own session: a Ctrl-C in the terminal then reaches only the benchmark, which stops
    its services in order, and stopping a service can reach the whole group (dramatiq's and sendq's worker
    children) even if the leader has already gone."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: str) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = Path(log_dir) / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Service:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def check(self) -> None:
        """Raise if the service has died: waiting on it would only run into the timeout."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop within {STOP_TIMEOUT_S:.0f} s: killed", file=sys.stderr)
        finally:
            # Whatever is left of the group (children of a leader that died, was too slow, or whose clean stop
            # a second Ctrl-C cut short) goes now.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def ready(self, url: str) -> None:
        """Return once ``url`` answers; raise with the service's last output if it never does."""
        try:
            wait_http(url)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name}: {exc}:\n{self.tail()}") from None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def sendq_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "producers.cli", *args]


def counting(env: dict[str, str], directory: str) -> dict[str, str]:
    """``env`` for a process whose Redis commands bench/redis_count.py counts into ``directory``."""
    path = os.pathsep.join(p for p in (str(COUNTING_SITE), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "BENCH_REDIS_COUNT_DIR": directory}


def per_msg(calls: redis_count.Counter[str], count: int) -> float:
    return round(calls.total() / count, 2)


def top(calls: redis_count.Counter[str], count: int, most: int = 8) -> dict[str, float]:
    return {name: round(n / count, 2) for name, n in calls.most_common(most) if n > 0}


def cpu_seconds(*processes: psutil.Process) -> float:
    """User + system CPU of ``processes`` and their living descendants."""
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            for each in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = each.cpu_times()
                    total += times.user + times.system
    return total


def sim_count(sim_url: str) -> int:
    return int(httpx.get(f"{sim_url}/_sim/stats", timeout=10).json()["messages"])


@contextlib.contextmanager
def simulator(log_dir: str, *flags: str) -> Iterator[tuple[Service, str]]:
    """``sendq simulator`` on a free port with ``flags``; yields the service and its base URL."""
    port = free_port()
    with Service(f"simulator-{port}", sendq_command("simulator", "--port", str(port), *flags),
                 dict(os.environ), log_dir) as service:
        url = f"http://127.0.0.1:{port}"
        service.ready(f"{url}/_sim/stats")
        yield service, url


# -- server-wide counters --------------------------------------------------------------------------------------

def postgres_engine(url: str, **options: Any) -> sa.Engine | None:
    """An engine without a pool on ``url`` if it is PostgreSQL, else None. No pool: each use is a fresh backend,
    which has nothing of its own left unreported in the statistics when it reads them."""
    if not url.startswith(("postgresql://", "postgres://")):
        return None
    return sa.create_engine("postgresql+psycopg://" + url.split("://", 1)[1], poolclass=sa.NullPool, **options)


class Counters:
    """PostgreSQL's and Redis's own counters, read as snapshots whose differences are the run's cost."""

    def __init__(self, settings: Settings) -> None:
        self.redis = redis.Redis.from_url(settings.redis_url or "")
        self.pg = postgres_engine(settings.database_url, isolation_level="AUTOCOMMIT")
        self.statements_available = self.pg is not None and self._statements() is not None

    def _statements(self) -> int | None:
        assert self.pg is not None
        try:
            with self.pg.connect() as conn:
                return int(conn.execute(sa.text(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                    "WHERE d.datname = current_database()")).scalar_one())
        except sa.exc.DBAPIError:
            return None

    def backends(self) -> int:
        """Connections to the run's database other than the one asking."""
        if self.pg is None:
            return 0
        with self.pg.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                            "current_database() AND pid <> pg_backend_pid()")).scalar_one())

    def snapshot(self, others: int = 0) -> dict[str, Any]:
        """The counters, once at most ``others`` other connections remain (for up to 5 s): a backend reports its
        counters as it exits, which happens a moment after its client has closed the connection."""
        deadline = time.monotonic() + 5
        while self.backends() > others and time.monotonic() < deadline:
            time.sleep(0.05)
        found: dict[str, Any] = {"redis_commands": int(self.redis.info("stats")["total_commands_processed"])}
        if self.pg is not None:
            with self.pg.connect() as conn:
                row = conn.execute(sa.text(f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database "
                                           "WHERE datname = current_database()")).one()
            found.update(dict(zip(PG_COUNTERS, map(int, row), strict=True)))
            if self.statements_available:
                found["statements"] = self._statements()
        return found

    def close(self) -> None:
        self.redis.close()
        if self.pg is not None:
            self.pg.dispose()


def per_message(before: dict[str, Any], after: dict[str, Any], count: int, own_commits: int = 0) -> dict[str, Any]:
    """Counter differences divided by ``count``; ``own_commits`` (the benchmark's polls) are taken out first."""
    found: dict[str, Any] = {
        "redis_server_commands": round((after["redis_commands"] - before["redis_commands"]) / count, 2)}
    for name in (*PG_COUNTERS, "statements"):
        if name in before and name in after:
            own = own_commits if name in ("xact_commit", "statements") else 0
            found[name] = round((after[name] - before[name] - own) / count, 2)
    return found


# -- the store, as the benchmark sees it ----------------------------------------------------------------------

class FinalCounter:
    """Counts final messages over one autocommit connection, remembering how many statements it issued."""

    def __init__(self, database_url: str) -> None:
        self.engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
        self.statements = 0
        self.query = sa.select(sa.func.count()).select_from(messages).where(
            messages.c.status.in_(sorted(statuses.FINAL)))

    def final(self) -> int:
        self.statements += 1
        with self.engine.connect() as conn:
            return int(conn.execute(self.query).scalar_one())

    def by_status(self) -> dict[str, int]:
        self.statements += 1
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(messages.c.status, sa.func.count()).group_by(messages.c.status)).all()
        return {status: int(n) for status, n in rows}

    def close(self) -> None:
        self.engine.dispose()


# -- the bare reference ----------------------------------------------------------------------------------------

def run_bare(settings: Settings, args: argparse.Namespace, counters: Counters, log_dir: str) -> dict[str, Any]:
    namespace = f"bare-{uuid.uuid4().hex[:8]}"
    # --any-sender: the senders are made up (+1312800xxxx), hundreds of them.
    with simulator(log_dir, "--webhook-url", "", "--sent-delay", "86400", "--any-sender") as (sim, sim_url):
        env = {**environment(settings), "BARE_NAMESPACE": namespace, "BARE_URL": f"{sim_url}/v2/messages",
               "PYTHONPATH": str(ROOT)}
        counted = f"{log_dir}/redis-bare"
        os.environ.update({k: env[k] for k in ("BARE_NAMESPACE", "BARE_URL", "REDIS_URL")})
        import bare_actor  # configured by the environment, as dramatiq's CLI loads it

        try:
            senders = [f"+1312800{i:04d}" for i in range(args.senders)]
            own = redis_count.snapshot()
            started = time.perf_counter()
            for i in range(args.messages):
                bare_actor.post.send(uuid.uuid4().hex, {"to": f"+1312555{i % 10000:04d}",
                                                        "from": senders[i % len(senders)], "text": "end to end"})
            enqueue_s = time.perf_counter() - started
            enqueue_calls = redis_count.snapshot() - own
            base, before = sim_count(sim_url), counters.snapshot()
            sim_cpu0 = cpu_seconds(sim.process)
            t0 = time.perf_counter()
            with Service("bare-dramatiq", [sys.executable, "-m", "dramatiq", "bench.bare_actor", "--processes",
                                           str(args.processes), "--threads", str(args.threads)], counting(env, counted),
                         log_dir) as bare:
                cpu0 = cpu_seconds(bare.process)
                deadline = t0 + args.timeout
                while (posted := sim_count(sim_url) - base) < args.messages:
                    bare.check()
                    if time.perf_counter() > deadline:
                        raise RunTimeout(f"bare: gave up after {args.timeout:.0f} s with {posted} of "
                                         f"{args.messages} POSTs at the simulator")
                    time.sleep(args.poll)
                elapsed = time.perf_counter() - t0
                cpu, sim_cpu = cpu_seconds(bare.process) - cpu0, cpu_seconds(sim.process) - sim_cpu0
            after, calls = counters.snapshot(), redis_count.totals(counted)
        finally:
            bare_actor.broker.close()
            delete_keys(counters.redis, namespace)
    n = args.messages
    return {"enqueue_per_s": round(n / enqueue_s, 1), "seconds": round(elapsed, 2), "post_per_s": round(n / elapsed, 1),
            "cpu_ms_per_msg": round(cpu / n * 1000, 3), "simulator_cpu_ms_per_msg": round(sim_cpu / n * 1000, 3),
            "redis_enqueue_per_msg": per_msg(enqueue_calls, n), "redis_processing_per_msg": per_msg(calls, n),
            "redis_processing_top": top(calls, n), "server": per_message(before, after, n)}


# -- sendq -----------------------------------------------------------------------------------------------------

def enqueue(settings: Settings, args: argparse.Namespace) -> tuple[float, redis_count.Counter[str]]:
    """Accept every message through the producer; returns the seconds it took and its Redis commands."""
    store = Store.from_url(settings.database_url).migrate()
    producer = Producer(settings, store, Actors(build_broker(settings)))
    try:
        senders = [f"+1312700{i:04d}" for i in range(args.senders)]
        own = redis_count.snapshot()
        started = time.perf_counter()
        for i in range(args.messages):
            producer.send(f"+1312555{i % 10000:04d}", from_=senders[i % len(senders)], text="end to end")
        return time.perf_counter() - started, redis_count.snapshot() - own
    finally:
        producer.close()  # its backends exit and report their counters before the next snapshot


def wait_all_final(args: argparse.Namespace, sim_url: str, base: int, finals: FinalCounter,
                   services: list[Service], t0: float) -> tuple[float, float]:
    """Seconds from ``t0`` until the simulator held every message, and until every message was final."""
    accepted_s: float | None = None
    deadline = t0 + args.timeout
    while True:
        accepted = sim_count(sim_url) - base
        if accepted_s is None and accepted >= args.messages:
            accepted_s = time.perf_counter() - t0
        final = finals.final()
        if final >= args.messages:
            return accepted_s or time.perf_counter() - t0, time.perf_counter() - t0
        for service in services:
            service.check()
        if time.perf_counter() > deadline:
            raise RunTimeout(f"sendq: gave up after {args.timeout:.0f} s with {final} of {args.messages} messages "
                             f"final, {accepted} accepted at the simulator; statuses {finals.by_status()}")
        time.sleep(args.poll)


def webhook_results(web_url: str) -> dict[str, int]:
    """``sendq web``'s webhook counter by result, from its /metrics."""
    found: dict[str, int] = {}
    for line in httpx.get(f"{web_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("sendq_webhook_requests_total{"):
            label, value = line.rsplit(" ", 1)
            found[label.split('result="', 1)[1].split('"', 1)[0]] = int(float(value))
    return found


def run_sendq(settings: Settings, args: argparse.Namespace, counters: Counters, log_dir: str) -> dict[str, Any]:
    web_port = free_port()
    web_url = f"http://127.0.0.1:{web_port}"
    with contextlib.ExitStack() as stack:
        sim, sim_url = stack.enter_context(simulator(
            log_dir, "--webhook-url", f"{web_url}{WEBHOOK_PATH}", "--sent-delay", str(args.sent_delay),
            "--final-delay", str(args.final_delay), "--any-sender"))  # made-up senders, as above
        public_key = httpx.get(f"{sim_url}/_sim/public_key", timeout=10).json()["public_key"]
        env = {**environment(settings.model_copy(update={"telnyx_base_url": f"{sim_url}/v2"})),
               "TELNYX_PUBLIC_KEY": public_key}
        web = stack.enter_context(Service("web", sendq_command("web", "--port", str(web_port)),
                                          counting(env, f"{log_dir}/redis-web"), log_dir))
        web.ready(f"{web_url}/healthz")

        web_backends = counters.backends()
        before = counters.snapshot(web_backends)
        enqueue_s, enqueue_calls = enqueue(settings, args)
        enqueued = counters.snapshot(web_backends)
        finals = stack.enter_context(contextlib.closing(FinalCounter(settings.database_url)))
        base = sim_count(sim_url)
        web_cpu0, sim_cpu0 = cpu_seconds(web.process), cpu_seconds(sim.process)
        t0 = time.perf_counter()
        worker = stack.enter_context(Service("worker", sendq_command(
            "worker", "--processes", str(args.processes), "--threads", str(args.threads)),
            counting(env, f"{log_dir}/redis-worker"), log_dir))
        accepted_s, final_s = wait_all_final(args, sim_url, base, finals, [worker, web, sim], t0)
        worker_cpu, web_cpu = cpu_seconds(worker.process), cpu_seconds(web.process) - web_cpu0
        cpu = worker_cpu + web_cpu
        sim_cpu = cpu_seconds(sim.process) - sim_cpu0
        outcome, webhooks = finals.by_status(), webhook_results(web_url)
        worker.stop()
        web.stop()
        finals.close()
        after = counters.snapshot()
        worker_calls = redis_count.totals(f"{log_dir}/redis-worker")
        web_calls = redis_count.totals(f"{log_dir}/redis-web")
    n = args.messages
    return {"enqueue_per_s": round(n / enqueue_s, 1), "accepted_s": round(accepted_s, 2),
            "accepted_per_s": round(n / accepted_s, 1), "final_s": round(final_s, 2),
            "final_per_s": round(n / final_s, 1), "cpu_ms_per_msg": round(cpu / n * 1000, 3),
            "worker_cpu_ms_per_msg": round(worker_cpu / n * 1000, 3),
            "web_cpu_ms_per_msg": round(web_cpu / n * 1000, 3),
            "simulator_cpu_ms_per_msg": round(sim_cpu / n * 1000, 3), "statuses": outcome, "webhooks": webhooks,
            "enqueue": per_message(before, enqueued, n),
            "processing": per_message(enqueued, after, n, own_commits=finals.statements),
            "total": per_message(before, after, n, own_commits=finals.statements),
            "redis_enqueue_per_msg": per_msg(enqueue_calls, n),
            "redis_processing_per_msg": per_msg(worker_calls + web_calls, n),
            "redis_worker_per_msg": per_msg(worker_calls, n), "redis_web_per_msg": per_msg(web_calls, n),
            "redis_processing_top": top(worker_calls + web_calls, n)}


# -- clean-up and report ---------------------------------------------------------------------------------------

def delete_keys(client: redis.Redis, namespace: str) -> None:
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])


@contextlib.contextmanager
def own_database() -> Iterator[None]:
    """On PostgreSQL, point ``DATABASE_URL`` at a new database on the same server while the block runs, and drop
    it at the end. pg_stat_database counts per database, and a shared database also counts everyone else's work
    (in one trial on ``test``, other tests added 2 commits and 6 deleted rows per message to the enqueue
    phase, which deletes nothing); in a database of its own the counters are the run's."""
    url = os.environ.get("DATABASE_URL", "")
    admin = postgres_engine(url, isolation_level="AUTOCOMMIT")
    if admin is None:
        yield
        return
    name = f"bench_e2e_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    os.environ["DATABASE_URL"] = sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        yield
    finally:
        os.environ["DATABASE_URL"] = url
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sql_line(figures: dict[str, Any]) -> str:
    if "xact_commit" not in figures:
        return "n/a (not PostgreSQL)"
    statements = f", statements {figures['statements']}" if "statements" in figures else ""
    return (f"commits {figures['xact_commit']}, rows inserted {figures['tup_inserted']}, "
            f"updated {figures['tup_updated']}{statements}")


def report(args: argparse.Namespace, settings: Settings, bare: dict[str, Any], sendq: dict[str, Any],
           load: tuple[float, ...], redis_given: bool) -> None:
    throughput = sendq["final_per_s"] / bare["post_per_s"]
    cpu = sendq["cpu_ms_per_msg"] / bare["cpu_ms_per_msg"]
    n = args.messages
    print(f"{n} messages over {args.senders} senders, {args.processes} processes x {args.threads} threads, "
          f"webhooks after {args.sent_delay} s + {args.final_delay} s, store {settings.database_url.split(':')[0]}")
    print(f"bare   enqueue {bare['enqueue_per_s']:7.1f}/s   POST {bare['post_per_s']:6.1f}/s ({bare['seconds']:.1f} s)"
          f"   CPU {bare['cpu_ms_per_msg']:.2f} ms/msg   simulator CPU {bare['simulator_cpu_ms_per_msg']:.2f} ms/msg")
    print(f"sendq  enqueue {sendq['enqueue_per_s']:7.1f}/s   accepted at Telnyx {sendq['accepted_per_s']:6.1f}/s "
          f"({sendq['accepted_s']:.1f} s)   final {sendq['final_per_s']:6.1f}/s ({sendq['final_s']:.1f} s)")
    print(f"       CPU worker+web {sendq['cpu_ms_per_msg']:.2f} ms/msg (worker {sendq['worker_cpu_ms_per_msg']:.2f}, "
          f"web {sendq['web_cpu_ms_per_msg']:.2f})   "
          f"simulator CPU {sendq['simulator_cpu_ms_per_msg']:.2f} ms/msg")
    print(f"       statuses {sendq['statuses']}   webhooks received by result {sendq['webhooks']}")
    print("per message, PostgreSQL (the run's own database):")
    print(f"       enqueue: {sql_line(sendq['enqueue'])}")
    print(f"       processing: {sql_line(sendq['processing'])}")
    print("per message, Redis commands (counted by the clients):")
    print(f"       bare   enqueue {bare['redis_enqueue_per_msg']}, processing {bare['redis_processing_per_msg']} "
          f"{bare['redis_processing_top']}")
    print(f"       sendq  enqueue {sendq['redis_enqueue_per_msg']}, processing {sendq['redis_processing_per_msg']} "
          f"(worker {sendq['redis_worker_per_msg']}, web {sendq['redis_web_per_msg']}) "
          f"{sendq['redis_processing_top']}")
    print(f"       (the server's own count grew by {sendq['processing']['redis_server_commands']} per message while "
          f"sendq processed: other clients of a shared server are in it)")
    print(f"ratio  final/s sendq / POST/s bare = {throughput:.2f} (goal >= 0.3)   "
          f"CPU per message sendq / bare = {cpu:.2f} (goal <= 3)")
    print(f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(json.dumps({"benchmark": "end_to_end", "date": datetime.now(UTC).date().isoformat(),
                      "machine": f"{platform.machine()} {os.cpu_count()} cpu", "python": platform.python_version(),
                      "store": settings.database_url.split(":")[0],
                      "redis": "REDIS_URL" if redis_given else "embedded",
                      "messages": n, "senders": args.senders, "processes": args.processes, "threads": args.threads,
                      "sent_delay_s": args.sent_delay, "final_delay_s": args.final_delay,
                      "ratio_final_per_s": round(throughput, 2), "ratio_cpu_per_msg": round(cpu, 2),
                      "loadavg_start": round(load[0], 2), "bare": bare, "sendq": sendq}))


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C does, through every with-block that stops a process.
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--senders", type=int, default=500)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--sent-delay", type=float, default=0.05, help="simulator: accept to message.sent (s)")
    parser.add_argument("--final-delay", type=float, default=0.05, help="simulator: sent to message.finalized (s)")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between looks at the store and simulator")
    parser.add_argument("--timeout", type=float, default=300, help="seconds each side may take before giving up")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupted)
    load = os.getloadavg()
    redis_given = bool(os.environ.get("REDIS_URL"))
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if not redis_given:
            from worker.embedded import EmbeddedRedis

            # Held here, not by fresh_settings, so the server lives for the whole run and is stopped at its end.
            embedded = EmbeddedRedis(f"{tmp}/redis.db")
            stack.callback(embedded.close, force=True)
            os.environ["REDIS_URL"] = embedded.url
        redis_count.install(f"{tmp}/redis-bench")  # the producer's commands, counted in this process
        stack.callback(redis_count.uninstall)
        stack.enter_context(own_database())
        settings = fresh_settings(tmp, **UNBOUND_LIMITS)
        counters = stack.enter_context(contextlib.closing(Counters(settings)))
        stack.callback(delete_keys, counters.redis, settings.namespace)
        try:
            bare = run_bare(settings, args, counters, tmp)
            sendq = run_sendq(settings, args, counters, tmp)
        except RunTimeout as exc:
            print(exc, file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted: stopping every process started", file=sys.stderr)
            return 130
        report(args, settings, bare, sendq, load, redis_given)
    return 0


if __name__ == "__main__":
    sys.exit(main())
