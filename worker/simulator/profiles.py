"""Messaging-profile management in the simulator: alphanumeric sender IDs, profile metrics, the v1 secret,
and auto-response configurations.

The account has two profiles: the default (``SimulatorConfig.profile_id``, which owns the seeded numbers)
and an empty one, ``SECOND_PROFILE_ID``. Unknown profiles answer 404, and the number routes refuse to
assign numbers to them.
"""

from __future__ import annotations

import copy
import operator
import re
import secrets
import threading
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import worker.simulator.inventory as inventory
import worker.simulator.rules as rules
import worker.simulator.usage as usage
from worker.simulator.http import json_object, paged
from worker.simulator.numbers import QueryRefusal, guarded, invalid, missing, not_found, profile_value
from worker.simulator.state import ORGANIZATION_ID, now_iso

if TYPE_CHECKING:
    from worker.simulator.core import Simulator

SECOND_PROFILE_ID = "7d1b0fd5-3a3f-4a3b-9f44-2d6a1c5e2b10"
SEEDED_SENDER = "SENDQ"
COUNTRY = re.compile(r"^[A-Z]{2}$")
AUTORESP_OPS = ("start", "stop", "info")


def profile_record(profile_id: str, name: str, webhook_url: str | None, failover_url: str | None,
                   pool: bool) -> dict[str, Any]:
    """A messaging profile in Telnyx's ``MessagingMessagingProfile`` shape."""
    created = now_iso()
    return {
        "record_type": "messaging_profile", "id": profile_id, "name": name, "enabled": True,
        "organization_id": ORGANIZATION_ID, "ai_assistant_id": None, "alpha_sender": None,
        "daily_spend_limit": "100.00", "daily_spend_limit_enabled": False,
        "features": {"ai_opt_out_detection_enabled": False}, "health_webhook_url": None,
        "mms_fall_back_to_sms": False, "mms_transcoding": False, "mobile_only": False,
        "number_pool_settings": {"long_code_weight": 1.0, "toll_free_weight": 0.0, "skip_unhealthy": False,
                                 "sticky_sender": True, "geomatch": False} if pool else None,
        "redaction_enabled": False, "redaction_level": 2, "resource_group_id": None, "smart_encoding": False,
        "url_shortener_settings": None, "v1_secret": secrets.token_urlsafe(18), "webhook_api_version": "2",
        "webhook_url": webhook_url, "webhook_failover_url": failover_url, "whitelisted_destinations": ["US", "CA"],
        "created_at": created, "updated_at": created,
    }


class ProfileBook:
    """Profiles, their alphanumeric sender IDs and auto-response configs; thread-safe."""

    def __init__(self, sim: Simulator) -> None:
        self._lock = threading.Lock()
        self._config = sim.config
        self.profiles: dict[str, dict[str, Any]] = {}
        self.senders: dict[str, dict[str, Any]] = {}
        self.autoresp: dict[str, dict[str, dict[str, Any]]] = {}
        self.reset()

    def reset(self) -> None:
        config = self._config
        with self._lock:
            self.profiles = {
                config.profile_id: profile_record(config.profile_id, "sendq default", config.webhook_url,
                                                  config.webhook_failover_url, pool=True),
                SECOND_PROFILE_ID: profile_record(SECOND_PROFILE_ID, "sendq marketing", None, None, pool=False),
            }
            self.senders = {}
            self.autoresp = {pid: {} for pid in self.profiles}
        self.add_sender({"alphanumeric_sender_id": SEEDED_SENDER, "messaging_profile_id": config.profile_id})
        self.put_autoresp(config.profile_id, None, {"op": "stop", "keywords": ["STOP", "UNSUBSCRIBE"],
                                                    "country_code": "US", "resp_text": "You are unsubscribed."})

    def exists(self, profile_id: str) -> bool:
        with self._lock:
            return profile_id in self.profiles

    def pool_settings(self, profile_id: str) -> dict[str, Any] | None:
        """The profile's ``number_pool_settings``; None for an unknown profile or one without a pool."""
        with self._lock:
            found = self.profiles.get(profile_id)
            return copy.deepcopy(found["number_pool_settings"]) if found else None

    def profile(self, profile_id: str) -> dict[str, Any]:
        with self._lock:
            if profile_id not in self.profiles:
                raise not_found("Messaging profile", profile_id)
            return copy.deepcopy(self.profiles[profile_id])

    def regenerate_secret(self, profile_id: str) -> dict[str, Any]:
        with self._lock:
            if profile_id not in self.profiles:
                raise not_found("Messaging profile", profile_id)
            self.profiles[profile_id].update(v1_secret=secrets.token_urlsafe(18), updated_at=now_iso())
            return copy.deepcopy(self.profiles[profile_id])

    def add_sender(self, body: dict[str, Any]) -> dict[str, Any]:
        record = {"record_type": "alphanumeric_sender_id", "id": str(uuid.uuid4()),
                  "alphanumeric_sender_id": body["alphanumeric_sender_id"],
                  "messaging_profile_id": body["messaging_profile_id"], "organization_id": ORGANIZATION_ID,
                  "us_long_code_fallback": body.get("us_long_code_fallback")}
        with self._lock:
            self.senders[record["id"]] = record
        return copy.deepcopy(record)

    def sender(self, sender_id: str, *, remove: bool = False) -> dict[str, Any]:
        with self._lock:
            if sender_id not in self.senders:
                raise not_found("Alphanumeric sender ID", sender_id)
            return self.senders.pop(sender_id) if remove else copy.deepcopy(self.senders[sender_id])

    def senders_of(self, profile_id: str | None) -> list[dict[str, Any]]:
        """Every sender ID, or those of one profile."""
        with self._lock:
            return [copy.deepcopy(s) for s in self.senders.values() if profile_id in (None, s["messaging_profile_id"])]

    def profile_ids(self) -> list[str]:
        with self._lock:
            return list(self.profiles)

    def _configs(self, profile_id: str, config_id: str | None = None) -> dict[str, dict[str, Any]]:
        """A profile's auto-response configs (the lock held), checking the profile and config exist."""
        if profile_id not in self.profiles:
            raise not_found("Messaging profile", profile_id)
        configs = self.autoresp[profile_id]
        if config_id is not None and config_id not in configs:
            raise not_found("Auto-response config", config_id)
        return configs

    def autoresp_list(self, profile_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(list(self._configs(profile_id).values()))

    def autoresp_get(self, profile_id: str, config_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._configs(profile_id, config_id)[config_id])

    def autoresp_delete(self, profile_id: str, config_id: str) -> None:
        with self._lock:
            del self._configs(profile_id, config_id)[config_id]

    def put_autoresp(self, profile_id: str, config_id: str | None, fields: dict[str, Any]) -> dict[str, Any]:
        """Create (``config_id`` None) or replace an auto-response config."""
        with self._lock:
            configs = self._configs(profile_id, config_id)
            now = now_iso()
            old = configs[config_id] if config_id else {"id": str(uuid.uuid4()), "created_at": now}
            configs[old["id"]] = {**old, **fields, "updated_at": now}
            return copy.deepcopy(configs[old["id"]])


def sender_body(body: dict[str, Any], profiles: ProfileBook) -> dict[str, Any]:
    """A checked ``POST /alphanumeric_sender_ids`` body."""
    for field in ("alphanumeric_sender_id", "messaging_profile_id"):
        if body.get(field) in (None, ""):
            raise missing(field)
    sender = body["alphanumeric_sender_id"]
    if not isinstance(sender, str) or not rules.ALPHANUMERIC.match(sender):
        raise invalid("alphanumeric_sender_id", "An alphanumeric sender ID is 1-11 letters, digits or spaces, "
                                                "with at least one letter.")
    profile_value(body["messaging_profile_id"], profiles.exists)
    fallback = body.get("us_long_code_fallback")
    if fallback is not None and not (isinstance(fallback, str) and rules.sender_kind(fallback) == "long_code"):
        raise invalid("us_long_code_fallback", "us_long_code_fallback must be a +E.164 US long code.", "10016")
    return body


def autoresp_body(body: dict[str, Any]) -> dict[str, Any]:
    """The checked fields of an auto-response config (``AutoRespConfigCreateSchema``)."""
    for field in ("op", "keywords", "country_code"):
        if body.get(field) is None:
            raise missing(field)
    if body["op"] not in AUTORESP_OPS:
        raise invalid("op", f"op must be one of {', '.join(AUTORESP_OPS)}.")
    keywords = body["keywords"]
    if not isinstance(keywords, list) or not keywords or not all(isinstance(k, str) and k for k in keywords):
        raise invalid("keywords", "keywords must be a non-empty array of strings.")
    if not isinstance(body["country_code"], str) or not COUNTRY.match(body["country_code"]):
        raise invalid("country_code", "country_code must be an ISO 3166-1 alpha-2 code such as 'US'.")
    if body.get("resp_text") is not None and not isinstance(body["resp_text"], str):
        raise invalid("resp_text", "resp_text must be a string.")
    return {k: body.get(k) for k in ("op", "keywords", "country_code", "resp_text")}


def _dated(request: Request, record: dict[str, Any]) -> bool:
    for name in ("created_at", "updated_at"):
        for bound, keep in (("gte", operator.ge), ("lte", operator.le)):
            raw = request.query_params.get(f"{name}[{bound}]")
            if not raw:
                continue
            try:
                limit = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise QueryRefusal(f"{name}[{bound}]", "Expected an ISO-8601 date-time.") from None
            if not keep(datetime.fromisoformat(record[name]), limit):
                return False
    return True


def time_frame(request: Request) -> str:
    value = request.query_params.get("time_frame", usage.DEFAULT_TIME_FRAME)
    if value not in usage.TIME_FRAMES:
        raise QueryRefusal("time_frame", f"time_frame must be one of {', '.join(usage.TIME_FRAMES)}.")
    return value


class ProfileEndpoints:
    """The profile-management handlers, over a fresh :class:`ProfileBook` (which also tells the number
    routes which profiles exist)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.profiles = ProfileBook(sim)
        sim.on_reset(self.profiles.reset)
        numbers = inventory.book(sim)
        numbers.profile_known = self.profiles.exists
        numbers.pool_settings = self.profiles.pool_settings

    async def list_senders(self, request: Request) -> Response:
        wanted = request.query_params.get("filter[messaging_profile_id]")
        return JSONResponse(paged(request, self.profiles.senders_of(wanted)))

    async def create_sender(self, request: Request) -> Response:
        body = sender_body(await json_object(request), self.profiles)
        return JSONResponse({"data": self.profiles.add_sender(body)})

    async def get_sender(self, request: Request) -> Response:
        return JSONResponse({"data": self.profiles.sender(request.path_params["id"])})

    async def delete_sender(self, request: Request) -> Response:
        return JSONResponse({"data": self.profiles.sender(request.path_params["id"], remove=True)})

    async def list_metrics(self, request: Request) -> Response:
        frame, wanted = time_frame(request), request.query_params.get("id")
        ids = [pid for pid in self.profiles.profile_ids() if wanted in (None, pid)]
        return JSONResponse(paged(request, [usage.overview(self.sim, pid, frame) for pid in ids]))

    async def profile_metrics(self, request: Request) -> Response:
        profile_id = self.profiles.profile(request.path_params["id"])["id"]
        return JSONResponse({"data": usage.detailed(self.sim, profile_id, time_frame(request))})

    async def regenerate_secret(self, request: Request) -> Response:
        return JSONResponse({"data": self.profiles.regenerate_secret(request.path_params["id"])})

    async def list_autoresp(self, request: Request) -> Response:
        country = request.query_params.get("country_code")
        found = [c for c in self.profiles.autoresp_list(request.path_params["profile_id"])
                 if country in (None, c["country_code"]) and _dated(request, c)]
        return JSONResponse(paged(request, found))

    async def create_autoresp(self, request: Request) -> Response:
        fields = autoresp_body(await json_object(request))
        return JSONResponse({"data": self.profiles.put_autoresp(request.path_params["profile_id"], None, fields)})

    async def get_autoresp(self, request: Request) -> Response:
        params = request.path_params
        return JSONResponse({"data": self.profiles.autoresp_get(params["profile_id"], params["autoresp_cfg_id"])})

    async def put_autoresp(self, request: Request) -> Response:
        profile_id, config_id = request.path_params["profile_id"], request.path_params["autoresp_cfg_id"]
        self.profiles.autoresp_get(profile_id, config_id)  # 404 before judging the body
        fields = autoresp_body(await json_object(request))
        return JSONResponse({"data": self.profiles.put_autoresp(profile_id, config_id, fields)})

    async def delete_autoresp(self, request: Request) -> Response:
        self.profiles.autoresp_delete(request.path_params["profile_id"], request.path_params["autoresp_cfg_id"])
        return JSONResponse("OK")  # Telnyx answers a bare JSON string here

    def routes(self) -> list[Route]:
        autoresp = "/v2/messaging_profiles/{profile_id}/autoresp_configs"
        table = [
            ("/v2/alphanumeric_sender_ids", "GET", self.list_senders),
            ("/v2/alphanumeric_sender_ids", "POST", self.create_sender),
            ("/v2/alphanumeric_sender_ids/{id}", "GET", self.get_sender),
            ("/v2/alphanumeric_sender_ids/{id}", "DELETE", self.delete_sender),
            ("/v2/messaging_profile_metrics", "GET", self.list_metrics),
            ("/v2/messaging_profiles/{id}/metrics", "GET", self.profile_metrics),
            ("/v2/messaging_profiles/{id}/actions/regenerate_secret", "POST", self.regenerate_secret),
            (autoresp, "GET", self.list_autoresp),
            (autoresp, "POST", self.create_autoresp),
            (autoresp + "/{autoresp_cfg_id}", "GET", self.get_autoresp),
            (autoresp + "/{autoresp_cfg_id}", "PUT", self.put_autoresp),
            (autoresp + "/{autoresp_cfg_id}", "DELETE", self.delete_autoresp),
        ]
        return [Route(path, guarded(self.sim, handler), methods=[method]) for path, method, handler in table]


def routes(sim: Simulator) -> list[Route]:
    """Every profile-management route of the simulator."""
    return ProfileEndpoints(sim).routes()
