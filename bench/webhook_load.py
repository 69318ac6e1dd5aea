"""Webhook load: verified webhooks per second and latency of one ``sendq web`` process, next to a reference handler.

The reference is a bare ASGI callable written here that does only what a webhook receiver cannot skip: read the
body, verify the Ed25519 signature (PyNaCl) and timestamp, parse the JSON for ``data.id``, ``SET NX`` that id and
``RPUSH`` the body onto a list, both through redis-py's asyncio client. Both servers run under uvicorn with
``sendq web``'s options (one process; uvloop and httptools, as uvicorn picks them when installed; log level
warning), one after the other in alternating order over ``--rounds`` rounds, on the same Redis and namespace.

Every request is a distinct ``message.finalized`` envelope shaped like the simulator's, signed with one key
whose public half is the servers' ``TELNYX_PUBLIC_KEY``; bodies are signed just before each phase so their
timestamps are fresh. The load generators run in their own processes so they do not share the server's GIL:

* max throughput: ``wrk`` (closed loop, ``--connections`` keep-alive connections, one thread) after a 3 s
  warm-up, with a Lua script that sends each pre-built request once and stops when they run out. Latency is
  wrk's: write to full response, so service time plus queueing behind the other connections. The server's
  CPU time per request is reported too: it moves much less than requests per second with the machine's other
  load, so the two ratios together say whether a low throughput ratio is noise.
* fixed rate (``--rate``, default 1,000/s): an open-loop asyncio generator in this file (wrk2's ``-R`` is not
  in Debian). Requests are due at fixed intervals whatever the server does; latency runs from the due time,
  so a stalled server is charged for every request that waited (no coordinated omission). The generator's own
  lateness is reported as ``lag``: a high lag means the generator, not the server, fell behind.

After each phase the run is checked: no non-2xx answer nor socket error, as many accepted webhooks as answered
requests, and each one in exactly one job: for sendq (one ``apply_events`` job per batch), the ``accepted``
count of ``/metrics`` equals the events held by the jobs of the ``events`` queue, their distinct event ids and
the dedupe keys, the queue's length equals its message hash, and no other result (duplicate, refused) was
counted; for the reference (one list entry per event), its list's length equals its distinct ids and its
dedupe keys. Events per job is printed for sendq. The
namespace's keys are deleted after each phase and at the end. The load average is printed: other processes on
the machine make the absolute figures move, which is why both servers are measured in the same run, and why
the summary and the goals take the median over rounds (each round is printed too).

    python bench/webhook_load.py [--duration 12] [--connections 64] [--rate 1000] [--rounds 3]

Needs ``wrk`` (``apt-get install wrk``). ``REDIS_URL`` defaults to redis://127.0.0.1:6379/0; the store is
``DATABASE_URL`` or a throwaway SQLite file (``sendq web`` opens it but does not use it per webhook).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import redis
from harness import ROOT, environment, free_port, fresh_settings, wait_http

from worker.settings import Settings
from worker.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, Signer

WEBHOOK_PATH = "/webhooks/telnyx"
MAX_BODY_BYTES = 256 * 1024
TOLERANCE_S = 300
#: Requests signed for the warm-up; the warm-up also sizes the measured phase.
WARMUP_REQUESTS = 6_000
WARMUP_S = 3

# Sends each pre-built request once, then stops the thread: a second lap would be answered "duplicate" and
# would not be the work being measured. Requests are NUL-separated in the file (args[1]); thread k of n (args[2])
# takes every n-th one so threads never send the same event. A stopped thread may still be asked for a request
# or two by connections served in the same loop turn: they get a GET /healthz, counted as "spare".
WRK_SCRIPT = r"""
local threads = {}
function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end
function init(args)
  local nthreads = tonumber(args[2])
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  requests, sent, spare = {}, 0, 0
  spare_request = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
  local pos, k = 1, 0
  while true do
    local stop = data:find("\0", pos, true)
    if not stop then break end
    if k % nthreads == index then requests[#requests + 1] = data:sub(pos, stop - 1) end
    k, pos = k + 1, stop + 1
  end
end
function request()
  if sent >= #requests then
    spare = spare + 1
    return spare_request
  end
  sent = sent + 1
  if sent == #requests then wrk.thread:stop() end
  return requests[sent]
end
function done(summary, latency, _)
  local sent, spare = 0, 0
  for _, thread in ipairs(threads) do
    sent, spare = sent + thread:get("sent"), spare + thread:get("spare")
  end
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "sent": %d, "spare": %d, "duration_us": %d, "p50_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, sent, spare, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# -- requests ---------------------------------------------------------------------------------------------------

def finalized_event(now: datetime) -> dict[str, Any]:
    """A ``message.finalized`` envelope as the simulator sends it (one recipient, delivered), with a new id."""
    stamp = now.isoformat(timespec="milliseconds")
    cost = {"amount": "0.0040", "currency": "USD"}
    payload = {
        "record_type": "message", "direction": "outbound", "id": str(uuid.uuid4()), "type": "SMS",
        "messaging_profile_id": "400176a2-5a1b-4f45-9a1b-3b1f1b0d6c11",
        "organization_id": "9d76d591-1b7d-405d-8c64-1320ee070245",
        "from": {"phone_number": "+13125550100", "carrier": "Telnyx", "line_type": "Wireless"},
        "to": [{"phone_number": "+13125550002", "status": "delivered", "carrier": "T-MOBILE USA, INC.",
                "line_type": "Wireless"}],
        "cc": [], "text": "Your order has shipped and will arrive on Tuesday.", "subject": None, "media": [],
        "encoding": "GSM-7", "parts": 1, "num_chars": 51, "smart_encoding_applied": False, "cost": cost,
        "cost_breakdown": {"rate": cost, "carrier_fee": {"amount": "0.0000", "currency": "USD"}},
        "received_at": stamp, "sent_at": stamp, "completed_at": stamp, "valid_until": None,
        "wait_seconds": 0.0, "errors": [], "tags": [], "tcr_campaign_id": None, "tcr_campaign_billable": False,
        "tcr_campaign_registered": None, "webhook_url": "https://example.com/webhooks/telnyx",
        "webhook_failover_url": None,
    }
    return {"data": {"event_type": "message.finalized", "id": str(uuid.uuid4()), "occurred_at": stamp,
                     "payload": payload, "record_type": "event"},
            "meta": {"attempt": 1, "delivered_to": "https://example.com/webhooks/telnyx"}}


def write_requests(path: Path, count: int, signer: Signer, port: int) -> Path:
    """``count`` raw HTTP/1.1 requests, each a distinct signed event, NUL-separated (JSON never holds a NUL)."""
    now = datetime.now(UTC) - timedelta(seconds=1)
    timestamp = int(time.time())
    with path.open("wb") as out:
        for _ in range(count):
            body = json.dumps(finalized_event(now)).encode()
            headers = signer.headers(body, timestamp)
            head = (f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n{SIGNATURE_HEADER}: {headers[SIGNATURE_HEADER]}\r\n"
                    f"{TIMESTAMP_HEADER}: {headers[TIMESTAMP_HEADER]}\r\n\r\n")
            out.write(head.encode() + body + b"\0")
    return path


def read_requests(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\0")[:-1]


# -- load generators --------------------------------------------------------------------------------------------

def run_wrk(port: int, requests: Path, duration_s: float, connections: int, threads: int, script: Path) -> dict:
    """Closed-loop maximum throughput; figures from wrk's own summary."""
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration_s))}s",
               "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}{WEBHOOK_PATH}", "--", str(requests),
               str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
    if done.returncode:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    output = done.stdout
    found = re.search(r"^RESULT (.*)$", output, re.M)
    if not found:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    raw = json.loads(found.group(1))
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {"requests": raw["requests"], "sent": raw["sent"], "spare": raw["spare"],
            "seconds": round(raw["duration_us"] / 1e6, 2),
            "per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1), "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000, "errors": errors}


def run_open_loop(port: int, requests: Path, rate: float, duration_s: float, connections: int) -> dict:
    """Fixed-rate load from the open-loop generator below, in its own process."""
    command = [sys.executable, __file__, "open-loop", "--port", str(port), "--requests", str(requests),
               "--rate", str(rate), "--duration", str(duration_s), "--connections", str(connections)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    found = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
    await reader.readexactly(int(found.group(1)) if found else 0)
    return int(head[9:12])


async def open_loop(port: int, requests: list[bytes], rate: float, duration_s: float, connections: int) -> dict:
    """Request i is due at start + i / rate; a free keep-alive connection takes it, or it waits for one."""
    due: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    latencies: list[float] = []
    lags: list[float] = []
    statuses: Counter[int] = Counter()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (item := await due.get()) is not None:
            statuses[await _exchange(reader, writer, item[1])] += 1
            latencies.append(time.perf_counter() - item[0])
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    total = min(len(requests), int(rate * duration_s))
    start = time.perf_counter() + 0.2
    for i in range(total):
        at = start + i / rate
        if (ahead := at - time.perf_counter()) > 0:
            await asyncio.sleep(ahead)
        lags.append(max(0.0, time.perf_counter() - at))
        due.put_nowait((at, requests[i]))
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "seconds": round(elapsed, 2), "per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 50) * 1000, 2), "p99_ms": round(percentile(latencies, 99) * 1000, 2),
            "max_ms": round(max(latencies) * 1000, 2), "lag_p99_ms": round(percentile(lags, 99) * 1000, 2),
            "errors": sum(n for status, n in statuses.items() if not 200 <= status < 300)}


def open_loop_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="webhook_load.py open-loop")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    _use_uvloop()
    result = asyncio.run(open_loop(args.port, read_requests(args.requests), args.rate, args.duration,
                                   args.connections))
    print(json.dumps(result))


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# -- the reference handler --------------------------------------------------------------------------------------

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class ReferenceApp:
    """Verify + dedupe + enqueue and nothing else: a bare ASGI callable, no framework, metrics nor job envelope."""

    def __init__(self, public_key: str, redis_url: str, prefix: str, dedupe_ttl_s: int) -> None:
        from nacl.signing import VerifyKey

        self.key = VerifyKey(base64.b64decode(public_key))
        self.redis_url, self.prefix, self.dedupe_ttl_s = redis_url, prefix, dedupe_ttl_s

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.lifespan(receive, send)
        if scope["method"] == "POST" and scope["path"] == WEBHOOK_PATH:
            status, result = await self.webhook(scope, receive)
            return await self.answer(send, status, result)
        return await self.answer(send, 200 if scope["path"] == "/healthz" else 404, "")

    async def lifespan(self, receive: Receive, send: Send) -> None:
        from redis import asyncio as aioredis

        await receive()  # lifespan.startup: the client must be made in the server's event loop
        self.redis = aioredis.from_url(self.redis_url)
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await self.redis.aclose()
        await send({"type": "lifespan.shutdown.complete"})

    async def webhook(self, scope: dict[str, Any], receive: Receive) -> tuple[int, str]:
        from nacl.exceptions import BadSignatureError

        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if len(body) > MAX_BODY_BYTES:
            return 413, "too_large"
        headers = dict(scope["headers"])
        signature, timestamp = headers.get(SIGNATURE_HEADER.encode()), headers.get(TIMESTAMP_HEADER.encode())
        try:
            if abs(time.time() - int(timestamp or b"")) > TOLERANCE_S:
                return 401, "stale"
            self.key.verify(timestamp + b"|" + body, base64.b64decode(signature or b"", validate=True))
            event_id = json.loads(body)["data"]["id"]
        except (BadSignatureError, ValueError):
            return 401, "bad_signature"
        except (KeyError, TypeError):
            return 400, "malformed"
        if not await self.redis.set(f"{self.prefix}:webhook:{event_id}", "1", nx=True, ex=self.dedupe_ttl_s):
            return 200, "duplicate"
        await self.redis.rpush(f"{self.prefix}:events", body)
        return 200, "accepted"

    @staticmethod
    async def answer(send: Send, status: int, result: str) -> None:
        body = b'{"result":"%s"}' % result.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


def reference_main(argv: list[str]) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="webhook_load.py reference-server")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = ReferenceApp(os.environ["TELNYX_PUBLIC_KEY"], os.environ["REDIS_URL"], os.environ["REFERENCE_PREFIX"],
                        Settings().webhook_dedupe_ttl_s)
    # The options of ``sendq web`` (worker/processes/web.py): everything else is uvicorn's default.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", log_config=None)


# -- servers and checks ------------------------------------------------------------------------------------------

def purge(client: redis.Redis, namespace: str) -> None:
    """Delete every key of ``namespace`` (queues, dedupe keys, dramatiq's heartbeats)."""
    batch = []
    for key in client.scan_iter(match=f"{namespace}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 5_000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


class Server:
    """One server under test, in its own process; ``check`` proves every accepted webhook became one job."""

    name = ""

    def __init__(self, settings: Settings, public_key: str, log: Path) -> None:
        self.settings = settings
        self.port = free_port()
        self.env = {**environment(settings), "TELNYX_PUBLIC_KEY": public_key, "PYTHONPATH": str(ROOT)}
        self.redis = redis.Redis.from_url(settings.redis_url or "")
        self.log = log

    def command(self) -> list[str]:
        raise NotImplementedError

    def accepted(self) -> int:
        """Webhooks accepted so far (enqueued, not duplicates)."""
        raise NotImplementedError

    def progress(self) -> tuple[int, ...]:
        raise NotImplementedError

    def check(self, accepted_before: int) -> dict:
        raise NotImplementedError

    def __enter__(self) -> Server:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                         stderr=log)
        wait_http(f"http://127.0.0.1:{self.port}/healthz")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def settle(self, quiet_s: float = 0.5, timeout_s: float = 30) -> None:
        """Wait until the server has finished the requests still in flight when the generator stopped."""
        deadline, last = time.monotonic() + timeout_s, self.progress()
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            if (now := self.progress()) == last:
                return
            last = now
        raise RuntimeError(f"{self.name} never settled")

    def count_keys(self, pattern: str) -> int:
        # SCAN may return a key twice while Redis resizes its table (as it does after a purge): count distinct.
        return len(set(self.redis.scan_iter(match=pattern, count=10_000)))

    def purge(self) -> None:
        purge(self.redis, self.settings.namespace)


class SendqWeb(Server):
    name = "sendq web"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "producers.cli", "web", "--port", str(self.port)]

    def results(self) -> dict[str, float]:
        """``sendq_webhook_requests_total`` by result, from the server's /metrics."""
        import httpx

        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics").text
        found = re.findall(r'^sendq_webhook_requests_total\{result="(\w+)"\} (\S+)$', text, re.M)
        return {result: float(n) for result, n in found}

    def accepted(self) -> int:
        return int(self.results().get("accepted", 0))

    def progress(self) -> tuple[int, ...]:
        return self.accepted(), self.redis.llen(f"{self.settings.namespace}:events")

    def check(self, accepted_before: int) -> dict:
        ns = self.settings.namespace
        results = self.results()
        accepted = int(results.pop("accepted", 0)) - accepted_before
        other = {result: n for result, n in results.items() if n}  # duplicates, refusals: none expected
        queued, stored = self.redis.llen(f"{ns}:events"), self.redis.hlen(f"{ns}:events.msgs")
        # One apply_events job per batch: every accepted event is in exactly one of them.
        event_ids = [event["data"]["id"] for _, raw in self.redis.hscan_iter(f"{ns}:events.msgs", count=5_000)
                     for event in json.loads(raw)["args"][0]]
        one_each = (queued == stored and accepted == len(event_ids) == len(set(event_ids))
                    == self.count_keys(f"{ns}:webhook:*"))
        return {"accepted": accepted, "jobs": queued, "events_per_job": round(accepted / max(queued, 1), 1),
                "ok": one_each and not other, "other_results": other}


class Reference(Server):
    name = "reference"

    @property
    def prefix(self) -> str:
        return f"{self.settings.namespace}:ref"

    def command(self) -> list[str]:
        self.env["REFERENCE_PREFIX"] = self.prefix
        return [sys.executable, __file__, "reference-server", "--port", str(self.port)]

    def accepted(self) -> int:
        return 0  # the reference counts nothing: its list, emptied after each phase, is the count

    def progress(self) -> tuple[int, ...]:
        return (self.redis.llen(f"{self.prefix}:events"),)

    def check(self, accepted_before: int) -> dict:
        queued = self.redis.llen(f"{self.prefix}:events")
        ids = {json.loads(raw)["data"]["id"] for raw in self.redis.lrange(f"{self.prefix}:events", 0, -1)}
        return {"accepted": queued, "jobs": queued,
                "ok": queued == len(ids) == self.count_keys(f"{self.prefix}:webhook:*"), "other_results": {}}


# -- the run ---------------------------------------------------------------------------------------------------

def phase_ok(server: Server, load: dict, before: int) -> dict:
    """The check after one phase: no error, and as many accepted webhooks (each one job) as were answered."""
    server.settle()
    found = server.check(before)
    # wrk drops the answers in flight when it stops, and counts the spare GETs it may send after its last webhook.
    low, high = load["requests"] - load.get("spare", 0), load.get("sent", load["requests"])
    found["ok"] = found["ok"] and load["errors"] == 0 and low <= found["accepted"] <= high
    server.purge()
    return found


def measure(server: Server, signer: Signer, args: argparse.Namespace, tmp: Path) -> dict:
    """Warm-up, maximum throughput (wrk), then the fixed rate (open loop), on a running ``server``."""
    script = tmp / "requests.lua"
    script.write_text(WRK_SCRIPT)
    warmup = run_wrk(server.port, write_requests(tmp / "warmup.bin", WARMUP_REQUESTS, signer, server.port),
                     WARMUP_S, args.connections, args.threads, script)
    server.settle()
    server.purge()
    # Twice the warm-up's rate for the whole phase; should the server get faster still, wrk stops when they run out.
    count = int(max(warmup["per_s"], 1000) * args.duration * 2)
    before = server.accepted()
    requests = write_requests(tmp / "max.bin", count, signer, server.port)
    cpu = server.cpu_seconds()
    peak = run_wrk(server.port, requests, args.duration, args.connections, args.threads, script)
    # CPU per request moves much less than requests per second with the machine's other load.
    peak["cpu_us"] = round((server.cpu_seconds() - cpu) / max(peak["requests"], 1) * 1e6)
    peak["check"] = phase_ok(server, peak, before)
    before = server.accepted()
    paced = run_open_loop(server.port, write_requests(tmp / "rate.bin", int(args.rate * args.duration), signer,
                                                      server.port), args.rate, args.duration, args.rate_connections)
    paced["check"] = phase_ok(server, paced, before)
    return {"max": peak, "fixed": paced}


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per server, the median over rounds of each figure: one round disturbed by another process does not decide."""
    out = {}
    for name, rounds in results.items():
        figures = {f"{phase}_{key}": round(statistics.median(r[phase][key] for r in rounds), 2)
                   for phase, keys in (("max", ("per_s", "cpu_us", "p50_ms", "p99_ms")),
                                       ("fixed", ("per_s", "p50_ms", "p99_ms", "lag_p99_ms")))
                   for key in keys}
        figures["checks_ok"] = all(r[phase]["check"]["ok"] for r in rounds for phase in ("max", "fixed"))
        out[name] = figures
    return out


def print_rounds(results: dict[str, list[dict]], rounds: int) -> None:
    print(f"{'round':>5} {'server':10} {'max req/s':>9} {'CPU us':>6} {'p50':>6} {'p99':>6} | {'fixed/s':>7} "
          f"{'p50':>6} {'p99':>6} {'max':>6} {'lag p99':>7} | check")
    for index in range(rounds):
        for name, runs in results.items():
            peak, fixed = runs[index]["max"], runs[index]["fixed"]
            ok = peak["check"]["ok"] and fixed["check"]["ok"]
            print(f"{index + 1:>5} {name:10} {peak['per_s']:9.0f} {peak['cpu_us']:6} {peak['p50_ms']:6.1f} "
                  f"{peak['p99_ms']:6.1f} | {fixed['per_s']:7.0f} {fixed['p50_ms']:6.1f} {fixed['p99_ms']:6.1f} "
                  f"{fixed['max_ms']:6.1f} {fixed['lag_p99_ms']:7.1f} | {'ok' if ok else 'FAILED'}")
            if "events_per_job" in peak["check"]:
                print(f"      events per job: {peak['check']['events_per_job']} at max, "
                      f"{fixed['check']['events_per_job']} at {fixed['per_s']:.0f}/s")
            if not ok:
                print(f"      max phase: {peak['check']}; fixed rate: {fixed['check']}")


def report(results: dict[str, list[dict]], args: argparse.Namespace, settings: Settings,
           load: tuple[float, float]) -> None:
    print(f"one uvicorn process per server, {args.rounds} round(s); max: wrk -t{args.threads} -c{args.connections} "
          f"{args.duration:g} s; fixed: open loop {args.rate:g}/s over {args.rate_connections} connections "
          f"{args.duration:g} s; load average {load[0]:.1f} before, {load[1]:.1f} after")
    print("CPU us: server CPU per request at max; latencies in ms; fixed-rate latency runs from each request's due "
          "time; lag: how late the generator itself was")
    print_rounds(results, args.rounds)
    ratios = [results["sendq web"][i]["max"]["per_s"] / results["reference"][i]["max"]["per_s"]
              for i in range(args.rounds)]
    summary = summarize(results)
    sendq, ref = summary["sendq web"], summary["reference"]
    ratio, cpu_ratio = statistics.median(ratios), ref["max_cpu_us"] / sendq["max_cpu_us"]
    print(f"medians over rounds: sendq web {sendq['max_per_s']:.0f} req/s, reference {ref['max_per_s']:.0f} req/s; "
          f"at {args.rate:g}/s p50/p99 sendq {sendq['fixed_p50_ms']:.1f}/{sendq['fixed_p99_ms']:.1f} ms, reference "
          f"{ref['fixed_p50_ms']:.1f}/{ref['fixed_p99_ms']:.1f} ms")
    print(f"sendq/reference: throughput {ratio:.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)}); CPU per "
          f"request {sendq['max_cpu_us']:.0f} us vs {ref['max_cpu_us']:.0f} us, so {cpu_ratio:.2f} as efficient")
    goals = {"sendq >= 1.0 x reference (throughput)": ratio >= 1.0,
             "sendq >= 1.0 x reference (CPU per request)": cpu_ratio >= 1.0,
             "sendq >= 2,000 req/s": sendq["max_per_s"] >= 2000,
             f"sendq p99 <= 50 ms at {args.rate:g}/s": sendq["fixed_p99_ms"] <= 50,
             "every accepted webhook one job, no error": sendq["checks_ok"] and ref["checks_ok"]}
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")
    print(json.dumps({"benchmark": "webhook_load", "date": datetime.now(UTC).date().isoformat(),
                      "machine": f"{platform.machine()} {os.cpu_count()} cpu",
                      "load_average": [round(x, 2) for x in load],
                      "store": settings.database_url.split(":")[0], "connections": args.connections,
                      "rate": args.rate, "duration_s": args.duration, "ratio": round(ratio, 2),
                      "round_ratios": [round(r, 2) for r in ratios], "cpu_ratio": round(cpu_ratio, 2), **summary}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=12, help="seconds of each measured phase")
    parser.add_argument("--connections", type=int, default=64, help="wrk's keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk's threads")
    parser.add_argument("--rate", type=float, default=1000, help="requests per second of the fixed-rate phase")
    parser.add_argument("--rate-connections", type=int, default=16, help="the open-loop generator's connections")
    parser.add_argument("--rounds", type=int, default=3, help="each server once per round, in alternating order")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("webhook_load: wrk is not installed (apt-get install wrk)")

    signer = Signer.from_seed(f"webhook-load-{uuid.uuid4()}")
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict]] = {"sendq web": [], "reference": []}
    with tempfile.TemporaryDirectory() as tmp:
        settings = fresh_settings(tmp, redis_url=args.redis_url)
        try:
            for index in range(args.rounds):
                # Alternate who goes first so neither always runs on a warmer (or noisier) machine.
                kinds = (Reference, SendqWeb) if index % 2 == 0 else (SendqWeb, Reference)
                for kind in kinds:
                    with kind(settings, signer.public_key, Path(tmp) / "servers.log") as server:
                        results[kind.name].append(measure(server, signer, args, Path(tmp)))
        finally:
            purge(redis.Redis.from_url(args.redis_url), settings.namespace)
    report(results, args, settings, (load_before, os.getloadavg()[0]))


if __name__ == "__main__":
    internal = {"open-loop": open_loop_main, "reference-server": reference_main}
    if len(sys.argv) > 1 and sys.argv[1] in internal:
        internal[sys.argv[1]](sys.argv[2:])
    else:
        main()
