"""Metrics read at scrape time from Redis and the store, for ``GET /metrics`` of ``sendq web``.

What no single process can count is read where it lives, when Prometheus asks:

- queue depth per queue, from dramatiq's Redis layout: ``{ns}:{queue}`` is the LIST of ready message ids,
  ``{ns}:{queue}.msgs`` the HASH of every message not yet acknowledged (ready, prefetched or running),
  ``{ns}:{queue}.DQ.msgs`` the same for delayed messages (waiting in Redis or held by a worker until their
  eta) and ``{ns}:{queue}.XQ`` the ZSET of dead letters;
- the scheduler's last tick (a heartbeat it writes to Redis), held senders, sender utilisation;
- scheduled messages due and overdue, and campaign totals, from the store.

Every read is O(1) per queue, or an indexed count bounded by what is due or running. Each source runs with a
deadline in its own thread: a slow Redis or database costs the scrape at most ``timeout_s`` and is reported by
``sendq_collector_up{source}`` = 0 instead of hanging Prometheus.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker import statuses
from worker.queues import QUEUES
from worker.sender_usage import UTILISATION_COMMANDS, queue_utilisation
from worker.store import Store, campaigns, messages

log = logging.getLogger(__name__)

#: A scheduled message this long past its send_at and still not promoted is overdue.
OVERDUE_S = 60
#: Campaign statuses that are still moving (the totals cover these).
ACTIVE_CAMPAIGNS = ("ingesting", "scheduled", "running", "paused")
CAMPAIGN_STATUSES = (*ACTIVE_CAMPAIGNS, "cancelled", "completed")
QUEUE_STATES = ("ready", "in_progress", "delayed", "dead")


def heartbeat_key(namespace: str, process: str) -> str:
    return f"{namespace}:heartbeat:{process}"


def beat(client: redis.Redis, namespace: str, process: str = "scheduler", *, now: float | None = None) -> None:
    """Record that ``process`` completed a cycle now (the collector exports it as a timestamp)."""
    client.set(heartbeat_key(namespace, process), repr(time.time() if now is None else now), ex=7 * 24 * 3600)


def holds_key(namespace: str) -> str:
    """The ZSET of held senders, scored by when their hold lapses (see :mod:`worker.holds`)."""
    return f"{namespace}:holds"


@dataclass
class Gauges:
    """The families one source produced."""

    families: list[Metric] = field(default_factory=list)

    def gauge(self, name: str, documentation: str, labels: Iterable[str] = (), unit: str = "") -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=list(labels), unit=unit)
        self.families.append(family)
        return family


class RedisSource:
    """Queue depths, the scheduler's heartbeat, held senders and sender utilisation: one pipelined round trip."""

    name = "redis"

    def __init__(self, client: redis.Redis, namespace: str, queues: Iterable[str] = QUEUES,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.namespace = namespace
        self.queues = tuple(queues)
        self.clock = clock

    def read(self) -> Gauges:
        ns, now = self.namespace, self.clock()
        pipe = self.client.pipeline(transaction=False)
        for queue in self.queues:
            pipe.llen(f"{ns}:{queue}")
            pipe.hlen(f"{ns}:{queue}.msgs")
            pipe.hlen(f"{ns}:{queue}.DQ.msgs")
            pipe.zcard(f"{ns}:{queue}.XQ")
        pipe.get(heartbeat_key(ns, "scheduler"))
        pipe.zcount(holds_key(ns), f"({now}", "+inf")
        pipe.zscore(holds_key(ns), "*")
        utilisation = queue_utilisation(pipe, ns, now)
        answers = pipe.execute()
        depth_answers, rest = answers[:4 * len(self.queues)], answers[4 * len(self.queues):]
        heartbeat, held, account_until = rest[:3]

        out = Gauges()
        depth = out.gauge("sendq_queue_messages", "Jobs in a dramatiq queue, by queue and state (ready: waiting; "
                          "in_progress: fetched by a worker, not acknowledged; delayed: due later; dead: dead "
                          "letters).", ["queue", "state"])
        for i, queue in enumerate(self.queues):
            ready, unacked, delayed, dead = (int(v) for v in depth_answers[4 * i:4 * i + 4])
            for state, value in zip(QUEUE_STATES, (ready, max(0, unacked - ready), delayed, dead), strict=True):
                depth.add_metric([queue, state], value)
        out.gauge("sendq_scheduler_last_tick_timestamp_seconds", "When the scheduler last completed a tick (Unix "
                  "time; 0 if it never has).").add_metric([], float(heartbeat or 0))
        account_held = account_until is not None and float(account_until) > now
        held_gauge = out.gauge("sendq_senders_held", "Senders held now after a Telnyx error only an operator can "
                               "fix, by scope (account: every sender is held).", ["scope"])
        held_gauge.add_metric(["sender"], int(held) - int(account_held))
        held_gauge.add_metric(["account"], int(account_held))
        ratio = out.gauge("sendq_limiter_utilization_ratio", "Share of their rate the active senders of a type used "
                          "over the last 10 s, by sender type.", ["sender_type"])
        for sender_type, share in utilisation(rest[3:3 + UTILISATION_COMMANDS]).items():
            ratio.add_metric([sender_type], share)
        return out


class StoreSource:
    """Scheduled messages due and overdue, and campaign totals: indexed counts, with a statement timeout."""

    name = "store"

    def __init__(self, store: Store, *, timeout_s: float = 2.0, overdue_s: float = OVERDUE_S) -> None:
        self.store = store
        self.timeout_ms = int(timeout_s * 1000)
        self.overdue_s = overdue_s

    def read(self) -> Gauges:
        now = datetime.now(UTC)
        with self.store.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # A scrape must never hold a database connection for long; SET LOCAL ends with the transaction.
                conn.execute(sa.text(f"SET LOCAL statement_timeout = {self.timeout_ms}"))
            due, overdue = self._scheduled(conn, now)
            by_status: dict[str, int] = dict(
                conn.execute(sa.select(campaigns.c.status, sa.func.count()).group_by(campaigns.c.status)).all())
            recipients, expanded = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(campaigns.c.recipients), 0),
                          sa.func.coalesce(sa.func.sum(campaigns.c.expanded), 0))
                .where(campaigns.c.status.in_(ACTIVE_CAMPAIGNS))).one()
            campaign_messages: dict[str, int] = dict(conn.execute(
                sa.select(messages.c.status, sa.func.count())
                .select_from(messages.join(campaigns, messages.c.campaign_id == campaigns.c.id))
                .where(campaigns.c.status.in_(ACTIVE_CAMPAIGNS)).group_by(messages.c.status)).all())
        out = Gauges()
        out.gauge("sendq_scheduled_due_messages", "Messages scheduled by sendq whose send_at has passed and that the "
                  "scheduler has not handed to a worker yet.").add_metric([], due)
        out.gauge("sendq_scheduled_overdue_messages", f"Scheduled messages due more than {OVERDUE_S} s ago and not "
                  "handed to a worker yet (the scheduler is stalled or behind).").add_metric([], overdue)
        family = out.gauge("sendq_campaigns", "Campaigns by status.", ["status"])
        for status in CAMPAIGN_STATUSES:
            family.add_metric([status], by_status.get(status, 0))
        family = out.gauge("sendq_campaign_recipients", "Recipients of the campaigns not final yet: all of them "
                           "(total) and those that have their message (expanded).", ["state"])
        family.add_metric(["total"], int(recipients))
        family.add_metric(["expanded"], int(expanded))
        family = out.gauge("sendq_campaign_messages", "Messages of the campaigns not final yet, by status.",
                           ["status"])
        for status in sorted(statuses.ALL):
            family.add_metric([status], campaign_messages.get(status, 0))
        return out

    def _scheduled(self, conn: sa.Connection, now: datetime) -> tuple[int, int]:
        overdue_before = now - timedelta(seconds=self.overdue_s)
        # Telnyx-side scheduled messages (they have a telnyx id) are Telnyx's to send, not the scheduler's.
        due, overdue = conn.execute(
            sa.select(sa.func.count(),
                      sa.func.coalesce(sa.func.sum(sa.case((messages.c.send_at <= overdue_before, 1), else_=0)), 0))
            .where(messages.c.status == statuses.SCHEDULED, messages.c.send_at <= now,
                   messages.c.telnyx_id.is_(None))).one()
        return int(due), int(overdue)


class SendqCollector(Collector):
    """A Prometheus collector over ``sources``; each read in its own thread, cut off after ``timeout_s``.

    A source that fails or is too slow yields nothing but ``sendq_collector_up{source} 0``: the scrape still
    answers with everything else. One thread per source: a hung read is not started again until it ends.
    """

    def __init__(self, sources: Iterable[RedisSource | StoreSource], *, timeout_s: float = 2.5) -> None:
        self.sources = list(sources)
        self.timeout_s = timeout_s
        self._pools = {s.name: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"collect-{s.name}")
                       for s in self.sources}
        self._running: dict[str, concurrent.futures.Future[Gauges]] = {}

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families are built at collect time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        futures = {s.name: self._submit(s) for s in self.sources}
        up = GaugeMetricFamily("sendq_collector_up", "Whether the last scrape could read a source (redis, store).",
                               labels=["source"])
        took = GaugeMetricFamily("sendq_collector_duration_seconds", "How long the last scrape's read of a source "
                                 "took.", labels=["source"])
        for name, future in futures.items():
            ok, gauges = self._result(name, future, started)
            up.add_metric([name], 1 if ok else 0)
            took.add_metric([name], time.monotonic() - started)
            yield from gauges.families
        yield up
        yield took

    def _submit(self, source: RedisSource | StoreSource) -> concurrent.futures.Future[Gauges]:
        running = self._running.get(source.name)
        if running is None or running.done():
            running = self._running[source.name] = self._pools[source.name].submit(source.read)
        return running

    def _result(self, name: str, future: concurrent.futures.Future[Gauges], started: float) -> tuple[bool, Gauges]:
        try:
            return True, future.result(timeout=max(0.0, self.timeout_s - (time.monotonic() - started)))
        except concurrent.futures.TimeoutError:
            log.warning("metrics: reading %s took longer than %.1f s; skipped in this scrape", name, self.timeout_s)
        except Exception as exc:
            log.warning("metrics: reading %s failed: %s", name, exc)
        return False, Gauges()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


def redis_for_metrics(url: str, timeout_s: float = 1.0) -> redis.Redis:
    """A Redis client of its own for the collector, with short timeouts (the broker's may block for longer)."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                health_check_interval=30)


def build_collector(redis_url: str, namespace: str, store: Store) -> tuple[SendqCollector, Callable[[], Any]]:
    """The collector ``sendq web`` exposes, and how to close what it opened."""
    client = redis_for_metrics(redis_url)
    collector = SendqCollector([RedisSource(client, namespace), StoreSource(store)])

    def close() -> None:
        collector.close()
        client.close()

    return collector, close
