"""Property tests for the webhook receiver (hypothesis), on the real app and a real Redis.

Whatever arrives (any body, header, encoding, size or timestamp) the answer is never a 5xx, except the
documented 503 while Redis is down; a request that is unsigned, signed by an unknown key, tampered with or
stale writes nothing at all to Redis; and a verified event is enqueued exactly once however often it is
redelivered, and is then kept exactly once by ``apply_event``.

The app runs in-process through httpx's ASGITransport (its own lifespan, so Redis and the store are real):
unlike a real HTTP server it passes any header bytes through, so the app itself is what gets fuzzed. One
test goes over real HTTP (uvicorn) as well.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
import redis
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from worker import events as event_rules
from worker.serving import ServerThread, free_port
from worker.settings import Settings
from worker.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER
from worker.store import events
from worker.web import create_app

#: The app's clock is pinned, so the edges of the +-300 s window are exact.
NOW = 1_771_166_000
TOLERANCE_S = 300
#: A small cap (the default, 256 KiB, is covered in test_web) so that generated bodies straddle it.
CAP = 4096
WEBHOOK = "/webhooks/telnyx"

Headers = list[tuple[bytes, bytes]]


def _key(seed: str) -> SigningKey:
    return SigningKey(hashlib.sha256(seed.encode()).digest())


CURRENT, PREVIOUS, STRANGER = _key("fuzz-current"), _key("fuzz-previous"), _key("fuzz-stranger")


def public(key: SigningKey) -> str:
    return base64.b64encode(bytes(key.verify_key)).decode()


def sign(key: SigningKey, body: bytes, timestamp: bytes) -> bytes:
    """Telnyx's scheme over any timestamp bytes, so even a garbage timestamp can carry a real signature."""
    return base64.b64encode(key.sign(timestamp + b"|" + body).signature)


def as_queued(body: bytes) -> Any:
    """``body``'s event as a JSON queue hands it back (a surrogate pair, say, comes back one character)."""
    return json.loads(json.dumps(json.loads(body)))


def signed(body: bytes, timestamp: int, key: SigningKey = CURRENT) -> Headers:
    ts = str(timestamp).encode()
    return [(SIGNATURE_HEADER.encode(), sign(key, body, ts)), (TIMESTAMP_HEADER.encode(), ts)]


FUZZ = settings(
    max_examples=150, deadline=None, database=None,
    # Redis state outlives an example on purpose: each example resets or measures what it touches.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FUZZ, max_examples=25)
OVER_HTTP = settings(FUZZ, max_examples=60)


# --- the app, driven in-process --------------------------------------------------------------------------


class _WithState:
    """What an ASGI server does with the lifespan's state: hand a copy to every request."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = dict(self.state)
        await self.app(scope, receive, send)


@dataclass
class Namespace:
    """What the app wrote under its namespace in Redis."""

    redis: redis.Redis
    namespace: str

    def jobs(self) -> list[dict[str, Any]]:
        """The jobs waiting in the events queue, delayed ones included."""
        found = []
        for queue in ("events", "events.DQ"):
            found += [json.loads(raw) for raw in self.redis.hvals(f"{self.namespace}:{queue}.msgs")]
        return found

    def queued(self) -> list[Any]:
        """The events those jobs hold: the receiver enqueues ``apply_events`` jobs of one batch each."""
        found = []
        for job in self.jobs():
            assert job["actor_name"] == "apply_events", job
            found += job["args"][0]
        return found

    def written(self) -> list[bytes]:
        return list(self.redis.scan_iter(f"{self.namespace}:*", count=1000))

    def reset(self) -> None:
        keys = self.written()
        if keys:
            self.redis.delete(*keys)


@dataclass
class Receiver(Namespace):
    portal: anyio.from_thread.BlockingPortal
    client: httpx.AsyncClient

    def send(self, body: bytes, headers: Headers) -> httpx.Response:
        return self.portal.call(lambda: self.client.post(WEBHOOK, content=body, headers=headers))

    def post(self, body: bytes, headers: Headers) -> httpx.Response:
        response = self.send(body, headers)
        assert response.status_code < 500, response.text
        return response


@contextlib.contextmanager
def running(web_settings: Settings) -> Iterator[Receiver]:
    app: Starlette = create_app(web_settings, clock=lambda: NOW)
    client = redis.Redis.from_url(web_settings.redis_url or "")
    with anyio.from_thread.start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(app.router.lifespan_context(app)) as state:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(_WithState(app, state or {})),
                                 base_url="http://sendq.test")
        try:
            yield Receiver(client, web_settings.namespace, portal, http)
        finally:
            portal.call(http.aclose)
            client.close()


@pytest.fixture
def web_settings(redis_url: str, namespace: str, tmp_path: Path) -> Settings:
    # The webhook path never touches the store; the store tests below use the `store` fixture's backends.
    return Settings(redis_url=redis_url, database_url=f"sqlite:///{tmp_path / 'web.db'}", namespace=namespace,
                    telnyx_public_key=public(CURRENT), webhook_max_body_bytes=CAP,
                    webhook_tolerance_s=TOLERANCE_S)


@pytest.fixture
def receiver(web_settings: Settings) -> Iterator[Receiver]:
    with running(web_settings) as found:
        yield found


# --- strategies ------------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
#: Ids as Telnyx sends them, and strings no JSON producer should send (lone surrogates, NULs, 1 KiB).
ids = st.uuids().map(str) | st.text(max_size=40) | st.text(st.characters(categories=["Cs"]), min_size=1) \
    | st.just("\x00") | st.just("x" * 1024)

event_records = st.fixed_dictionaries(
    {"data": st.fixed_dictionaries(
        {"id": ids, "event_type": st.sampled_from(["message.sent", "message.finalized", "message.received"])
            | st.text(max_size=20)},
        optional={"record_type": st.just("event"), "occurred_at": st.text(max_size=30), "payload": json_values})},
    optional={"meta": json_values},
)
link_clicks = st.fixed_dictionaries(
    {"data": st.fixed_dictionaries(
        {"record_type": st.just("link_clicked"),
         "message_id": st.uuids().map(str) | st.text(min_size=1, max_size=20) | st.integers().filter(bool)},
        optional={"url": json_values, "time_clicked": json_values, "to": json_values})},
)
valid_events = event_records | link_clicks

wrong_shapes = st.one_of(
    json_values,
    st.fixed_dictionaries({"data": json_values}),
    st.fixed_dictionaries({"data": st.fixed_dictionaries(
        {}, optional={"id": json_values, "event_type": json_values, "record_type": json_values})}),
    st.fixed_dictionaries({"data": st.fixed_dictionaries(
        {"record_type": st.just("link_clicked")}, optional={"message_id": json_values, "url": json_values})}),
)


@st.composite
def encoded(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> bytes:
    """A JSON document in any encoding json.loads detects, sometimes in one it cannot decode."""
    text = json.dumps(draw(values), ensure_ascii=draw(st.booleans()), indent=draw(st.none() | st.just(1)))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1"]))
    # surrogatepass writes a lone surrogate as the invalid UTF bytes a broken producer would send.
    errors = "replace" if encoding == "latin-1" else draw(st.sampled_from(["surrogatepass", "replace"]))
    return text.encode(encoding, errors=errors)


garbage_bodies = st.one_of(
    st.binary(max_size=CAP + 64),
    st.binary(max_size=64).map(lambda b: b + b"\xff\xfe\x80"),  # never valid UTF-8
    st.just(b""),
    # Nesting past the parser's recursion limit (about 1000 levels); edges named, hypothesis favours small sizes.
    (st.sampled_from([999, 1000, CAP // 2]) | st.integers(1, CAP // 2)).map(lambda n: b"[" * n + b"]" * n),
    st.integers(0, 6000).map(lambda n: b'{"data":{"id":"a","event_type":"b","n":' + b"7" * n + b"}}"),
    st.sampled_from([b"NaN", b"[1e999]", b'{"data":{"id":"a","event_type":"b"},"data":[]}', b"\x00" * 8]),
    st.sampled_from([CAP + 1, 10 * CAP, 1 << 20]).map(lambda n: b"x" * n),  # over the cap
)
any_body = garbage_bodies | encoded(wrong_shapes) | encoded(valid_events)


def _header(value: str) -> bytes:
    # Starlette reads header bytes as latin-1; anything else arrives as its UTF-8 bytes, as a proxy would pass it.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


timestamps = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.integers(-(10**20), 10**20).map(lambda n: str(n).encode()),
    st.integers(-TOLERANCE_S, TOLERANCE_S).map(lambda d: str(NOW + d).encode()),  # fresh
    # Past float() (309 digits) and int() (4300 digits); edges named, as above.
    (st.sampled_from([19, 308, 309, 400, 4300, 4301]) | st.integers(19, 6000)).map(lambda n: b"9" * n),
    st.sampled_from(["", " ", f"{NOW}.0", f" {NOW}", f"{NOW} ", f"+{NOW}", "1_771_166_000", "-0", "0x6995",
                     "1e9", "NaN", "١٧٧١١٦٦٠٠٠", "¹²³", "²"]).map(_header),
)


def _b64_variants(raw: bytes) -> st.SearchStrategy[bytes]:
    std = base64.b64encode(raw)
    return st.sampled_from([std, std.rstrip(b"="), base64.urlsafe_b64encode(raw), std + b"\n", b" " + std,
                            std.lower(), std + b"AAAA"])


#: Signature header values none of which is CURRENT's signature of what is sent.
forged_signatures = st.one_of(
    st.none(),
    st.binary(max_size=120),
    st.binary(max_size=100).map(base64.b64encode),  # valid base64, mostly the wrong length
    st.binary(min_size=64, max_size=64).flatmap(_b64_variants),  # right length, random or mangled
    st.sampled_from([b"", b"%%%", b"====", b"not base64!!", "é".encode() * 40]),
)

extra_headers = st.lists(st.tuples(
    st.sampled_from([b"content-type", b"content-encoding", b"transfer-encoding", b"content-length",
                     SIGNATURE_HEADER.encode(), TIMESTAMP_HEADER.encode(), b"x-anything"]),
    st.binary(max_size=30) | st.sampled_from([b"0", b"-1", b"\xb2", b"9" * 5000, str(CAP + 1).encode()]),
), max_size=3)


# --- properties ------------------------------------------------------------------------------------------


@FUZZ
@given(body=any_body, signature=forged_signatures | st.just("stranger"), timestamp=timestamps, extra=extra_headers)
def test_a_request_without_a_valid_signature_is_refused_and_writes_nothing(receiver, body, signature, timestamp,
                                                                           extra):
    if signature == "stranger":
        # A well-formed signature, by a key that is not configured.
        signature = sign(STRANGER, body, timestamp or b"")
    headers = [(name, value) for name, value in ((SIGNATURE_HEADER.encode(), signature),
                                                 (TIMESTAMP_HEADER.encode(), timestamp)) if value is not None]

    response = receiver.post(body, headers + extra)

    assert response.status_code in (401, 413)
    if len(body) > CAP:
        assert response.status_code == 413
    assert receiver.written() == []


@FUZZ
@given(body=any_body, offset=st.integers(-TOLERANCE_S, TOLERANCE_S), retry_offset=st.integers(0, TOLERANCE_S))
def test_a_signed_fresh_body_is_enqueued_once_or_refused_and_never_5xx(receiver, body, offset, retry_offset):
    receiver.reset()

    response = receiver.post(body, signed(body, NOW + offset))

    if len(body) > CAP:
        assert response.status_code == 413
    if response.status_code != 200:
        assert response.status_code in (400, 413)
        assert receiver.written() == []
        return
    assert response.json() == {"result": "accepted"}
    assert receiver.queued() == [as_queued(body)]
    # Telnyx's retry of the same event, signed anew.
    again = receiver.post(body, signed(body, NOW - retry_offset))
    assert again.json() == {"result": "duplicate"}
    assert receiver.queued() == [as_queued(body)]


@FUZZ
@given(event=valid_events, data=st.data(), deliveries=st.lists(st.integers(-TOLERANCE_S, TOLERANCE_S),
                                                                min_size=1, max_size=4))
def test_a_verified_event_is_accepted_once_and_every_redelivery_is_a_duplicate(receiver, event, data, deliveries):
    receiver.reset()
    raw = data.draw(encoded(st.just(event)).filter(lambda b: len(b) <= CAP and _decodes(b, event)))

    answers = [receiver.post(raw, signed(raw, NOW + offset)).json()["result"] for offset in deliveries]

    assert answers == ["accepted"] + ["duplicate"] * (len(deliveries) - 1)
    assert receiver.queued() == [as_queued(raw)]


def _decodes(raw: bytes, event: Any) -> bool:
    # Not every encoding carries every event: latin-1 with "replace", a surrogate pair JSON joins into one char.
    try:
        return json.loads(raw) == event
    except ValueError:
        return False


@st.composite
def mutations(draw: st.DrawFn, body: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "append", "replace"]))
    at = draw(st.integers(0, len(body) - 1))
    if kind == "flip":
        return body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1:]
    if kind == "insert":
        return body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
    if kind == "delete":
        return body[:at] + body[at + draw(st.integers(1, 8)):]
    if kind == "truncate":
        return body[:at]
    if kind == "append":
        return body + draw(st.sampled_from([b" ", b"\n", b"\x00", b"{}"]))
    return body.replace(b"message", b"MESSAGE").replace(b"delivered", b"delivery_failed")


@FUZZ
@given(event=valid_events, data=st.data(), offset=st.integers(-TOLERANCE_S, TOLERANCE_S))
def test_a_signature_over_another_body_or_timestamp_is_refused(receiver, event, data, offset):
    body = json.dumps(event).encode()
    tampered = data.draw(mutations(body))
    assume(tampered != body)
    swapped = data.draw(st.integers(-TOLERANCE_S, TOLERANCE_S).filter(lambda o: o != offset))
    signature = sign(CURRENT, body, str(NOW + offset).encode())

    for sent, timestamp in ((tampered, NOW + offset), (body, NOW + swapped)):
        response = receiver.post(sent, [(SIGNATURE_HEADER.encode(), signature),
                                        (TIMESTAMP_HEADER.encode(), str(timestamp).encode())])
        assert response.status_code == 401
        assert response.json() == {"result": "bad_signature"}
    assert receiver.written() == []


@FUZZ
@given(event=event_records, offset=st.integers(-(10**15), 10**15) | st.integers(-310, 310)
       | st.sampled_from([-TOLERANCE_S - 1, -TOLERANCE_S, TOLERANCE_S, TOLERANCE_S + 1, -NOW, -NOW - 1]))
def test_only_a_timestamp_within_the_tolerance_is_accepted(receiver, event, offset):
    receiver.reset()
    body = json.dumps(event).encode()

    response = receiver.post(body, signed(body, NOW + offset))

    if abs(offset) <= TOLERANCE_S:
        assert response.json() == {"result": "accepted"}
        assert receiver.queued() == [as_queued(body)]
        return
    assert response.status_code == 401
    # A negative Unix time ("-5") is not an integer timestamp to Telnyx: refused as a bad signature.
    assert response.json() == {"result": "stale" if NOW + offset >= 0 else "bad_signature"}
    assert receiver.written() == []


@FUZZ
@given(event=event_records, size=st.integers(CAP - 64, CAP + 64))
def test_the_body_cap_is_exact(receiver, event, size):
    receiver.reset()
    compact = json.dumps(event).encode()
    assume(len(compact) <= size)
    body = compact[:-1] + b" " * (size - len(compact)) + b"}"  # JSON whitespace: the same event, `size` bytes

    response = receiver.post(body, signed(body, NOW))

    if size <= CAP:
        assert response.json() == {"result": "accepted"}
        assert receiver.queued() == [as_queued(body)]
    else:
        assert response.status_code == 413
        assert receiver.written() == []


# --- what is enqueued is what is applied -----------------------------------------------------------------


def _outbound(event_type: str, telnyx_id: str) -> dict[str, Any]:
    return {"event_type": event_type, "record_type": "event", "occurred_at": "2026-02-15T14:30:04.148+00:00",
            "payload": {"id": telnyx_id, "direction": "outbound",
                        "to": [{"phone_number": "+13125550002", "status": "delivered"}]}}


kinds = st.sampled_from(["message.sent", "message.finalized", "message.received", "link_clicked"])


@FEW
@given(plan=st.lists(st.tuples(kinds, st.integers(1, 3)), min_size=1, max_size=6), order=st.randoms())
def test_redelivered_events_are_enqueued_and_stored_exactly_once(receiver, store, plan, order):
    receiver.reset()
    sent: list[dict[str, Any]] = []
    deliveries: list[bytes] = []
    for kind, copies in plan:
        if kind == "link_clicked":
            data = {"record_type": "link_clicked", "message_id": str(uuid.uuid4()), "url": "https://x.test/a",
                    "time_clicked": "2026-02-15T14:31:00+00:00"}
        else:
            data = {**_outbound(kind, str(uuid.uuid4())), "id": str(uuid.uuid4())}
        sent.append({"data": data, "meta": {"attempt": 1}})
        deliveries += [json.dumps(sent[-1]).encode()] * copies
    order.shuffle(deliveries)

    for body in deliveries:
        assert receiver.post(body, signed(body, NOW)).status_code == 200

    queued = receiver.queued()
    assert sorted(map(json.dumps, queued)) == sorted(map(json.dumps, sent))
    # The worker runs each job at least once: a second run must not keep the event twice.
    for event in queued + queued:
        event_rules.apply_event(store, event)
    ids = [e["data"]["id"] for e in sent if "id" in e["data"]]  # a link click has no id and is not kept
    with store.engine.connect() as conn:
        kept = conn.execute(sa.select(events.c.event_id).where(events.c.event_id.in_(ids))).scalars().all()
    assert sorted(kept) == sorted(ids)


# --- key rotation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("configured", ["{current},{previous}", " {previous} , {current} ,"])
def test_during_a_key_rotation_either_key_verifies_and_no_other(web_settings, configured):
    keys = configured.format(current=public(CURRENT), previous=public(PREVIOUS))
    signers = {"current": CURRENT, "previous": PREVIOUS, "stranger": STRANGER}
    bodies = {name: json.dumps({"data": {**_outbound("message.sent", "m1"), "id": str(uuid.uuid4())}}).encode()
              for name in signers}
    with running(web_settings.model_copy(update={"telnyx_public_key": keys})) as receiver:
        answers = {name: receiver.post(bodies[name], signed(bodies[name], NOW, key)).json()["result"]
                   for name, key in signers.items()}

        assert answers == {"current": "accepted", "previous": "accepted", "stranger": "bad_signature"}
        assert sorted(e["data"]["id"] for e in receiver.queued()) == sorted(
            json.loads(bodies[name])["data"]["id"] for name in ("current", "previous"))


# --- Redis down ------------------------------------------------------------------------------------------


def _no_store(settings: Settings, tmp_path: Path) -> Settings:
    """``settings`` with a store that cannot be opened: with Redis down too, web has nowhere to keep an event."""
    return settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'missing' / 'web.db'}"})


def test_with_no_redis_and_no_store_only_a_verified_event_is_503_everything_else_is_answered_as_usual(
        web_settings, tmp_path):
    down = _no_store(web_settings, tmp_path).model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    event = json.dumps({"data": {**_outbound("message.sent", "m1"), "id": "e1"}}).encode()
    with running(down) as receiver:

        def answer(body: bytes, headers: Headers) -> tuple[int, str]:
            response = receiver.send(body, headers)
            return response.status_code, response.json().get("result", "")

        assert answer(event, []) == (401, "bad_signature")
        assert answer(event, signed(event, NOW - 301)) == (401, "stale")
        assert answer(b"[]", signed(b"[]", NOW)) == (400, "malformed")
        assert answer(event, signed(event, NOW)) == (503, "unavailable")


class PrivateRedis:
    """A redis-server of this test's own on a free port, to stop and start; never the shared one."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self._dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # A plain connect, not a redis-py ping: redis-py backs off for seconds on a refused connection.
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        self._process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_a_delivery_refused_while_redis_and_the_store_were_down_is_accepted_once_when_redis_is_back(
        web_settings, private_redis, tmp_path):
    first = json.dumps({"data": {**_outbound("message.sent", "m1"), "id": "e-before"}}).encode()
    second = json.dumps({"data": {**_outbound("message.finalized", "m1"), "id": "e-during"}}).encode()
    with running(_no_store(web_settings, tmp_path).model_copy(update={"redis_url": private_redis.url})) as receiver:
        assert receiver.send(first, signed(first, NOW)).json() == {"result": "accepted"}

        private_redis.kill()
        refused = receiver.send(second, signed(second, NOW))
        assert (refused.status_code, refused.json()) == (503, {"result": "unavailable"})

        private_redis.start()
        # Telnyx retries what got a 5xx. The restarted server is empty (no persistence): `first` went with it,
        # which is this test's Redis, not the receiver, losing it.
        retried = [receiver.post(second, signed(second, NOW + n)).json() for n in (1, 2)]
        assert retried == [{"result": "accepted"}, {"result": "duplicate"}]
        assert receiver.queued() == [as_queued(second)]


# --- over real HTTP ----------------------------------------------------------------------------------------

#: What an HTTP client can put in a header value (no CR, LF, NUL or other controls).
wire_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=60).map(str.strip).map(lambda s: s.encode("latin-1"))


@pytest.fixture
def served(web_settings: Settings) -> Iterator[tuple[httpx.Client, Namespace]]:
    client = redis.Redis.from_url(web_settings.redis_url or "")
    with ServerThread(create_app(web_settings, clock=lambda: NOW)) as server, \
            httpx.Client(base_url=server.url) as http:
        yield http, Namespace(client, web_settings.namespace)
    client.close()


@OVER_HTTP
@given(body=any_body, signature=st.just(base64.b64encode(bytes(64))) | wire_values | st.none(),
       timestamp=st.sampled_from([b"1" + b"0" * 400, b"9" * 5000, str(NOW - 301).encode()]) | wire_values,
       valid=st.booleans())
def test_over_real_http_nothing_is_5xx_and_only_signed_events_are_enqueued(served, body, signature, timestamp,
                                                                          valid):
    http, probe = served
    probe.reset()
    if valid:
        headers = signed(body, NOW)
    else:
        headers = [(TIMESTAMP_HEADER.encode(), timestamp)] + ([(SIGNATURE_HEADER.encode(), signature)]
                                                             if signature is not None else [])

    response = http.post(WEBHOOK, content=body, headers=headers)

    assert response.status_code < 500, response.text
    if not valid or response.status_code != 200:
        assert probe.written() == []
    else:
        assert probe.queued() == [as_queued(body)]
