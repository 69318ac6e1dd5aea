"""The simulated account's numbers and the bulk-update orders that reassign them.

One :class:`NumberBook` per simulator, shared by the ``numbers`` routes (which serve it) and the
``profiles`` routes (which count a profile's numbers). Records are kept in Telnyx's
``PhoneNumberWithMessagingSettings`` shape so handlers can return copies as they are.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import worker.simulator.rules as rules
from worker.simulator.state import ORGANIZATION_ID, now_iso

if TYPE_CHECKING:
    from worker.simulator.core import Simulator

KINDS = ("phone", "mobile", "hosted")
#: What a profile's ``number_pool_settings`` hold when nobody installed the profiles (long codes only).
DEFAULT_POOL_SETTINGS = {"long_code_weight": 1.0, "toll_free_weight": 0.0}
#: The seeded numbers outside the profile's pool (which comes from ``SimulatorConfig.pool_numbers``).
MAIN_NUMBER = "+13125550001"
SPARE_NUMBER = "+13125550190"  # owned but on no profile: something to assign
TOLL_FREE = "+18445550001"
SHORT_CODE = "22395"
MOBILE_NUMBER = "+13125550150"
HOSTED_NUMBER = "+14155550120"
_HOSTED_NS = uuid.UUID("6f1d3c52-2b0e-4a59-9a53-3f7d2f0c8e11")


def _features(international: bool, mms: bool) -> dict[str, Any]:
    sms = {"domestic_two_way": True, "international_inbound": international, "international_outbound": international}
    return {"sms": sms, "mms": dict(sms) if mms else None}


#: What Telnyx reports per number type: eligible products and SMS / MMS features.
_PROFILES_BY_TYPE = {
    "long-code": (["A2P", "P2P"], _features(True, True)),
    "toll-free": (["A2P"], _features(True, False)),
    "short-code": (["A2P"], _features(False, True)),
}


def number_record(number_id: str, phone: str, kind: str, profile_id: str | None, created: str) -> dict[str, Any]:
    """A number in Telnyx's ``PhoneNumberWithMessagingSettings`` shape."""
    products, features = _PROFILES_BY_TYPE[kind]
    return {
        "record_type": "messaging_settings", "id": number_id, "phone_number": phone,
        "messaging_profile_id": profile_id, "organization_id": ORGANIZATION_ID, "country_code": "US",
        "type": kind, "messaging_product": products[0], "eligible_messaging_products": list(products),
        "traffic_type": products[0], "features": copy.deepcopy(features), "tags": [],
        "health": {"message_count": 0, "inbound_outbound_ratio": 0.0, "success_ratio": 1.0, "spam_ratio": 0.0},
        "created_at": created, "updated_at": created,
    }


def mobile_record(number_id: str, phone: str, profile_id: str | None, created: str) -> dict[str, Any]:
    """A mobile number in Telnyx's ``MobilePhoneNumberWithMessagingSettings`` shape (SMS only, P2P)."""
    return {
        "record_type": "messaging_settings", "id": number_id, "phone_number": phone,
        "messaging_profile_id": profile_id, "organization_id": ORGANIZATION_ID, "country_code": "US",
        "type": "longcode", "messaging_product": "P2P", "traffic_type": "P2P", "tags": [],
        "features": {"sms": _features(False, False)["sms"]}, "created_at": created, "updated_at": created,
    }


def kind_of(number: str) -> str:
    """The record type Telnyx gives a number of this form."""
    return {"toll_free": "toll-free", "short_code": "short-code"}.get(rules.sender_kind(number) or "", "long-code")


def seed(profile_id: str, pool: tuple[str, ...], extra: tuple[str, ...] = ()) -> dict[str, dict[str, dict[str, Any]]]:
    """A small plausible account: long codes (the main number and the pool), a spare long code, one
    toll-free number, one short code, one mobile number and one hosted number; plus ``extra`` numbers
    (``SimulatorConfig.numbers``) on the default profile."""
    created = now_iso()
    plan = [(MAIN_NUMBER, "long-code", profile_id), *((n, "long-code", profile_id) for n in pool),
            (SPARE_NUMBER, "long-code", None), (TOLL_FREE, "toll-free", profile_id),
            (SHORT_CODE, "short-code", profile_id)]
    seeded = {number for number, _, _ in plan} | {MOBILE_NUMBER, HOSTED_NUMBER}
    plan += [(n, kind_of(n), profile_id) for n in dict.fromkeys(extra) if n not in seeded]
    phone = {}
    for index, (number, kind, profile) in enumerate(plan):
        number_id = str(1_293_384_261_075_731_400 + index)
        phone[number_id] = number_record(number_id, number, kind, profile, created)
    mobile_id = str(1_293_384_261_075_731_900)
    hosted_id = str(uuid.uuid5(_HOSTED_NS, HOSTED_NUMBER))
    return {
        "phone": phone,
        "mobile": {mobile_id: mobile_record(mobile_id, MOBILE_NUMBER, profile_id, created)},
        "hosted": {hosted_id: number_record(hosted_id, HOSTED_NUMBER, "long-code", profile_id, created)},
    }


@dataclass
class BulkOrder:
    """One ``messaging_numbers_bulk_update`` order and how far it has got."""

    order_id: str
    profile_id: str | None
    assign_only: bool
    started: float
    pending: list[str]
    failed: list[str]
    success: list[str] = field(default_factory=list)
    polls: int = 0

    def view(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "record_type": "messaging_numbers_bulk_update",
                "success": list(self.success), "pending": list(self.pending), "failed": list(self.failed)}


class NumberBook:
    """Every number of the simulated account, by kind and id, and the bulk orders; thread-safe.

    A bulk order settles gradually so pollers see ``pending`` drain: each poll, and each
    ``bulk_interval_s`` since the order started, whichever counts more, moves ``bulk_batch`` numbers
    to ``success``. Tests may change both attributes. ``profile_known`` says whether a messaging
    profile exists (the ``profiles`` routes install it; until then any profile is accepted).
    """

    def __init__(self, profile_id: str, pool: tuple[str, ...], extra: tuple[str, ...] = (), *, bulk_batch: int = 2,
                 bulk_interval_s: float = 1.0) -> None:
        self._lock = threading.RLock()
        self._seed_args = (profile_id, pool, extra)
        self.bulk_batch = bulk_batch
        self.bulk_interval_s = bulk_interval_s
        self.profile_known: Callable[[str], bool] = lambda _profile: True
        #: A profile's ``number_pool_settings`` (None: no number pool); the ``profiles`` routes install it.
        self.pool_settings: Callable[[str], dict[str, Any] | None] = lambda _profile: dict(DEFAULT_POOL_SETTINGS)
        self._numbers: dict[str, dict[str, dict[str, Any]]] = {}
        self._orders: dict[str, BulkOrder] = {}
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._numbers = seed(*self._seed_args)
            self._orders = {}
            self._added_ids = itertools.count()

    def _find(self, kind: str, key: str) -> dict[str, Any] | None:
        found = self._numbers[kind].get(key)
        return found or next((r for r in self._numbers[kind].values() if r["phone_number"] == key), None)

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """A copy of one number, looked up by its id or by the number itself."""
        with self._lock:
            found = self._find(kind, key)
            return copy.deepcopy(found) if found else None

    def all(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(list(self._numbers[kind].values()))

    def owner(self, phone: str) -> tuple[str, dict[str, Any]] | None:
        """The kind and a copy of the record holding ``phone``, if the account owns it."""
        with self._lock:
            for kind in KINDS:
                found = self._find(kind, phone)
                if found and found["phone_number"] == phone:
                    return kind, copy.deepcopy(found)
        return None

    def owns(self, phone: str) -> bool:
        return self.owner(phone) is not None

    def add(self, numbers: list[str], profile_id: str | None) -> list[dict[str, Any]]:
        """Give the account more phone numbers (``POST /_sim/numbers``); numbers it owns already stay as they are."""
        added = []
        with self._lock:
            for number in dict.fromkeys(numbers):
                if self.owns(number):
                    continue
                number_id = str(1_293_384_261_075_732_000 + next(self._added_ids))
                record = number_record(number_id, number, kind_of(number), profile_id, now_iso())
                self._numbers["phone"][number_id] = record
                added.append(copy.deepcopy(record))
        return added

    def pool(self, profile_id: str) -> list[str] | None:
        """The numbers a number-pool send on ``profile_id`` may use; None when the profile has no number pool.

        Telnyx: "all long-code and toll-free numbers on the profile form the pool", each type only while its
        weight in ``number_pool_settings`` is above 0.
        """
        settings = self.pool_settings(profile_id)
        if settings is None:
            return None
        types = {t for t, weight in (("long-code", "long_code_weight"), ("toll-free", "toll_free_weight"))
                 if (settings.get(weight) or 0) > 0}
        with self._lock:
            return sorted(r["phone_number"] for r in self._numbers["phone"].values()
                          if r["messaging_profile_id"] == profile_id and r["type"] in types)

    def update(self, kind: str, key: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            found = self._find(kind, key)
            if found is None:
                return None
            found.update(copy.deepcopy(changes), updated_at=now_iso())
            return copy.deepcopy(found)

    def remove(self, kind: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._find(kind, key)
            return self._numbers[kind].pop(found["id"]) if found else None

    def start_bulk(self, profile_id: str | None, numbers: list[str], assign_only: bool) -> dict[str, Any]:
        """Open an order: owned E.164 numbers wait in ``pending``, the rest fail at once."""
        unique = list(dict.fromkeys(numbers))
        with self._lock:
            owned = [n for n in unique if rules.is_phone_number(n) and self.owner(n)]
            order = BulkOrder(str(uuid.uuid4()), profile_id, assign_only, time.monotonic(), pending=owned,
                              failed=[n for n in unique if n not in owned])
            self._orders[order.order_id] = order
            return order.view()

    def poll_bulk(self, order_id: str) -> dict[str, Any] | None:
        """The order as it stands now, after settling what this poll (or the time passed) allows."""
        with self._lock:
            order = self._orders.get(order_id)
            if order is None:
                return None
            order.polls += 1
            steps = max(order.polls, int((time.monotonic() - order.started) / self.bulk_interval_s))
            due = max(0, steps * self.bulk_batch - len(order.success))
            for number in order.pending[:due]:
                self._settle(order, number)
            del order.pending[:due]
            return order.view()

    def orders(self) -> list[dict[str, Any]]:
        """Every bulk order so far, oldest first, with the numbers it was given (``numbers``) and its polls."""
        with self._lock:
            return [{**o.view(), "numbers": [*o.success, *o.pending, *o.failed], "messaging_profile_id": o.profile_id,
                     "polls": o.polls} for o in sorted(self._orders.values(), key=lambda o: o.started)]

    def _settle(self, order: BulkOrder, number: str) -> None:
        held = self.owner(number)
        if held is None:  # released since the order started
            order.failed.append(number)
            return
        self.update(held[0], held[1]["id"], {"messaging_profile_id": order.profile_id})
        order.success.append(number)

    def count_on(self, profile_id: str) -> int:
        """How many numbers of every kind are assigned to a messaging profile."""
        with self._lock:
            return sum(r["messaging_profile_id"] == profile_id for kind in KINDS for r in self._numbers[kind].values())


_BOOKS: weakref.WeakKeyDictionary[Simulator, NumberBook] = weakref.WeakKeyDictionary()
_BOOKS_LOCK = threading.Lock()


def book(sim: Simulator) -> NumberBook:
    """The simulator's number book, made on first use and cleared by ``POST /_sim/reset``."""
    with _BOOKS_LOCK:
        found = _BOOKS.get(sim)
        if found is None:
            found = _BOOKS[sim] = NumberBook(sim.config.profile_id, tuple(sim.config.pool_numbers),
                                             tuple(sim.config.numbers))
            sim.on_reset(found.reset)
        return found
