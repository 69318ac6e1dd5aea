"""The GCRA limiter against a real Redis: spacing, burst, cost, atomicity, server clock, deferral, push-back,
urgent share and live overrides.

Slots are compared on the Redis clock (``Reservation.at_us``, ``wait_s``), never by sleeping and timing.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import pytest
import redis

from worker.limiter import Limiter, Reservation
from worker.limits import LimitKeys, RateLimits, message_cost

A = LimitKeys("long_code", "+13125550001", "sms")
B = LimitKeys("long_code", "+13125550002", "sms")
US = 1_000_000

MakeLimiter = Callable[..., Limiter]


@pytest.fixture
def make(redis_url: str, namespace: str) -> Iterator[MakeLimiter]:
    """Limiters ("workers") on their own Redis connections, sharing the test's namespace."""
    clients: list[redis.Redis] = []

    def build(config: dict | None = None, account: dict | None = None, **options) -> Limiter:
        client = redis.Redis.from_url(redis_url)
        clients.append(client)
        return Limiter(client, namespace=namespace, limits=RateLimits(config, account), **options)

    yield build
    for client in clients:
        client.close()


def reserve_all(limiter: Limiter, keys: LimitKeys, count: int, **options) -> list[Reservation]:
    options.setdefault("max_wait_s", 60)
    return [limiter.reserve(keys, **options) for _ in range(count)]


def gaps(reservations: list[Reservation]) -> list[int]:
    return [b.at_us - a.at_us for a, b in itertools.pairwise(reservations)]


def test_reservations_for_one_sender_are_spaced_one_interval_apart(make):
    limiter = make({"long_code": 10})

    got = reserve_all(limiter, A, 6)

    assert all(r.granted for r in got)
    assert gaps(got) == [100_000] * 5
    assert got[0].wait_s < 0.01 and got[0].limited_by is None
    # The waits say the same on their own: slot k is k intervals after the first (less the time the calls took).
    for k, r in enumerate(got):
        assert k * 0.1 - 0.05 < r.wait_s <= k * 0.1
    assert {r.limited_by for r in got[1:]} == {"sender"}


def test_burst_lets_that_many_go_at_once_then_spaces(make):
    limiter = make({"long_code": 10}, {"sms": 1000}, burst=3)

    got = reserve_all(limiter, A, 5)

    assert [r.wait_s < 0.01 for r in got] == [True, True, True, False, False]
    first = got[0].at_us
    assert got[3].at_us - first == pytest.approx(100_000, abs=20_000)
    assert got[4].at_us - got[3].at_us == 100_000


def test_a_three_part_sms_takes_three_slots(make):
    limiter = make({"long_code": 10})
    cost = message_cost("x" * 400, mms=False)

    first = limiter.reserve(A, cost=cost)
    second = limiter.reserve(A, cost=1)

    assert cost == 3
    assert second.at_us - first.at_us == 300_000


def test_account_saturated_leaves_the_sender_untouched(make):
    limiter = make({"long_code": 100}, {"sms": 1})
    tat = limiter.sender_key(B.sender_type, B.sender)
    account = limiter.account_key("sms")

    assert limiter.reserve(A, max_wait_s=0.5).granted
    before = booked(limiter, account)
    refused = limiter.reserve(B, max_wait_s=0.5)

    assert not refused.granted and refused.limited_by == "account"
    assert 0.9 < refused.wait_s <= 1.0
    assert limiter.client.exists(tat) == 0
    assert booked(limiter, account) == before


def test_sender_saturated_leaves_the_account_untouched(make):
    limiter = make({"long_code": 1}, {"sms": 100})
    account = limiter.account_key("sms")

    assert limiter.reserve(A, max_wait_s=0.5).granted
    before = booked(limiter, account), limiter.client.get(limiter.sender_key(A.sender_type, A.sender))
    refused = limiter.reserve(A, max_wait_s=0.5)

    assert not refused.granted and refused.limited_by == "sender"
    assert (booked(limiter, account), limiter.client.get(limiter.sender_key(A.sender_type, A.sender))) == before


def booked(limiter: Limiter, key: str) -> list[tuple[bytes, float]]:
    """The account calendar's intervals: (end, start)."""
    return limiter.client.zrange(key, 0, -1, withscores=True)


def test_a_slot_held_ahead_for_a_busy_sender_does_not_hold_up_the_others(make):
    limiter = make({"long_code": 1, "toll_free": 100}, {"sms": 10})
    first = limiter.reserve(A, max_wait_s=2)
    ahead = limiter.reserve(A, max_wait_s=2)  # A's next slot, a second out

    others = [limiter.reserve(LimitKeys("toll_free", f"+1800555{i:04d}", "sms"), max_wait_s=2) for i in range(11)]

    assert ahead.at_us - first.at_us == US
    offsets = [(r.at_us - first.at_us) // 1000 for r in others]
    # The account's free slots before A's are used, A's [1.0 s, 1.1 s) is stepped over.
    assert offsets == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1100, 1200]
    assert limiter.client.zcard(limiter.account_key("sms")) == 1  # touching bookings are merged


def test_concurrent_workers_never_exceed_any_rate(make):
    """8 workers reserve on two senders that share the account stream, with mixed costs.

    On every key the reserved slots never overlap (strict spacing), so no 1-s window holds more than the rate
    plus the last message's cost, and single-slot messages at most rate + 1.
    """
    rates = {"+13125550001": 20, "+13125550002": 15}
    account_mps = 25
    workers = [make(rates, {"sms": account_mps}) for _ in range(8)]
    taken: list[tuple[LimitKeys, int, Reservation]] = []
    lock = threading.Lock()

    def work(limiter: Limiter, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(25):
            keys, cost = rng.choice((A, B)), rng.choice((1, 1, 1, 2, 3))
            got = limiter.reserve(keys, cost=cost, max_wait_s=60)
            with lock:
                taken.append((keys, cost, got))

    threads = [threading.Thread(target=work, args=(w, i)) for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(taken) == 200 and all(r.granted for _, _, r in taken)
    by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for keys, cost, got in taken:
        by_key[keys.sender].append((got.at_us, cost))
        by_key["account"].append((got.at_us, cost))
    for key, slots in by_key.items():
        mps = rates.get(key, account_mps)
        interval = -(-US // mps)
        slots.sort()
        for (at, cost), (next_at, _) in itertools.pairwise(slots):
            assert next_at - at >= cost * interval, key
        assert max_in_any_second(slots) <= mps + 3, key


def test_single_slot_messages_never_exceed_rate_plus_one_in_any_second(make):
    workers = [make({"long_code": 7}, {"sms": 10}) for _ in range(6)]
    slots: dict[str, list[tuple[int, int]]] = defaultdict(list)
    lock = threading.Lock()

    def work(limiter: Limiter, keys: LimitKeys) -> None:
        for _ in range(15):
            got = limiter.reserve(keys, max_wait_s=60)
            with lock:
                slots[keys.sender].append((got.at_us, 1))
                slots["account"].append((got.at_us, 1))

    threads = [threading.Thread(target=work, args=(w, (A, B)[i % 2])) for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert max_in_any_second(slots["account"]) <= 10 + 1
    assert max_in_any_second(slots[A.sender]) <= 7 + 1 and max_in_any_second(slots[B.sender]) <= 7 + 1
    assert sum(1 for _ in slots["account"]) == 90


def max_in_any_second(slots: list[tuple[int, int]]) -> int:
    """The largest total cost of slots starting within any window of one second."""
    ordered = sorted(slots)
    return max(sum(c for at, c in ordered if start <= at < start + US) for start, _ in ordered)


def test_the_clock_is_the_redis_servers(make, monkeypatch):
    one, other = make({"long_code": 10}), make({"long_code": 10})

    first = one.reserve(A)
    monkeypatch.setattr(time, "time", lambda: 0.0)  # a worker with a wildly wrong clock
    second = other.reserve(A)

    seconds, micros = other.client.time()
    server_now = seconds * US + micros
    assert second.at_us - first.at_us == 100_000
    assert abs(first.at_us - server_now) < 1 * US
    # Both workers' waits point at the same instants on the server clock.
    assert second.at_us - int(second.wait_s * US) <= server_now


def test_a_wait_over_max_wait_reserves_nothing_and_says_how_long(make):
    limiter = make({"long_code": 1})
    tat = limiter.sender_key(A.sender_type, A.sender)

    first = limiter.reserve(A, max_wait_s=1)
    before = limiter.client.get(tat)
    deferred = limiter.reserve(A, max_wait_s=0.5)

    assert first.granted and not deferred.granted
    assert 0.9 < deferred.wait_s <= 1.0
    assert deferred.at_us == first.at_us + US == int(before)
    assert limiter.client.get(tat) == before
    later = limiter.reserve(A, max_wait_s=2)
    assert later.granted and later.at_us == deferred.at_us


def test_a_429_push_back_is_seen_by_every_worker(make):
    got_429, other = make({"long_code": 10}), make({"long_code": 10})

    assert got_429.push_back(A, 3.0) == pytest.approx(3.0, abs=0.001)
    refused = other.reserve(A, max_wait_s=1)
    assert not refused.granted and refused.limited_by == "sender"
    assert 2.9 < refused.wait_s <= 3.0
    assert got_429.push_back(A, 1.0) > 2.5  # never pulls a slot earlier
    assert other.reserve(B, max_wait_s=1).granted  # other senders carry on

    got_429.push_back(A, 2.0, account=True)
    account_full = other.reserve(LimitKeys("long_code", "+13125550003", "sms"), max_wait_s=1)
    assert not account_full.granted and account_full.limited_by == "account"


def test_without_urgent_traffic_non_urgent_messages_get_the_full_rate(make):
    limiter = make({"long_code": 10}, urgent_share=0.2)

    assert gaps(reserve_all(limiter, A, 6)) == [100_000] * 5


def test_while_urgent_traffic_is_active_non_urgent_get_one_minus_the_share(make):
    limiter = make({"long_code": 10}, {"sms": 1000}, urgent_share=0.2)

    limiter.reserve(A, urgent=True)
    bulk = reserve_all(limiter, A, 6)

    assert gaps(bulk) == [125_000] * 5  # 1 / ((1 - 0.2) x 10)
    assert {r.limited_by for r in bulk[1:]} == {"urgent_share"}
    assert limiter.status(A.sender)["urgent_active"] is True
    assert limiter.reserve(B).wait_s < 0.01  # another sender is not affected


def test_an_urgent_message_on_a_saturated_sender_goes_in_the_next_slots(make):
    rate, share, lookahead = 10, 0.2, 0.3
    limiter = make({"long_code": rate}, urgent_share=share)
    limiter.reserve(A, urgent=True)
    while limiter.reserve(A, max_wait_s=lookahead).granted:  # bulk fills every slot it may
        pass

    bulk = limiter.reserve(A, max_wait_s=0)
    urgent = limiter.reserve(A, urgent=True, max_wait_s=1)

    assert urgent.granted
    # At most the bulk lookahead plus one slot, and within one slot interval of the free share.
    assert urgent.wait_s <= lookahead + 1 / rate
    assert urgent.wait_s <= 1 / (share * rate)
    # The shared slot comes before the deferred bulk message's (share / (1 - share) of an interval earlier).
    assert not bulk.granted and urgent.at_us < bulk.at_us


def test_the_urgent_flag_expires(make):
    limiter = make({"long_code": 10}, urgent_share=0.2, urgent_active_s=0.2)

    limiter.reserve(A, urgent=True)
    assert limiter.status(A.sender)["urgent_active"] is True
    time.sleep(0.5)
    assert limiter.status(A.sender)["urgent_active"] is False
    assert gaps(reserve_all(limiter, A, 3)) == [100_000] * 2


def test_a_live_override_reaches_another_worker_within_its_cache_period(make):
    cli, worker = make(), make(cache_s=0.3)
    assert worker.rates(A)[0].mps == 1  # cached now

    cli.overrides.set(A.sender, 10)
    started = time.monotonic()
    while worker.rates(A)[0].mps != 10:
        assert time.monotonic() - started < 0.3 + 0.7
        time.sleep(0.01)

    assert gaps(reserve_all(worker, A, 3)) == [100_000] * 2
    assert cli.status(A.sender)["source"] == "override"
    assert cli.overrides.reset(A.sender) and cli.status(A.sender)["source"] == "default"


def test_status_shows_rate_source_and_backlog(make):
    limiter = make({"long_code": 2, "+13125550002": 4})
    reserve_all(limiter, A, 3)

    shown = limiter.status(A.sender)
    assert (shown["mps"], shown["source"], shown["matched"], shown["type"]) == (2, "config", "long_code",
                                                                                 "long_code")
    assert 1.4 < shown["backlog_s"] <= 1.5
    assert limiter.status(B.sender)["mps"] == 4 and limiter.status(B.sender)["backlog_s"] == 0
    assert "backlog_s" not in limiter.status("toll_free")


def test_idle_senders_leave_no_keys_behind(make):
    limiter = make({"long_code": 50}, urgent_share=0.2, urgent_active_s=0.1)

    limiter.reserve(A, urgent=True)
    limiter.reserve(A)
    assert limiter.client.keys(f"{limiter.namespace}:rl:*")
    for key in limiter.client.keys(f"{limiter.namespace}:rl:*"):
        assert 0 < limiter.client.pttl(key) <= 1_100
    time.sleep(1.2)
    assert limiter.client.keys(f"{limiter.namespace}:rl:*") == []


def test_one_redis_call_per_reservation(redis_url, namespace):
    class Counting(redis.Redis):
        calls = 0

        def execute_command(self, *args, **options):
            Counting.calls += 1
            return super().execute_command(*args, **options)

    client = Counting.from_url(redis_url)
    limiter = Limiter(client, namespace=namespace, limits=RateLimits({"long_code": 1000}), cache_s=60)
    limiter.reserve(A)  # loads the script and the overrides once
    Counting.calls = 0

    reserve_all(limiter, A, 20, max_wait_s=1)

    assert Counting.calls == 20
    client.close()


def test_a_hand_written_bad_override_is_ignored(make):
    limiter = make({"long_code": 10})
    limiter.client.hset(limiter.overrides.key, mapping={A.sender: "fast", B.sender: "-1"})

    assert limiter.rates(A)[0] == limiter.rates(B)[0]
    assert (limiter.rates(A)[0].mps, limiter.rates(A)[0].source) == (10, "config")
    assert limiter.reserve(A).granted
