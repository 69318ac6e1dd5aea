"""``sendq scheduler``: the periodic loop (:mod:`worker.scheduler`) with its reconciler and opt-out sync."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from worker.actors import Actors
from worker.broker import build_broker
from worker.dependencies import Dependencies
from worker.embedded import resolve_redis
from worker.errors import StoreUnavailable
from worker.ops_server import OpsServer
from worker.optout_sync import OptOutSync, PeriodicOptOutSync
from worker.reconcile import Reconciler
from worker.scheduler import Scheduler
from worker.settings import Settings
from worker.store import Store
from worker.telnyx import TelnyxClient


def run_scheduler(settings: Settings) -> int:
    """Run the loop until SIGTERM or SIGINT; the exit code."""
    settings, embedded = resolve_redis(settings)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    broker = build_broker(settings)
    store = Store.from_url(settings.database_url)
    # Without an API key the scheduler still runs; the reconciler then only handles stuck sends (it warns).
    telnyx = TelnyxClient.from_settings(settings) if settings.api_key() else None
    actors = Actors(broker)
    optouts = PeriodicOptOutSync(OptOutSync(store, telnyx) if telnyx else None, settings.optout_sync_interval_s)
    scheduler = Scheduler(settings, store, actors, Reconciler(settings, store, telnyx, actors), optouts)
    ops = ops_server(settings, scheduler.health, scheduler.live)
    try:
        # Started during an outage: wait for the store and Redis (logged once each), /healthz naming them.
        if migrate_when_up(scheduler.dependencies, store, stop):
            scheduler.run(stop)
    finally:
        if ops:
            ops.close()
        if telnyx:
            telnyx.close()
        broker.close()
        store.close()
        if embedded:
            embedded.close()
    return 0


def migrate_when_up(dependencies: Dependencies, store: Store, stop: threading.Event) -> bool:
    """Wait for every dependency, then bring the store's schema up to date (waiting again if the store goes away
    meanwhile); False if ``stop`` was set first."""
    while dependencies.wait_at_start(stop):
        try:
            store.migrate()
            return True
        except StoreUnavailable as exc:
            dependencies.failed(exc)
    return False


def ops_server(settings: Settings, health: Callable[[], dict[str, str]],
               live: Callable[[], dict[str, str]] | None = None) -> OpsServer | None:
    """``/metrics``, ``/healthz`` and ``/livez`` on ``SENDQ_METRICS_PORT`` when it is set (see worker.ops_server)."""
    if settings.metrics_port is None:
        return None
    return OpsServer(settings.metrics_port, health=health, live=live,
                     multiprocess_dir=settings.prometheus_multiproc_dir).start()
