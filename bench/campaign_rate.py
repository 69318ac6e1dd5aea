"""Campaign pace and progress: a campaign over 50 senders against the simulator, and ``campaign status`` on a
store of 1,000,000 messages.

Rate. 50 long codes are each limited to ``--mps-per-sender`` R (``SENDQ_RATE_LIMITS``; the account limit is set
out of reach), so the configured total is 50 x R; the simulator (its own process, no webhooks, so messages stay
``submitted``) meters the same senders at R. ``sendq worker`` (2 processes x 8 threads, as in overhead.py) and
``sendq scheduler`` run while ``Producer.campaign`` streams ``--messages`` recipients in. The achieved rate is
counted at the simulator's arrivals over a steady-state window: from ``--warmup-s`` (10 s) after the first
arrival until ``--measure-s`` later, or, for a run to the end (``--measure-s 0``), until the arrival of the last
message the expander had to create (the last ~3 s of queued backlog drain after that, and are left out). Also
per sender: its achieved rate, the most arrivals in any 1 s (strict spacing at 1.2 msg/s allows 2), and the
longest wait in the simulator's own queue (0 unless sendq ran ahead of the limit). ``campaign status`` is polled
every 5 s meanwhile and its ``send_rate`` compared with the simulator's.

Status. Then the store is filled to ``--store`` (1,000,000) messages with INSERT ... SELECT generate_series:
a completed 100,000-message campaign (``--full``; the campaign a full run leaves, without waiting 28 minutes)
and final-status messages of 9 other campaigns and of single sends. ``Producer.campaign_status`` (what ``sendq
campaign status`` prints) and its heaviest queries, ``Campaigns.counts`` and ``Campaigns.recent_rate``, are
timed ``--repeat`` (50) times each for both campaigns, after ANALYZE and again after VACUUM; the plan of the
counts query (a sum over the campaign's counters) is printed. Goal (issue 8): status <= 50 ms. The campaign is
cancelled if still running, the PostgreSQL schema dropped and the Redis namespace deleted at the end.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/0 \\
        python bench/campaign_rate.py [--messages 100000] [--mps-per-sender 1.2] [--measure-s 0] [--status-only]

The full campaign at 60 msg/s takes 28 minutes; ``--messages 100000 --measure-s 120`` measures 2 minutes of it
and cancels the rest (about 5 minutes in all).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Processes, SimulatorProcess, fresh_settings

from producers.campaign import CampaignOptions
from producers.producer import Producer
from worker.campaigns.pacing import WINDOW_S
from worker.campaigns.store import ACTIVE, COMPLETED, RATE_WINDOW_S, Campaigns
from worker.settings import Settings
from worker.simulator.throughput import max_in_window

SENDERS = [f"+1312555{n:04d}" for n in range(1000, 1050)]
TEMPLATE = "Hi {first_name}, your code is {code}"
GOAL_MS = 50.0
#: Final statuses of the filler messages, by per-mille share.
FINAL_MIX = (("delivered", 960), ("delivery_failed", 20), ("expired", 10), ("suppressed", 5), ("failed", 5))
POLL_S = 5.0


def recipients(count: int):
    for i in range(count):
        yield {"phone": f"+1415{i:07d}", "first_name": f"Name{i}", "code": f"{i:06d}"}


# -- the run -------------------------------------------------------------------------------------------------

def run_campaign(settings: Settings, args: argparse.Namespace, sim_url: str,
                 full_id: str | None) -> dict[str, Any]:
    """Create the campaign with the workers running; returns its id and the status polls made meanwhile."""
    with Producer.connect(settings) as producer, Processes(
            settings, ["worker", "--processes", str(args.processes), "--threads", str(args.threads)],
            ["scheduler"]):
        t = time.monotonic()
        created = producer.campaign(recipients(args.messages), template=TEMPLATE, from_=SENDERS, name="rate bench")
        print(f"campaign {created['id']}: {created['recipients']:,} recipients stored in {time.monotonic() - t:.1f} s")
        polls = watch(producer, sim_url, {"run": created["id"], **({"full-size": full_id} if full_id else {})}, args)
        record = producer.campaign_status(created["id"])
        if record["status"] in ACTIVE:
            record = producer.cancel_campaign(created["id"])
            print(f"cancelled after the window: {record['messages']} (not created: counted as cancelled)")
    return {"id": created["id"], "polls": polls}


def watch(producer: Producer, sim_url: str, watched: dict[str, str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Until every message reached the simulator or the window is over: ``campaign status`` of the run's and
    the full-size campaign every POLL_S seconds, timed."""
    polls: list[dict[str, Any]] = []
    first_seen = None
    deadline = time.monotonic() + args.messages / (len(SENDERS) * args.mps_per_sender) * 2 + 300
    next_poll = time.monotonic()
    while time.monotonic() < deadline:
        arrived = httpx.get(f"{sim_url}/_sim/stats").json()["messages"]
        if arrived and first_seen is None:
            first_seen = time.monotonic()
        if arrived >= args.messages:
            break
        if first_seen and args.measure_s and time.monotonic() > first_seen + args.warmup_s + args.measure_s + 1:
            break
        if time.monotonic() >= next_poll:
            poll: dict[str, Any] = {"at": time.monotonic() - (first_seen or time.monotonic())}
            for label, campaign_id in watched.items():
                t = time.perf_counter()
                record = producer.campaign_status(campaign_id)
                poll[label] = {"ms": (time.perf_counter() - t) * 1000, "send_rate": record["send_rate"]}
            polls.append(poll)
            next_poll += POLL_S
        time.sleep(0.5)
    return polls


def window(times: list[float], args: argparse.Namespace, configured: float) -> tuple[float, float]:
    """The steady-state window, in simulator seconds: see the module docstring."""
    start = times[0] + args.warmup_s
    drain = math.ceil(configured * WINDOW_S)
    end = times[min(len(times), max(1, args.messages - drain)) - 1]
    if args.measure_s:
        end = min(end, start + args.measure_s)
    if end <= start:
        raise SystemExit(f"no steady state: the run lasted {times[-1] - times[0]:.1f} s after the first arrival")
    return start, end


def rate_figures(sim_url: str, polls: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Achieved rate in the window, overall and per sender, from the simulator's arrivals and queue."""
    configured = len(SENDERS) * args.mps_per_sender
    arrivals = httpx.get(f"{sim_url}/_sim/arrivals", timeout=60).json()["data"]
    refused = httpx.get(f"{sim_url}/_sim/throughput", timeout=60).json()["refused"]
    times = sorted(a["t"] for a in arrivals)
    start, end = window(times, args, configured)
    inside = [a for a in arrivals if start <= a["t"] < end]
    per_sender = {s: [a for a in arrivals if a["from"] == s] for s in SENDERS}
    in_window = [sum(1 for a in found if start <= a["t"] < end) / (end - start) for found in per_sender.values()]
    max_1s = max(max_in_window([(a["t"], 1) for a in found]) for found in per_sender.values() if found)
    steady = [p["run"]["send_rate"] for p in polls if args.warmup_s + RATE_WINDOW_S <= p["at"] <= end - times[0]]
    return {
        "arrived": len(arrivals), "window_s": [round(start - times[0], 1), round(end - times[0], 1)],
        "in_window": len(inside), "configured_per_s": configured,
        "achieved_per_s": round(len(inside) / (end - start), 2),
        "ratio": round(len(inside) / (end - start) / configured, 3),
        "sender_min_per_s": round(min(in_window), 3), "sender_median_per_s": round(statistics.median(in_window), 3),
        "sender_max_per_s": round(max(in_window), 3), "sender_max_in_1s": max_1s,
        "sim_max_queue_wait_s": round(max((a["departs"] - a["t"] for a in arrivals), default=0.0), 3),
        "sim_429s": sum(refused.values()),
        "status_send_rate_mean": round(statistics.fmean(steady), 2) if steady else None,
        "status_ms_under_load": {label: summary([p[label]["ms"] for p in polls])
                                 for label in ("run", "full-size") if polls and label in polls[0]},
    }


# -- the store of 1,000,000 messages -------------------------------------------------------------------------

FILL = """
INSERT INTO messages (id, kind, priority, sender, recipients, endpoint, body, status, status_at, telnyx_id,
                      attempts, errors, parts, job_gen, job_due_at, campaign_id, created_at, updated_at)
SELECT gen_random_uuid()::text, 'long_code', 'bulk', s.sender, json_build_array(s.phone), '/messages/long_code',
       json_build_object('from', s.sender, 'to', s.phone, 'text', 'Hi Name' || gs || ', your code is ' || gs),
       s.status, s.at, 'sim-' || gen_random_uuid()::text, 1, '[]'::json, 1, 0, s.at, s.campaign, s.at, s.at
FROM generate_series(1, CAST(:count AS integer)) AS gs,
CAST(:every AS integer) AS every, CAST(:full AS integer) AS full_size,
LATERAL (SELECT (:senders)[1 + gs % 50] AS sender, '+1646' || lpad((gs % 10000000)::text, 7, '0') AS phone,
                CASE WHEN gs % every = 0 AND gs <= every * full_size THEN CAST(:full_id AS text)
                     WHEN gs % 10 = 1 THEN NULL ELSE (:others)[1 + gs % 9] END AS campaign,
                {status} AS status,
                now() - interval '1 day' - gs * interval '10 ms' AS at) AS s
"""


def status_case() -> str:
    """A CASE giving each generated row a final status by FINAL_MIX (per mille of ``gs``)."""
    parts, upto = [], 0
    for status, share in FINAL_MIX:
        upto += share
        parts.append(f"WHEN gs % 1000 < {upto} THEN '{status}'")
    return f"CASE {' '.join(parts)} END"


def full_campaign(book: Campaigns, size: int) -> str:
    """A completed campaign of ``size`` recipients, each with its message (created by :func:`fill`)."""
    checked = CampaignOptions(template=TEMPLATE, senders=SENDERS).check(None)
    row = book.insert(**{**checked, "name": "full-size (generated)"})
    with book.engine.begin() as conn:
        conn.execute(sa.text("UPDATE campaigns SET status = :status, rows_read = :n, recipients = :n, expanded = :n, "
                             "expanded_through = :n, ingested = true, completed_at = now() WHERE id = :id"),
                     {"status": COMPLETED, "n": size, "id": row["id"]})
    return str(row["id"])


def fill(engine: sa.Engine, full_id: str, full: int, count: int) -> None:
    """``count`` final-status messages: ``full`` of them (every k-th row, so that its rows are spread over the
    table as a campaign's are among other traffic) of campaign ``full_id``, the rest of 9 other campaigns and
    single sends."""
    if count < full:
        raise SystemExit(f"the store already holds too many messages to add {full:,} for the full-size campaign")
    query = sa.text(FILL.format(status=status_case())).bindparams(
        sa.bindparam("senders", type_=sa.ARRAY(sa.Text)), sa.bindparam("others", type_=sa.ARRAY(sa.Text)))
    with engine.begin() as conn:
        conn.execute(query, {"count": count, "senders": SENDERS, "full_id": full_id, "full": full,
                             "every": count // full, "others": [str(uuid.uuid4()) for _ in range(9)]})


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"p50": round(statistics.median(ordered), 1), "p99": round(p99, 1), "max": round(ordered[-1], 1)}


def timed(call: Callable[[], object], repeat: int) -> dict[str, float]:
    call()  # a first call opens the pools' connections
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t) * 1000)
    return summary(samples)


def time_status(producer: Producer, campaigns_: dict[str, str], repeat: int, stage: str) -> dict[str, Any]:
    book = Campaigns(producer.store.engine, producer.store.reader)
    found: dict[str, Any] = {}
    for label, campaign_id in campaigns_.items():
        figures = {"status": timed(lambda c=campaign_id: producer.campaign_status(c), repeat),
                   "counts": timed(lambda c=campaign_id: book.counts(c), repeat),
                   "recent_rate": timed(lambda c=campaign_id: book.recent_rate(c), repeat)}
        messages = sum(book.counts(campaign_id).values())
        found[label] = {"messages": messages, **figures}
        print(f"{stage:>13} {label:>13} ({messages:7,} msgs): "
              + "  ".join(f"{name} p50 {f['p50']:6.1f} p99 {f['p99']:6.1f} ms" for name, f in figures.items()))
    return found


def explain(engine: sa.Engine, campaign_id: str) -> list[str]:
    """The plan of ``Campaigns.counts``: a sum over the campaign's counters (worker.store.campaign_counts)."""
    with engine.connect() as conn:
        plan = conn.execute(sa.text("EXPLAIN (ANALYZE, BUFFERS) SELECT status, sum(n) FROM campaign_counts "
                                    "WHERE campaign_id = :id GROUP BY status"), {"id": campaign_id}).scalars()
        return list(plan)


def vacuum(engine: sa.Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM (ANALYZE) messages"))
        conn.execute(sa.text("VACUUM (ANALYZE) message_history"))


def fill_store(producer: Producer, args: argparse.Namespace) -> str:
    """Fill the store to ``args.store`` messages, a full-size campaign among them; returns that campaign's id."""
    engine = producer.store.engine
    with engine.connect() as conn:
        present = conn.execute(sa.text("SELECT count(*) FROM messages")).scalar() or 0
    full_id = full_campaign(Campaigns(engine, producer.store.reader), args.full)
    t = time.monotonic()
    fill(engine, full_id, args.full, args.store - present)
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT count(*) FROM messages")).scalar() or 0
        conn.execute(sa.text("ANALYZE messages"))
        conn.execute(sa.text("ANALYZE message_history"))
        conn.commit()
        size = conn.execute(sa.text("SELECT pg_size_pretty(pg_relation_size('messages')), "
                                    "pg_size_pretty(pg_indexes_size('messages')), current_setting('shared_buffers')")
                            ).one()
    print(f"store filled to {total:,} messages in {time.monotonic() - t:.0f} s (messages: table {size[0]}, indexes "
          f"{size[1]}; shared_buffers {size[2]}); full-size campaign {full_id}")
    return full_id


def idle_figures(settings: Settings, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Fill the store, then time ``campaign status`` of the full-size campaign before and after VACUUM."""
    with Producer.connect(settings) as producer:
        full_id = fill_store(producer, args)
        found = {"not_vacuumed": time_status(producer, {"full-size": full_id}, args.repeat, "not vacuumed")}
        plans = {"not vacuumed": explain(producer.store.engine, full_id)}
        vacuum(producer.store.engine)
        found["vacuumed"] = time_status(producer, {"full-size": full_id}, args.repeat, "vacuumed")
        plans["vacuumed"] = explain(producer.store.engine, full_id)
    for stage, plan in plans.items():
        print(f"plan of counts(full-size), {stage}:")
        print("\n".join(f"    {line}" for line in plan))
    return full_id, found


def after_run(settings: Settings, run_id: str, args: argparse.Namespace) -> dict[str, Any]:
    with Producer.connect(settings) as producer:
        with producer.store.engine.connect() as conn:
            total = conn.execute(sa.text("SELECT count(*) FROM messages")).scalar() or 0
        print(f"after the run the store holds {total:,} messages")
        return {"store_messages": total, **time_status(producer, {"run": run_id}, args.repeat, "after the run")}


# -- cleanup and output --------------------------------------------------------------------------------------

def drop_namespace(settings: Settings) -> None:
    """Drop the benchmark's PostgreSQL schema and Redis keys."""
    import redis

    schema = re.search(r"search_path%3D(\w+)", settings.database_url)
    if schema and os.environ.get("DATABASE_URL"):
        engine = sa.create_engine(os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema.group(1)} CASCADE"))
        engine.dispose()
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url)
        for key in client.scan_iter(f"{settings.namespace}:*", count=1000):
            client.delete(key)
        client.close()


def print_rate(rate: dict[str, Any], args: argparse.Namespace) -> None:
    start, end = rate["window_s"]
    print(f"configured: {len(SENDERS)} senders x {args.mps_per_sender:g} msg/s = {rate['configured_per_s']:g} msg/s; "
          f"{rate['arrived']:,} messages reached the simulator")
    print(f"window {start:g}-{end:g} s after the first arrival: {rate['in_window']:,} arrivals = "
          f"{rate['achieved_per_s']:.2f} msg/s, achieved / configured = {rate['ratio']:.3f}")
    print(f"per sender in the window: min {rate['sender_min_per_s']:.3f}, median {rate['sender_median_per_s']:.3f}, "
          f"max {rate['sender_max_per_s']:.3f} msg/s (limit {args.mps_per_sender:g})")
    print(f"most arrivals of one sender in any 1 s: {rate['sender_max_in_1s']} (limit {args.mps_per_sender:g}/s; "
          f"strict spacing allows {math.floor(args.mps_per_sender) + 1}); longest wait in the simulator's queue: "
          f"{rate['sim_max_queue_wait_s']:.3f} s; 429s: {rate['sim_429s']}")
    print(f"campaign status during the run: send_rate mean {rate['status_send_rate_mean']} msg/s in the window")
    for label, load in rate["status_ms_under_load"].items():
        print(f"  under load, {label:>9}: status p50 {load['p50']} ms, p99 {load['p99']} ms, max {load['max']} ms")


def verdict(status: dict[str, Any]) -> str:
    """The goal, judged on the full-size campaign idle (``sendq campaign status`` run by hand)."""
    idle = {stage: found["full-size"]["status"]["p99"] for stage, found in status["idle"].items()}
    if not idle:
        return "goal: campaign status <= 50 ms: not measured (--store 0)"
    judged = ", ".join(f"{stage} p99 {p99} ms: {'met' if p99 <= GOAL_MS else 'NOT met'}" for stage, p99 in idle.items())
    return f"goal: campaign status of the full-size campaign <= {GOAL_MS:g} ms: {judged}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--mps-per-sender", type=float, default=1.2)
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--measure-s", type=float, default=0.0, help="0: until the campaign is sent")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--store", type=int, default=1_000_000, help="messages in the store for the status query")
    parser.add_argument("--full", type=int, default=100_000, help="messages of the generated full-size campaign")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--status-only", action="store_true", help="skip the run: only the status query")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL schema (to look into it)")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (and REDIS_URL): the store is filled with SQL")

    limits = dict.fromkeys(SENDERS, args.mps_per_sender)
    flags = [flag for sender in SENDERS for flag in ("--sender-mps", f"{sender}={args.mps_per_sender}")]
    rate = run_idle = None
    with SimulatorProcess(*flags) as sim_url, tempfile.TemporaryDirectory() as tmp:
        settings = fresh_settings(tmp, telnyx_base_url=f"{sim_url}/v2", rate_limits=limits,
                                  account_mps={"sms": 100_000.0, "mms": 100_000.0})
        try:
            full_id, idle = idle_figures(settings, args) if args.store else (None, {})
            if not args.status_only:
                run = run_campaign(settings, args, sim_url, full_id)
                rate = rate_figures(sim_url, run["polls"], args)
                run_idle = after_run(settings, run["id"], args)
        finally:
            if args.keep:
                print(f"kept: {settings.database_url} (Redis namespace {settings.namespace})")
            else:
                drop_namespace(settings)
    if rate:
        print_rate(rate, args)
    status = {"idle": idle, "under_load": rate["status_ms_under_load"] if rate else None, "after_run": run_idle}
    print(verdict(status))
    print(json.dumps({"benchmark": "campaign_rate", "date": datetime.now(UTC).date().isoformat(),
                      "machine": f"{platform.machine()} {os.cpu_count()} cpu",
                      "store": settings.database_url.split(":")[0], "messages": args.messages,
                      "mps_per_sender": args.mps_per_sender, "processes": args.processes, "threads": args.threads,
                      "store_messages": args.store, "rate": rate, "status": status}))


if __name__ == "__main__":
    main()
