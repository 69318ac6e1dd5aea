"""The supervisor of ``sendq worker`` (built in :mod:`worker.processes.worker`): dramatiq workers in children.

Each child serves the chosen queues with a pool of threads, and stops cleanly on SIGTERM or SIGINT: in-flight
jobs finish, prefetched ones go back to Redis. A child that dies is
replaced at once, so a crash costs only the jobs it held (which Redis redelivers). A child that keeps dying
soon after it starts (a broken deployment, a dependency it cannot do without) is started again after 1 s, 2 s,
4 s ... at most 30 s, one log line per exit, rather than every half second.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from multiprocessing.process import BaseProcess

import dramatiq
from prometheus_client.multiprocess import mark_process_dead

from worker.actors import Actors
from worker.ops_server import MultiprocessDir, OpsServer
from worker.queues import QUEUES
from worker.settings import Settings

log = logging.getLogger(__name__)

#: How long a stopping worker waits for in-flight jobs before requeueing what is left.
STOP_TIMEOUT_MS = 30_000
#: A child that exits is replaced at once. When its replacement too exits before it has lived ``HEALTHY_AFTER_S``,
#: the next one starts after ``FIRST_RESPAWN_DELAY_S``, doubling with each such exit in a row up to
#: ``MAX_RESPAWN_DELAY_S``; a child that lives ``HEALTHY_AFTER_S`` resets the count.
FIRST_RESPAWN_DELAY_S, MAX_RESPAWN_DELAY_S, HEALTHY_AFTER_S = 1.0, 30.0, 60.0


def respawn_delay(quick_exits: int, first_s: float = FIRST_RESPAWN_DELAY_S,
                  max_s: float = MAX_RESPAWN_DELAY_S) -> float:
    """Seconds to wait before replacing a child after ``quick_exits`` exits in a row soon after starting: none
    for the first, then ``first_s``, doubling, at most ``max_s``."""
    if quick_exits <= 1:
        return 0.0
    delay: float = min(first_s * 2 ** min(quick_exits - 2, 32), max_s)  # int ** int is typed Any
    return delay


def start_worker(actors: Actors, *, queues: Iterable[str] = QUEUES, threads: int = 8,
                 idle_poll_ms: int = 100) -> dramatiq.Worker:
    """Start consuming ``queues`` for ``actors`` (built with services) in this process.

    ``idle_poll_ms`` is how often an idle consumer looks at Redis again; it also bounds how long
    :meth:`dramatiq.Worker.stop` waits for consumers to notice.
    """
    worker = dramatiq.Worker(actors.broker, queues=set(queues), worker_threads=threads, worker_timeout=idle_poll_ms)
    worker.start()
    return worker


class Pool:
    """``processes`` children, each running ``threads`` worker threads over ``queues``.

    With ``settings.metrics_port`` the supervisor also serves ``/metrics`` (every child's samples, through a
    multiprocess directory) and ``/healthz`` (200 while every child is alive).

    ``target`` is what each child runs, ``target(settings, queues, threads, worker_id)``
    (:func:`worker.processes.worker.run_child`; tests hand in one that fails); ``released(worker_id)`` is called
    when a child has exited, to hand its unacknowledged jobs back at once. The respawn delays are attributes so
    tests can shorten them.
    """

    first_respawn_delay_s = FIRST_RESPAWN_DELAY_S
    max_respawn_delay_s = MAX_RESPAWN_DELAY_S
    healthy_after_s = HEALTHY_AFTER_S

    def __init__(self, settings: Settings, *, processes: int, threads: int, queues: Iterable[str],
                 target: Callable[[Settings, list[str], int, str], object],
                 released: Callable[[str], object] | None = None) -> None:
        self.settings = settings
        self.processes = processes
        self.threads = threads
        self.queues = list(queues)
        self.target = target
        self.released = released
        #: Per slot: the broker worker id its child was given (see :func:`worker.dramatiq_internals.name_worker`).
        self._worker_ids: list[str] = []
        self._context = multiprocessing.get_context("spawn")
        self._children: list[BaseProcess] = []
        # Per slot: when its child started, how many children in a row exited soon after starting, and when the
        # next one is due while the slot waits out its delay (None: not waiting).
        self._started: list[float] = []
        self._quick_exits: list[int] = []
        self._respawn_at: list[float | None] = []
        self._stopping = threading.Event()
        self._metrics_dir: MultiprocessDir | None = None

    def _spawn(self, slot: int) -> BaseProcess:
        worker_id = str(uuid.uuid4())
        if slot < len(self._worker_ids):
            self._worker_ids[slot] = worker_id
        else:
            self._worker_ids.append(worker_id)
        child = self._context.Process(target=self.target,
                                      args=(self.settings, self.queues, self.threads, worker_id),
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
            self._children = [self._spawn(slot) for slot in range(self.processes)]
            now = time.monotonic()
            self._started = [now] * self.processes
            self._quick_exits = [0] * self.processes
            self._respawn_at = [None] * self.processes
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
        now = time.monotonic()
        for i, child in enumerate(self._children):
            if child.is_alive():
                continue
            due = self._respawn_at[i]
            if due is None:  # an exit not seen before: one line, and the delay before the next child
                due = self._exited(i, child, now)
            if now >= due:
                self._respawn_at[i] = None
                self._children[i] = self._spawn(i)
                self._started[i] = time.monotonic()

    def _exited(self, slot: int, child: BaseProcess, now: float) -> float:
        """Note the exit of ``slot``'s child; returns when its replacement is due."""
        lived = now - self._started[slot]
        self._quick_exits[slot] = 1 if lived >= self.healthy_after_s else self._quick_exits[slot] + 1
        delay = respawn_delay(self._quick_exits[slot], self.first_respawn_delay_s, self.max_respawn_delay_s)
        if delay:
            log.warning("worker process %s exited with %s after %.1f s (%d in a row within %.0f s of starting); "
                        "starting another in %.0f s", child.pid, child.exitcode, lived, self._quick_exits[slot],
                        self.healthy_after_s, delay)
        else:
            log.warning("worker process %s exited with %s after %.1f s; starting another", child.pid,
                        child.exitcode, lived)
        if self._metrics_dir is not None and child.pid is not None:
            # mark_process_dead has no annotations in prometheus_client.
            mark_process_dead(child.pid, self._metrics_dir.path)  # type: ignore[no-untyped-call]
        if self.released is not None:
            try:
                self.released(self._worker_ids[slot])
            except Exception as exc:  # Redis down: the heartbeat timeout returns the jobs instead
                log.warning("could not release the jobs of worker process %s (%s); they come back after the "
                            "heartbeat timeout", child.pid, type(exc).__name__)
        self._respawn_at[slot] = now + delay
        return now + delay

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
