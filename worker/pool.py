"""``sendq worker``: a small supervisor running dramatiq workers in child processes.

Each child builds its own broker, services and actors from the settings it is handed (nothing is shared
across the fork but configuration), serves the chosen queues with a pool of threads, and stops cleanly
on SIGTERM or SIGINT: in-flight jobs finish, prefetched ones go back to Redis. A child that dies is
replaced, so a crash costs only the jobs it held (which Redis redelivers).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Iterable
from multiprocessing.process import BaseProcess
from typing import Any

import dramatiq
from prometheus_client.multiprocess import mark_process_dead

from worker import job_logs
from worker.actors import Actors
from worker.broker import QUEUES, build_broker
from worker.dependencies import Dependencies
from worker.logs import configure_logging, secrets_of
from worker.ops_server import MultiprocessDir, OpsServer
from worker.services import Services
from worker.settings import Settings
from worker.store import Store

log = logging.getLogger(__name__)

#: How long a stopping worker waits for in-flight jobs before requeueing what is left.
STOP_TIMEOUT_MS = 30_000


def start_worker(actors: Actors, *, queues: Iterable[str] = QUEUES, threads: int = 8,
                 idle_poll_ms: int = 100) -> dramatiq.Worker:
    """Start consuming ``queues`` for ``actors`` (built with services) in this process.

    ``idle_poll_ms`` is how often an idle consumer looks at Redis again; it also bounds how long
    :meth:`dramatiq.Worker.stop` waits for consumers to notice.
    """
    worker = dramatiq.Worker(actors.broker, queues=set(queues), worker_threads=threads, worker_timeout=idle_poll_ms)
    worker.start()
    return worker


def _child_main(settings: Settings, queues: list[str], threads: int) -> None:
    configure_logging(settings.log_level, json_format=settings.log_format == "json", secrets=secrets_of(settings))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    store = Store.from_url(settings.database_url)
    dependencies = Dependencies.of(store=store.ping, redis=lambda: broker.client.ping())
    broker = build_broker(settings, dependencies=dependencies)
    job_logs.install(dependencies, queues)
    # Started during an outage, the child waits for it here rather than failing (and being respawned) at once.
    if not dependencies.wait_at_start(stop):
        return
    services = Services.build(settings, broker=broker, store=store)
    worker = start_worker(Actors(broker, services), queues=queues, threads=threads,
                          idle_poll_ms=settings.worker_poll_ms)
    log.info("worker process ready: queues=%s threads=%d", ",".join(queues), threads)
    stop.wait()
    # dramatiq stops the worker threads first (each finishes the job it is running: a send in flight completes
    # and records its outcome), then the consumers, then puts every fetched job not started, and every delayed
    # one held in memory, back on its queue in Redis. Nothing waits for the heartbeat timeout.
    log.info("worker process stopping: finishing jobs in progress, returning prefetched ones to Redis")
    worker.stop(timeout=STOP_TIMEOUT_MS)
    if services.usage is not None:
        services.usage.flush()
    broker.close()
    services.close()
    log.info("worker process stopped")


class Pool:
    """``processes`` children, each running ``threads`` worker threads over ``queues``.

    With ``settings.metrics_port`` the supervisor also serves ``/metrics`` (every child's samples, through a
    multiprocess directory) and ``/healthz`` (200 while every child is alive).
    """

    def __init__(self, settings: Settings, *, processes: int, threads: int, queues: Iterable[str]) -> None:
        self.settings = settings
        self.processes = processes
        self.threads = threads
        self.queues = list(queues)
        self._context: Any = multiprocessing.get_context("spawn")
        self._children: list[BaseProcess] = []
        self._stopping = threading.Event()
        self._metrics_dir: MultiprocessDir | None = None

    def _spawn(self) -> BaseProcess:
        child = self._context.Process(target=_child_main, args=(self.settings, self.queues, self.threads),
                                      name="sendq-worker", daemon=False)
        child.start()
        return child

    def stop(self) -> None:
        self._stopping.set()

    def health(self) -> dict[str, str]:
        alive = sum(1 for child in self._children if child.is_alive())
        return {"processes": "ok" if alive == self.processes else f"error: {alive} of {self.processes} running"}

    def run(self) -> int:
        """Run until :meth:`stop` (or SIGTERM/SIGINT in the main thread); returns an exit code."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: self.stop())
        server = self._start_metrics()
        try:
            self._children = [self._spawn() for _ in range(self.processes)]
            while not self._stopping.wait(0.5):
                self._replace_dead()
            log.info("stopping %d worker processes", len(self._children))
            self._stop_children()
        finally:
            if server is not None:
                server.close()
            if self._metrics_dir is not None:
                self._metrics_dir.close()
        return 0

    def _start_metrics(self) -> OpsServer | None:
        settings = self.settings
        if settings.metrics_port is None and not settings.prometheus_multiproc_dir:
            return None
        self._metrics_dir = MultiprocessDir(settings.prometheus_multiproc_dir)
        self._metrics_dir.export()
        if settings.metrics_port is None:
            return None
        return OpsServer(settings.metrics_port, health=self.health, multiprocess_dir=self._metrics_dir.path).start()

    def _replace_dead(self) -> None:
        for i, child in enumerate(self._children):
            if child.is_alive():
                continue
            log.warning("worker process %s exited with %s; starting another", child.pid, child.exitcode)
            if self._metrics_dir is not None and child.pid is not None:
                mark_process_dead(child.pid, self._metrics_dir.path)
            self._children[i] = self._spawn()

    def _stop_children(self) -> None:
        for child in self._children:
            if child.is_alive() and child.pid is not None:
                child.terminate()  # SIGTERM: the child finishes in-flight jobs and requeues the rest
        deadline = time.monotonic() + STOP_TIMEOUT_MS / 1000 + 5
        for child in self._children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                log.warning("worker process %s did not stop in time; killing it (Redis redelivers its jobs)",
                            child.pid)
                child.kill()
