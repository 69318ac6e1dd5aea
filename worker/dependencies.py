"""The services a sendq process needs (the store, Redis), and what the process does while one is down.

An outage is the dependency's failure, not the work's: a job that fails because the store or Redis stopped
answering waits for it and runs again, without spending a retry (:class:`worker.dramatiq_internals.OutageRetries`),
and the outage is logged twice, when it starts and when it ends, however many calls failed in between. The failures
are counted in ``sendq_dependency_errors_total`` and the state is ``sendq_dependency_up``; ``/healthz`` names
the dependency that is down.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import redis
from dramatiq.errors import BrokerConnectionError

from worker import metrics
from worker.errors import DependencyUnavailable, RedisUnavailable, StoreUnavailable

log = logging.getLogger("sendq.dependencies")

STORE, REDIS = StoreUnavailable.dependency, RedisUnavailable.dependency
#: While a dependency is down its probe runs this often at first, backing off to ``MAX_POLL_S``: a short outage
#: is noticed within a fraction of a second, a long one costs a probe every few seconds.
FIRST_POLL_S, MAX_POLL_S = 0.1, 2.0

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, BrokerConnectionError)


def unavailable(error: BaseException | None) -> DependencyUnavailable | None:
    """The outage ``error`` stands for, or None when it is an ordinary failure.

    The store's engine raises :class:`StoreUnavailable` itself; Redis errors come from redis-py and dramatiq
    (``BusyLoadingError`` too: a restarted Redis still loading its data is not there yet).
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DependencyUnavailable):
            return error
        if isinstance(error, _REDIS_ERRORS):
            text = str(error).strip().splitlines()
            return RedisUnavailable(text[0] if text else type(error).__name__)
        error = error.__cause__ or error.__context__
    return None


F = TypeVar("F", bound=Callable[..., Any])


def raising_outages(function: F) -> F:
    """``function``, raising :class:`RedisUnavailable` where redis-py or dramatiq raised a connection error (and
    :class:`StoreUnavailable` as the engine does): the Python API's callers catch one exception per outage."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except DependencyUnavailable:
            raise
        except Exception as exc:
            outage = unavailable(exc)
            if outage is None:
                raise
            raise outage from exc

    return wrapper  # type: ignore[return-value]


class Dependency:
    """One service: whether it answers, the moment that changed, and a probe to find out again."""

    def __init__(self, name: str, probe: Callable[[], object]) -> None:
        self.name = name
        self.probe = probe
        self._lock = threading.Lock()
        self._probing = threading.Lock()
        self._up = threading.Event()
        self._up.set()
        self._down_since: float | None = None
        self.reason = ""
        metrics.DEPENDENCY_UP.labels(name).set(1)
        metrics.DEPENDENCY_ERRORS.labels(name)  # exported at 0 from the start: rate() needs the series before an outage

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def failed(self, error: BaseException | str) -> None:
        """A call to the dependency failed because it is down: the first failure of an outage is logged."""
        metrics.DEPENDENCY_ERRORS.labels(self.name).inc()
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self.reason = str(error)
            self._up.clear()
        metrics.DEPENDENCY_UP.labels(self.name).set(0)
        log.warning("%s is unavailable (%s); waiting for it", self.name, self.reason)
        # Someone must notice the end even when nothing waits for it (a consumer that reported the outage and
        # reconnects by itself): a probe of its own, until the dependency answers.
        threading.Thread(target=self.wait, name=f"sendq-probe-{self.name}", daemon=True).start()

    def recovered(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            seconds = time.monotonic() - self._down_since
            self._down_since = None
            self.reason = ""
            self._up.set()
        metrics.DEPENDENCY_UP.labels(self.name).set(1)
        log.warning("%s is available again after %.1f s", self.name, seconds)

    def check(self) -> bool:
        """Probe now; whether the dependency answered."""
        try:
            self.probe()
        except Exception as exc:
            outage = unavailable(exc)
            self.failed(outage.reason if outage else f"{type(exc).__name__}: {exc}")
            return False
        self.recovered()
        return True

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Block until the dependency answers (one waiting thread probes, the others wait for its answer);
        False if ``stop`` was set first."""
        delay = FIRST_POLL_S
        while not self._up.is_set():
            if stop is not None and stop.is_set():
                return False
            if self._probing.acquire(blocking=False):
                try:
                    if self.check():
                        break
                finally:
                    self._probing.release()
            self._up.wait(delay)
            delay = min(delay * 2, MAX_POLL_S)
        return True


class Dependencies:
    """The dependencies of one process, by name."""

    def __init__(self, dependencies: Iterable[Dependency]) -> None:
        self.by_name: Mapping[str, Dependency] = {d.name: d for d in dependencies}

    @classmethod
    def of(cls, *, store: Callable[[], object] | None = None, redis: Callable[[], object] | None = None,
           ) -> Dependencies:
        """Dependencies probed by the given callables (``Store.ping``, ``Redis.ping``)."""
        probes = {STORE: store, REDIS: redis}
        return cls(Dependency(name, probe) for name, probe in probes.items() if probe is not None)

    def failed(self, outage: DependencyUnavailable) -> None:
        dependency = self.by_name.get(outage.dependency)
        if dependency is not None:
            dependency.failed(outage.reason)

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Block until every dependency answers; False if ``stop`` was set first."""
        return all(d.wait(stop) for d in self.by_name.values())

    def wait_at_start(self, stop: threading.Event | None = None) -> bool:
        """Probe every dependency once and wait for those that do not answer (a process started during an
        outage waits for it instead of exiting)."""
        for dependency in self.by_name.values():
            dependency.check()
        return self.wait(stop)

    def health(self) -> dict[str, str]:
        """``{"store": "ok", "redis": "error: unavailable (...)"}`` for ``/healthz``, as known from recent calls."""
        return {name: "ok" if d.up else f"error: unavailable ({d.reason})" for name, d in self.by_name.items()}
