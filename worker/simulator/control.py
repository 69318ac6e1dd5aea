"""The control API under ``/_sim``: what tests read (the truth) and what they change (numbers owned, reset)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import worker.simulator.inventory as inventory
import worker.simulator.rules as rules
from worker.simulator.http import Refusal, json_object

if TYPE_CHECKING:
    from worker.simulator.core import Simulator


def routes(sim: Simulator) -> list[Route]:
    async def public_key(request: Request) -> Response:
        return JSONResponse({"public_key": sim.public_key})

    async def messages(request: Request) -> Response:
        return JSONResponse({"data": [
            {"id": m.id, "endpoint": m.endpoint, "statuses": [r["status"] for r in m.payload["to"]],
             "outcomes": m.outcomes, "idempotency_key": m.idempotency_key, "request": m.request,
             "events": [e["data"]["event_type"] for e in m.events]}
            for m in list(sim.state.messages.values())
        ]})

    async def stats(request: Request) -> Response:
        """Cheap counts for benchmarks that poll while thousands of messages arrive."""
        found = list(sim.state.messages.values())
        return JSONResponse({"messages": len(found),
                             "idempotency_keys": len({m.idempotency_key for m in found if m.idempotency_key})})

    async def arrivals(request: Request) -> Response:
        sender = request.query_params.get("from")
        return JSONResponse({"data": [a for a in list(sim.state.arrivals) if sender in (None, a["from"])]})

    async def webhooks(request: Request) -> Response:
        return JSONResponse({"data": list(sim.webhooks.attempts) if sim.webhooks else []})

    async def add_numbers(request: Request) -> Response:
        """Give the account numbers: ``{"numbers": [...], "messaging_profile_id"?}`` (default: the default
        profile); answers with the records added (numbers already owned are left as they are)."""
        try:
            body = await json_object(request)
            numbers = body.get("numbers")
            if not isinstance(numbers, list) or not all(rules.sender_kind(n) in ("long_code", "toll_free",
                                                                                 "short_code") for n in numbers):
                raise Refusal(400, "10015", "Bad Request", "'numbers' must be a list of +E.164 numbers or short codes.")
        except Refusal as refusal:
            return refusal.response()
        profile = body.get("messaging_profile_id", sim.config.profile_id)
        return JSONResponse({"data": inventory.book(sim).add(numbers, profile)})

    async def reset(request: Request) -> Response:
        sim.reset()
        return Response(status_code=204)

    return [
        Route("/_sim/public_key", public_key, methods=["GET"]),
        Route("/_sim/messages", messages, methods=["GET"]),
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/arrivals", arrivals, methods=["GET"]),
        Route("/_sim/webhooks", webhooks, methods=["GET"]),
        Route("/_sim/numbers", add_numbers, methods=["POST"]),
        Route("/_sim/reset", reset, methods=["POST"]),
    ]
