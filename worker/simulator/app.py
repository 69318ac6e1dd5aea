"""The simulator's HTTP surface: Telnyx's API under ``/v2`` and the control API under ``/_sim``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker import sms
from worker.signature import Signer
from worker.simulator.state import Replay, SimMessage, SimState, new_message_id, now_iso
from worker.simulator.webhooks import WebhookSender, event

DEFAULT_KEY_SEED = "sendq-simulator"
DEFAULT_PROFILE_ID = "4001767e-ce0f-4cae-9d5f-0d5e636e7809"
ORGANIZATION_ID = "9d76d591-1b7d-405d-8c64-1320ee070245"
#: The numbers of the default messaging profile, used when a number pool sends.
POOL_NUMBERS = ("+13125550100", "+13125550101", "+13125550102")
COST_PER_PART = 0.004


@dataclass
class SimulatorConfig:
    """How the simulator behaves. Everything a test may want to vary lives here."""

    webhook_url: str | None = None
    webhook_failover_url: str | None = None
    #: None accepts any bearer key; a value requires exactly that key.
    api_key: str | None = None
    key_seed: str = DEFAULT_KEY_SEED
    sent_delay_s: float = 0.05
    final_delay_s: float = 0.05
    #: Final status every message ends in.
    outcome: str = "delivered"
    webhook_retry_base_s: float = 0.5
    profile_id: str = DEFAULT_PROFILE_ID
    pool_numbers: tuple[str, ...] = POOL_NUMBERS


def telnyx_error(status: int, code: str, title: str, detail: str | None = None,
                 pointer: str | None = None) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "title": title, "detail": detail,
                             "meta": {"url": f"https://developers.telnyx.com/docs/overview/errors/{code}"}}
    if pointer:
        error["source"] = {"pointer": pointer}
    return JSONResponse({"errors": [error]}, status_code=status)


class Refusal(Exception):
    def __init__(self, status: int, code: str, title: str, detail: str | None = None,
                 pointer: str | None = None) -> None:
        super().__init__(title)
        self.response = telnyx_error(status, code, title, detail, pointer)


@dataclass
class Simulator:
    config: SimulatorConfig = field(default_factory=SimulatorConfig)
    state: SimState = field(default_factory=SimState)

    def __post_init__(self) -> None:
        self.signer = Signer.from_seed(self.config.key_seed)
        self.started = time.monotonic()
        self.tasks: set[asyncio.Task[None]] = set()
        self.webhooks: WebhookSender | None = None

    @property
    def public_key(self) -> str:
        return self.signer.public_key

    # -- message building -----------------------------------------------------------------------------

    def _sender(self, body: dict[str, Any]) -> str:
        sender = body.get("from")
        if sender:
            if not isinstance(sender, str) or sms.sender_kind(sender) is None:
                raise Refusal(400, "40305", "Invalid 'from' address",
                              "The 'from' address should be a valid phone number, short code or alphanumeric "
                              "sender ID associated with the sending messaging profile.", "/from")
            return sender
        if body.get("messaging_profile_id"):
            return self.config.pool_numbers[len(self.state.arrivals) % len(self.config.pool_numbers)]
        raise Refusal(400, "10004", "Missing required parameter",
                      "Either 'from' or 'messaging_profile_id' is required.", "/from")

    def build_payload(self, body: dict[str, Any]) -> dict[str, Any]:
        to = body.get("to")
        if not to:
            raise Refusal(400, "10004", "Missing required parameter", "The 'to' parameter is required.", "/to")
        if not isinstance(to, str) or not (sms.is_e164(to) or sms.SHORT_CODE.match(to)):
            raise Refusal(400, "40310", "Invalid 'to' address", "The 'to' address should be a single valid number.",
                          "/to")
        sender = self._sender(body)
        text = body.get("text") or ""
        media = body.get("media_urls") or []
        if not text and not media:
            raise Refusal(400, "40316", "No content provided", "Provide 'text' and/or 'media_urls'.")
        mms = bool(media) or body.get("type") == "MMS"
        counted = sms.segments(text)
        parts = 1 if mms else counted.parts
        if parts > sms.MAX_PARTS:
            raise Refusal(400, "40302", "Message too large",
                          f"The message was divided into {parts} parts. The maximum is {sms.MAX_PARTS}.")
        now = datetime.now(UTC)
        cost = f"{COST_PER_PART * parts:.4f}"
        return {
            "record_type": "message", "direction": "outbound", "id": new_message_id(),
            "type": "MMS" if mms else "SMS",
            "messaging_profile_id": body.get("messaging_profile_id") or self.config.profile_id,
            "organization_id": ORGANIZATION_ID,
            "from": {"phone_number": sender, "carrier": "Telnyx", "line_type": "Wireless"},
            "to": [{"phone_number": to, "status": "queued", "carrier": "T-MOBILE USA, INC.",
                    "line_type": "Wireless"}],
            "cc": [], "text": text, "subject": body.get("subject"),
            "media": [{"url": url, "content_type": None, "sha256": None, "size": None} for url in media],
            "encoding": "UTF-8" if mms else counted.encoding, "parts": parts, "num_chars": len(text),
            "smart_encoding_applied": False,
            "cost": {"amount": cost, "currency": "USD"},
            "cost_breakdown": {"rate": {"amount": cost, "currency": "USD"},
                               "carrier_fee": {"amount": "0.0000", "currency": "USD"}},
            "received_at": now.isoformat(timespec="milliseconds"), "sent_at": None, "completed_at": None,
            "valid_until": (now + timedelta(hours=4)).isoformat(timespec="milliseconds"),
            "wait_seconds": 0.0, "errors": [], "tags": [],
            "tcr_campaign_id": None, "tcr_campaign_billable": False, "tcr_campaign_registered": None,
            "webhook_url": body.get("webhook_url") or self.config.webhook_url,
            "webhook_failover_url": body.get("webhook_failover_url") or self.config.webhook_failover_url,
        }

    # -- lifecycle ------------------------------------------------------------------------------------

    def accept(self, body: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        message = SimMessage(payload=self.build_payload(body), request=body, idempotency_key=idempotency_key,
                             outcome=self.config.outcome)
        self.state.add(message, time.monotonic() - self.started)
        task = asyncio.get_running_loop().create_task(self._lifecycle(message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return message.payload

    async def _lifecycle(self, message: SimMessage) -> None:
        payload = message.payload
        await asyncio.sleep(self.config.sent_delay_s)
        payload["to"][0]["status"] = "sent"
        payload["sent_at"] = now_iso()
        await self._emit(message, "message.sent")
        await asyncio.sleep(self.config.final_delay_s)
        payload["to"][0]["status"] = message.outcome
        payload["completed_at"] = now_iso()
        payload["valid_until"] = None
        if message.outcome != "delivered":
            payload["errors"] = [{"code": "40008", "title": "Undeliverable",
                                  "detail": "The recipient carrier did not accept the message."}]
        await self._emit(message, "message.finalized")

    async def _emit(self, message: SimMessage, event_type: str) -> None:
        envelope = event(event_type, message.payload)
        message.events.append(envelope)
        urls = [u for u in (message.payload.get("webhook_url"), message.payload.get("webhook_failover_url")) if u]
        if urls and self.webhooks is not None:
            await self.webhooks.deliver(envelope, urls)

    # -- HTTP -----------------------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return False
        return self.config.api_key is None or auth[7:].strip() == self.config.api_key

    async def send_message(self, request: Request) -> Response:
        if not self.authorized(request):
            return telnyx_error(401, "10009", "Authentication failed",
                                "The API key provided is missing or invalid.")
        try:
            body = await request.json()
        except ValueError:
            return telnyx_error(400, "10015", "Bad Request", "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return telnyx_error(400, "10015", "Bad Request", "The request body must be a JSON object.")
        key = request.headers.get("idempotency-key")
        if key is None:
            return self._answer_send(body, None)
        seen = self.state.begin(key, body)
        if isinstance(seen, Replay):
            status, content = seen.response  # type: ignore[misc]
            return JSONResponse(content, status_code=status, headers={"Idempotent-Replayed": "true"})
        if seen == "busy":
            return telnyx_error(409, "10036", "Request already being processed",
                                "A request with this Idempotency-Key is already being processed.")
        if seen == "mismatch":
            return telnyx_error(422, "10037", "Idempotency-Key reused",
                                "This Idempotency-Key was used with a different request body.")
        response = self._answer_send(body, key)
        self.state.finish(key, response.status_code, _json(response))
        return response

    def _answer_send(self, body: dict[str, Any], key: str | None) -> JSONResponse:
        try:
            return JSONResponse({"data": self.accept(body, key)})
        except Refusal as refusal:
            return refusal.response

    async def retrieve_message(self, request: Request) -> Response:
        if not self.authorized(request):
            return telnyx_error(401, "10009", "Authentication failed")
        message = self.state.get(request.path_params["id"])
        if message is None:
            return telnyx_error(404, "10005", "Resource not found", "The requested message does not exist.")
        return JSONResponse({"data": message.payload})

    async def public_key_endpoint(self, request: Request) -> Response:
        return JSONResponse({"public_key": self.public_key})

    async def control_messages(self, request: Request) -> Response:
        return JSONResponse({"data": [
            {"id": m.id, "status": m.payload["to"][0]["status"], "outcome": m.outcome,
             "idempotency_key": m.idempotency_key, "request": m.request,
             "events": [e["data"]["event_type"] for e in m.events]}
            for m in list(self.state.messages.values())
        ]})

    async def control_arrivals(self, request: Request) -> Response:
        return JSONResponse({"data": list(self.state.arrivals)})

    async def control_webhooks(self, request: Request) -> Response:
        return JSONResponse({"data": list(self.webhooks.attempts) if self.webhooks else []})

    async def control_reset(self, request: Request) -> Response:
        self.state.reset()
        return Response(status_code=204)


def _json(response: JSONResponse) -> dict[str, Any]:
    return json.loads(bytes(response.body))


def create_app(simulator: Simulator | None = None) -> Starlette:
    sim = simulator or Simulator()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as http:
            sim.webhooks = WebhookSender(http, sim.signer, retry_base_s=sim.config.webhook_retry_base_s)
            try:
                yield
            finally:
                for task in list(sim.tasks):
                    task.cancel()

    app = Starlette(
        routes=[
            Route("/v2/messages", sim.send_message, methods=["POST"]),
            Route("/v2/messages/{id}", sim.retrieve_message, methods=["GET"]),
            Route("/_sim/public_key", sim.public_key_endpoint, methods=["GET"]),
            Route("/_sim/messages", sim.control_messages, methods=["GET"]),
            Route("/_sim/arrivals", sim.control_arrivals, methods=["GET"]),
            Route("/_sim/webhooks", sim.control_webhooks, methods=["GET"]),
            Route("/_sim/reset", sim.control_reset, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.simulator = sim
    return app
