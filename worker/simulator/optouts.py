"""Opt-out endpoints of the simulator: ``GET /v2/messaging_optouts`` serving the block list
(:mod:`worker.simulator.optout_list`), and ``POST /_sim/inbound``, where a recipient texts one of our numbers
(a STOP or START in it changes the list).
"""

from __future__ import annotations

import operator
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker.simulator.http import Refusal, json_object, paged, require_auth
from worker.simulator.state import now_iso

if TYPE_CHECKING:
    from worker.simulator.core import Simulator


def _matches(rule: dict[str, Any], request: Request) -> bool:
    query = request.query_params
    checks = [
        query.get("filter[messaging_profile_id]") in (None, rule["messaging_profile_id"]),
        query.get("filter[from]") in (None, rule["from"]),
    ]
    created = datetime.fromisoformat(rule["created_at"])
    for bound, keep in (("created_at[gte]", operator.ge), ("created_at[lte]", operator.le)):
        if query.get(bound):
            try:
                checks.append(keep(created, datetime.fromisoformat(query[bound].replace("Z", "+00:00"))))
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
