"""Opt-outs in the simulator: inbound STOP / START from a recipient, the block list they build, and
``GET /v2/messaging_optouts`` serving it.

Telnyx applies the block per messaging profile: after a recipient texts STOP to a profile's number, sends
from that profile to them answer 409 / 40300 until they text START or UNSTOP. In the list, ``from`` is the
Telnyx number that received the STOP and ``to`` the recipient who sent it.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker.simulator.http import Refusal, json_object, paged, require_auth
from worker.simulator.state import now_iso

if TYPE_CHECKING:
    from worker.simulator.app import Simulator

OPT_OUT = frozenset({"stop", "stopall", "stop all", "unsubscribe", "cancel", "end", "quit"})
OPT_IN = frozenset({"start", "unstop"})


def keyword(text: str | None) -> str | None:
    word = " ".join((text or "").split()).lower()
    return word if word in OPT_OUT | OPT_IN else None


class OptOutList:
    """The block rules, one per (recipient, messaging profile)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: dict[tuple[str, str], dict[str, Any]] = {}

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()

    def blocks(self, sender: str, recipient: str, profile: str) -> bool:
        with self._lock:
            return (recipient, profile) in self._rules

    def apply(self, *, recipient: str, number: str, profile: str, text: str | None) -> str | None:
        """Update the list for an inbound message; returns the keyword that acted, if any."""
        found = keyword(text)
        with self._lock:
            if found in OPT_OUT:
                self._rules.setdefault((recipient, profile), {
                    "from": number, "to": recipient, "keyword": found.upper(), "messaging_profile_id": profile,
                    "created_at": now_iso(),
                })
            elif found in OPT_IN:
                self._rules.pop((recipient, profile), None)
        return found

    def add(self, rule: dict[str, Any]) -> None:
        with self._lock:
            self._rules[(rule["to"], rule["messaging_profile_id"])] = rule

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted(self._rules.values(), key=lambda r: r["created_at"])


def _matches(rule: dict[str, Any], request: Request) -> bool:
    query = request.query_params
    checks = [
        query.get("filter[messaging_profile_id]") in (None, rule["messaging_profile_id"]),
        query.get("filter[from]") in (None, rule["from"]),
    ]
    created = datetime.fromisoformat(rule["created_at"])
    for bound, keep in (("created_at[gte]", lambda b: created >= b), ("created_at[lte]", lambda b: created <= b)):
        if query.get(bound):
            try:
                checks.append(keep(datetime.fromisoformat(query[bound].replace("Z", "+00:00"))))
            except ValueError:
                raise Refusal(400, "10015", "Bad Request", f"{bound} must be an ISO-8601 date-time.") from None
    return all(checks)


def routes(sim: Simulator) -> list[Route]:
    async def list_optouts(request: Request) -> Response:
        try:
            require_auth(request, sim.config.api_key)
            found = [rule for rule in sim.optouts.rules() if _matches(rule, request)]
            if request.query_params.get("redaction_enabled") == "true":
                found = [{**rule, "to": rule["to"][:-4] + "****"} for rule in found]
            return JSONResponse(paged(request, found))
        except Refusal as refusal:
            return refusal.response()

    async def inbound(request: Request) -> Response:
        """Control: a recipient texts one of our numbers (``{"from", "to", "text", "messaging_profile_id"?,
        "webhook_url"?}``); the ``message.received`` webhook goes to ``webhook_url``, else ``--webhook-url``
        (Telnyx sends it to the receiving number's messaging profile URL)."""
        try:
            body = await json_object(request)
        except Refusal as refusal:
            return refusal.response()
        profile = body.get("messaging_profile_id") or sim.config.profile_id
        acted = sim.optouts.apply(recipient=body["from"], number=body["to"], profile=profile, text=body.get("text"))
        payload = {
            "record_type": "message", "direction": "inbound", "id": str(uuid.uuid4()), "type": "SMS",
            "messaging_profile_id": profile, "organization_id": sim.organization_id,
            "from": {"phone_number": body["from"], "carrier": "T-MOBILE USA, INC.", "line_type": "Wireless"},
            "to": [{"phone_number": body["to"], "carrier": "Telnyx", "line_type": "Wireless",
                    "status": "webhook_delivered"}],
            "cc": [], "text": body.get("text"), "subject": None, "media": [], "encoding": "GSM-7", "parts": 1,
            "num_chars": len(body.get("text") or ""), "cost": {"amount": "0.0000", "currency": "USD"},
            "received_at": now_iso(), "sent_at": None, "completed_at": None, "valid_until": None, "errors": [],
            "tags": [], "tcr_campaign_id": None, "tcr_campaign_billable": False, "tcr_campaign_registered": None,
            "webhook_url": body.get("webhook_url") or sim.config.webhook_url,
            "webhook_failover_url": sim.config.webhook_failover_url,
        }
        sim.state.add_inbound(payload)
        sim.spawn(sim.emit_inbound(payload))
        return JSONResponse({"data": payload, "keyword": acted})

    return [
        Route("/v2/messaging_optouts", list_optouts, methods=["GET"]),
        Route("/_sim/inbound", inbound, methods=["POST"]),
    ]
