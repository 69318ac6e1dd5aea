"""Inbound messages, opt-outs and link clicks end to end: the simulator texts sendq (``POST /_sim/inbound``), its
signed webhook goes through ``sendq web`` and a real dramatiq worker, and the next send obeys the result.

Also: Telnyx's 40300 adding the pair, the opt-out sync paging through ``GET /messaging_optouts`` and asking only
for what is new, and ``sendq optouts sync``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from worker import statuses
from worker.inbound import Inbound
from worker.optout_sync import OptOutSync, PeriodicOptOutSync
from worker.scheduler import Scheduler
from worker.simulator.app import DEFAULT_PROFILE_ID
from worker.suppressions import STOP_KEYWORD, TELNYX_40300, TELNYX_SYNC, Suppressions
from worker.telnyx import TelnyxClient

NUMBER, POOL_NUMBER = "+13125550001", "+13125550100"


def eventually(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last: {found!r}")
        time.sleep(0.05)


def text_in(stack, recipient: str, text: str, *, to: str = NUMBER, webhook: bool = True) -> dict[str, Any]:
    """``recipient`` texts ``to``; the simulator acts on keywords and sends message.received to sendq's web."""
    body = {"from": recipient, "to": to, "text": text}
    if webhook:
        body["webhook_url"] = stack.settings.webhook_url
    answer = httpx.post(f"{stack.simulator.url}/_sim/inbound", json=body)
    answer.raise_for_status()
    return answer.json()


def sent_to(stack, recipient: str) -> list[Any]:
    return [m for m in stack.sim_messages() if recipient in [t["phone_number"] for t in m.payload["to"]]]


def recipient() -> str:
    return f"+1312555{uuid.uuid4().int % 10_000:04d}"


def test_stop_then_start_round_trip_through_the_simulator(stack):
    who = recipient()
    optouts = Suppressions.of(stack.services.store)

    assert text_in(stack, who, "  Stop ")["keyword"] == "stop"
    row = eventually(lambda: optouts.get(who, DEFAULT_PROFILE_ID))
    assert (row.number, row.source, row.keyword) == (NUMBER, STOP_KEYWORD, "stop")
    inbound = Inbound.of(stack.services.store)
    assert eventually(lambda: [m for m in _inbound_texts(stack) if m == (who, NUMBER, "  Stop ")])
    # From here Telnyx itself would send: only sendq's own list can stop the next messages.
    stack.simulator.optouts.reset()

    by_number = stack.producer.send(who, from_=NUMBER, text="hello")
    by_profile = stack.producer.send(who, from_=POOL_NUMBER, profile=DEFAULT_PROFILE_ID, kind="long_code",
                                     text="hello")
    for message_id in (by_number, by_profile):
        record = stack.wait_final(message_id)
        assert record["status"] == statuses.SUPPRESSED
        assert [e["code"] for e in record["errors"]] == ["sendq.suppressed"]
        assert [h["status"] for h in record["history"]] == [statuses.QUEUED, statuses.SUPPRESSED]
        assert record["telnyx_id"] is None
    assert sent_to(stack, who) == []          # Telnyx was never asked

    assert text_in(stack, who, "START")["keyword"] == "start"
    eventually(lambda: optouts.get(who, DEFAULT_PROFILE_ID) is None)
    again = stack.producer.send(who, from_=NUMBER, text="welcome back")
    assert stack.wait_final(again)["status"] == statuses.DELIVERED
    assert len(sent_to(stack, who)) == 1
    assert inbound.message(_last_inbound_id(stack, who))["keyword"] == "start"


def _inbound_texts(stack) -> list[tuple[str, str, str]]:
    import sqlalchemy as sa

    from worker.store import inbound_messages

    query = sa.select(inbound_messages.c.from_number, inbound_messages.c.to_number, inbound_messages.c.text)
    with stack.services.store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


def _last_inbound_id(stack, who: str) -> str:
    import sqlalchemy as sa

    from worker.store import inbound_messages

    query = (sa.select(inbound_messages.c.telnyx_id).where(inbound_messages.c.from_number == who)
             .order_by(inbound_messages.c.received_at.desc()).limit(1))
    with stack.services.store.engine.connect() as conn:
        return str(conn.execute(query).scalar())


def test_a_group_mms_with_one_opted_out_member_is_suppressed_as_a_whole(stack):
    blocked, fine = recipient(), recipient()
    text_in(stack, blocked, "UNSUBSCRIBE")
    eventually(lambda: Suppressions.of(stack.services.store).get(blocked, DEFAULT_PROFILE_ID))

    message_id = stack.producer.send([fine, blocked], from_=NUMBER, kind="group_mms", text="group hello")

    record = stack.wait_final(message_id)
    assert record["status"] == statuses.SUPPRESSED
    assert blocked in record["errors"][0]["detail"] and fine not in record["errors"][0]["detail"]
    assert sent_to(stack, fine) == []


def test_telnyx_40300_ends_suppressed_and_adds_the_pair(stack):
    who = recipient()
    text_in(stack, who, "STOP", webhook=False)  # Telnyx blocks; sendq never hears of the STOP
    optouts = Suppressions.of(stack.services.store)
    assert optouts.get(who, NUMBER) is None

    first = stack.wait_final(stack.producer.send(who, from_=NUMBER, text="one"))
    assert first["status"] == statuses.SUPPRESSED
    assert [e["code"] for e in first["errors"]] == ["40300"]
    row = optouts.get(who, NUMBER)
    assert row is not None and row.source == TELNYX_40300 and row.messaging_profile_id is None

    second = stack.wait_final(stack.producer.send(who, from_=NUMBER, text="two"))
    assert [e["code"] for e in second["errors"]] == ["sendq.suppressed"]   # stopped before calling Telnyx


def test_a_link_click_is_recorded_against_the_message(stack):
    message_id = stack.producer.send(recipient(), from_=NUMBER, text="see https://example.com/offer")
    record = stack.wait_final(message_id)
    click = {"data": {"record_type": "link_clicked", "url": "https://example.com/offer", "to": record["to"],
                      "message_id": record["telnyx_id"], "time_clicked": "2026-02-15T14:31:00.000+00:00"}}
    body = json.dumps(click).encode()

    for _ in range(2):  # a redelivery is the same click
        answer = httpx.post(stack.settings.webhook_url, content=body,
                            headers=stack.simulator.signer.headers(body, int(time.time())))
        assert answer.status_code == 200

    clicks = eventually(lambda: Inbound.of(stack.services.store).clicks(message_id))
    assert clicks == [{"url": "https://example.com/offer", "to": record["to"],
                       "clicked_at": "2026-02-15T14:31:00+00:00"}]
    time.sleep(0.3)
    assert len(Inbound.of(stack.services.store).clicks(message_id)) == 1


# -- the opt-out sync ---------------------------------------------------------------------------------------------

class Recorder:
    """The query of every request a Telnyx client makes."""

    def __init__(self) -> None:
        self.queries: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> None:
        self.queries.append(dict(request.url.params))


def recording_client(simulator) -> tuple[TelnyxClient, Recorder]:
    recorder = Recorder()
    http = httpx.Client(timeout=10, event_hooks={"request": [recorder]})
    return TelnyxClient(http, api_key="KEY-test", base_url=f"{simulator.url}/v2"), recorder


def test_the_sync_pages_through_every_block_then_asks_only_for_newer_ones(store, simulator):
    stops = [f"+131255509{i:02d}" for i in range(7)]
    for who in stops:
        httpx.post(f"{simulator.url}/_sim/inbound", json={"from": who, "to": NUMBER, "text": "stop"})
    client, recorder = recording_client(simulator)
    sync = OptOutSync(store, client, page_size=3)

    first = sync.run()

    assert (first.fetched, first.added, first.skipped, first.since) == (7, 7, 0, None)
    assert [q["page[number]"] for q in recorder.queries] == ["1", "2", "3"]
    assert all("created_at[gte]" not in q and q["page[size]"] == "3" for q in recorder.queries)
    optouts = Suppressions.of(store)
    rows = [optouts.get(who, DEFAULT_PROFILE_ID) for who in stops]
    assert all(r is not None and r.source == TELNYX_SYNC and r.number == NUMBER and r.keyword == "stop" for r in rows)
    newest = max(rule["created_at"] for rule in simulator.optouts.rules())
    assert first.high_water_mark == newest == sync.mark()

    time.sleep(0.01)
    httpx.post(f"{simulator.url}/_sim/inbound", json={"from": "+13125550990", "to": NUMBER, "text": "END"})
    recorder.queries.clear()
    second = sync.run()

    assert [q.get("created_at[gte]") for q in recorder.queries] == [newest]
    assert (second.since, second.fetched, second.added) == (newest, 2, 1)  # gte: the newest old one again
    assert optouts.get("+13125550990", DEFAULT_PROFILE_ID).keyword == "end"
    assert sync.mark() > newest
    client.close()


def test_the_sync_skips_redacted_numbers_and_a_failed_pass_keeps_the_mark(store, simulator):
    simulator.optouts.add({"from": NUMBER, "to": "+1312555****", "keyword": "STOP",
                           "messaging_profile_id": DEFAULT_PROFILE_ID, "created_at": "2026-02-15T20:16:07.503+00:00"})
    client, _ = recording_client(simulator)
    result = OptOutSync(store, client).run()
    assert (result.fetched, result.added, result.skipped) == (1, 0, 1)
    assert result.high_water_mark == "2026-02-15T20:16:07.503+00:00"
    client.close()

    broken = TelnyxClient.build(api_key="KEY-test", base_url="http://127.0.0.1:9/v2", attempts=1)
    with pytest.raises(Exception):  # noqa: B017 - unreachable Telnyx, whatever the client raises
        OptOutSync(store, broken).run()
    assert OptOutSync(store, broken).mark() == "2026-02-15T20:16:07.503+00:00"
    broken.close()


def test_the_scheduler_syncs_periodically_in_the_background(stack):
    who = recipient()
    text_in(stack, who, "stopall", webhook=False)
    periodic = PeriodicOptOutSync(OptOutSync(stack.services.store, stack.services.telnyx), 0.05)
    scheduler = Scheduler(stack.settings, stack.services.store, stack.actors, optout_sync=periodic)

    synced = 0
    deadline = time.monotonic() + 10
    while synced == 0 and time.monotonic() < deadline:
        synced += scheduler.tick()["optouts_synced"]
        time.sleep(0.05)
    periodic.close()

    assert synced >= 1
    assert Suppressions.of(stack.services.store).get(who, DEFAULT_PROFILE_ID).source == TELNYX_SYNC


def test_periodic_sync_off_or_without_a_client_does_nothing():
    assert PeriodicOptOutSync(None, 300).tick() == {"optouts_synced": 0}
    assert PeriodicOptOutSync(None, 0).tick() == {"optouts_synced": 0}


def test_cli_sync_runs_one_pass(base_settings, simulator, store):
    for i in range(3):
        httpx.post(f"{simulator.url}/_sim/inbound", json={"from": f"+1312555092{i}", "to": NUMBER, "text": "quit"})
    env = {**os.environ, "DATABASE_URL": base_settings.database_url, "TELNYX_API_KEY": "KEY-test",
           "TELNYX_BASE_URL": f"{simulator.url}/v2"}

    done = subprocess.run([sys.executable, "-m", "producers.cli", "optouts", "sync", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["fetched"], result["added"], result["since"]) == (3, 3, None)
    assert result["high_water_mark"] == OptOutSync(store, None).mark()  # type: ignore[arg-type]
    listed = subprocess.run([sys.executable, "-m", "producers.cli", "optouts", "list", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert {r["recipient"] for r in json.loads(listed.stdout)["data"]} == {f"+1312555092{i}" for i in range(3)}
