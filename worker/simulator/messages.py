"""The simulator's message endpoints: every send, scheduling, retrieval, cancellation, group MMS.

Each send is judged by Telnyx's documented rules (:mod:`worker.simulator.rules`, independent of sendq's own
validation): the sender must be a number the account owns, of the kind the endpoint sends from, and a named
messaging profile must exist. A refused send answers with Telnyx's status and code; an accepted one gets a
lifecycle: ``message.sent`` then one ``message.finalized`` per recipient, signed, at the configured delays and
outcome mix (or the outcome a request asks for with ``x-sim-outcome``).
"""

from __future__ import annotations

import asyncio
import copy
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import worker.simulator.inventory as inventory
import worker.simulator.rules as rules
from worker.simulator.http import Refusal, json_object, require_auth
from worker.simulator.message_checks import (
    OUTCOME_ERRORS,
    WHATSAPP_TYPES,
    bad_from,
    check_content,
    check_outcome,
    check_send_at,
    check_to,
    missing,
    whatsapp_body,
)
from worker.simulator.state import ORGANIZATION_ID, Replay, SimMessage, new_message_id, now_iso

if TYPE_CHECKING:
    from worker.simulator.core import Simulator

COST_PER_PART = 0.004
MAX_GROUP_RECIPIENTS = 8
CANCEL_CUTOFF = timedelta(minutes=1)
#: An owned number's kind as a sender, by its record type (mobile numbers are ``longcode``).
RECORD_KINDS = {"long-code": "long_code", "longcode": "long_code", "toll-free": "toll_free",
                "tollfree": "toll_free", "short-code": "short_code", "shortcode": "short_code"}
KIND_NAMES = {"long_code": "a long code", "toll_free": "a toll-free number", "short_code": "a short code",
              "alphanumeric": "an alphanumeric sender ID"}


class MessageEndpoints:
    """Handlers for ``/v2/messages*``, bound to one simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.numbers = inventory.book(sim)

    # -- who may send ---------------------------------------------------------------------------------

    def _sender(self, body: dict[str, Any], *kinds: str) -> str:
        """The ``from`` of a send: a number the account owns (unless ``any_sender``), of one of ``kinds``.

        Telnyx answers 40305 for a 'from' that is not "a valid phone number ... associated with the sending
        messaging profile", which covers both a number of someone else and one of the wrong kind for the
        endpoint (a toll-free number on ``/long_code``).
        """
        sender = body.get("from")
        if not sender:
            raise missing("from")
        owned = self.numbers.owner(sender) if isinstance(sender, str) else None
        if owned is None and not self.sim.config.any_sender:
            raise bad_from(f"'{sender}' is not a number of this account." if rules.sender_kind(sender) else None)
        kind = RECORD_KINDS.get(owned[1]["type"], "long_code") if owned else rules.sender_kind(sender)
        if kind not in kinds:
            raise bad_from(f"This endpoint sends from {' or '.join(KIND_NAMES[k] for k in kinds)}; "
                            f"'{sender}' is {KIND_NAMES.get(kind or '', 'none of these')}.")
        return str(sender)

    def _profile(self, body: dict[str, Any], *, required: bool) -> str | None:
        """A named messaging profile must exist (Telnyx does not send from a profile it does not know)."""
        profile = body.get("messaging_profile_id")
        if profile in (None, ""):
            if required:
                raise missing("messaging_profile_id")
            return None
        if not isinstance(profile, str) or not self.numbers.profile_known(profile):
            raise Refusal(422, "10005", "Resource not found", f"Messaging profile '{profile}' could not be found.",
                          "/messaging_profile_id")
        return profile

    # -- what each endpoint requires ------------------------------------------------------------------

    def _general(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/messages`` (and ``/messages/schedule``): the sender's kind picks the rules."""
        if body.get("from"):
            kind = rules.sender_kind(body["from"])
            if kind is None:
                raise bad_from()
            return self._by_kind[kind](body)
        if body.get("messaging_profile_id"):
            return self._number_pool(body)
        raise missing("from")

    def _phone(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._build(body, self._sender(body, "long_code", "toll_free"), check_to(body.get("to")))

    def _long_code(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._build(body, self._sender(body, "long_code"), check_to(body.get("to")))

    def _short_code(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._build(body, self._sender(body, "short_code"), check_to(body.get("to")))

    def _number_pool(self, body: dict[str, Any]) -> dict[str, Any]:
        profile = self._profile(body, required=True)
        to = check_to(body.get("to"))
        pool = self.numbers.pool(str(profile))
        if not pool:
            raise Refusal(400, "40321", "No usable numbers on messaging profile",
                          "The messaging profile has no number pool, or no usable number in it.",
                          "/messaging_profile_id")
        # Sticky sender: one recipient always hears from the same pool number (crc32: stable across runs).
        return self._build(body, pool[zlib.crc32(to.encode()) % len(pool)], to)

    def _alphanumeric(self, body: dict[str, Any]) -> dict[str, Any]:
        sender = body.get("from")
        if not sender:
            raise missing("from")
        if rules.sender_kind(sender) != "alphanumeric":
            raise Refusal(400, "40325", "Invalid alphanumeric sender ID",
                          "Alphanumeric sender IDs are 1-11 letters, digits or spaces, with at least one letter.",
                          "/from")
        self._profile(body, required=True)
        if not body.get("text"):
            raise missing("text")
        return self._build(body, sender, check_to(body.get("to")), mms_allowed=False)

    def _group_mms(self, body: dict[str, Any]) -> dict[str, Any]:
        sender = self._sender(body, "long_code")
        recipients = body.get("to")
        if not recipients:
            raise missing("to")
        if not isinstance(recipients, list) or not 1 <= len(recipients) <= MAX_GROUP_RECIPIENTS:
            raise Refusal(400, "40310", "Invalid 'to' address",
                          f"'to' must be a list of 1 to {MAX_GROUP_RECIPIENTS} numbers.", "/to")
        return self._build({**body, "type": "MMS"}, sender, *[check_to(r) for r in recipients])

    def _whatsapp(self, body: dict[str, Any]) -> dict[str, Any]:
        sender = self._sender(body, "long_code", "toll_free")
        to = check_to(body.get("to"))
        content = body.get("whatsapp_message")
        if not isinstance(content, dict) or content.get("type") not in WHATSAPP_TYPES:
            raise missing("whatsapp_message")
        text = (content.get("text") or {}).get("body") if content["type"] == "text" else None
        payload = self._build({**body, "text": text or content["type"], "media_urls": []}, sender, to)
        payload.update({"type": "WHATSAPP", "encoding": "UTF-8", "body": whatsapp_body(content), "parts": 1})
        return payload

    @property
    def _by_kind(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {"long_code": self._phone, "toll_free": self._phone, "short_code": self._short_code,
                "alphanumeric": self._alphanumeric}

    # -- building and lifecycle -----------------------------------------------------------------------

    def _build(self, body: dict[str, Any], sender: str, *recipients: str, mms_allowed: bool = True) -> dict[str, Any]:
        text, media, mms = check_content(body, mms_allowed=mms_allowed)
        profile = self._profile(body, required=False) or self._profile_of(sender)
        for to in recipients:
            if self.sim.optouts.blocks(sender, to, profile):
                raise Refusal(409, "40300", "Blocked due to STOP message",
                              f"Messages cannot be sent from '{sender}' to '{to}' due to an existing block rule.")
        counted = rules.encode(text)
        parts = 1 if mms else counted.parts
        now = datetime.now(UTC)
        cost = f"{COST_PER_PART * parts * len(recipients):.4f}"
        return {
            "record_type": "message", "direction": "outbound", "id": new_message_id(),
            "type": "MMS" if mms else "SMS", "messaging_profile_id": profile, "organization_id": ORGANIZATION_ID,
            "from": {"phone_number": sender, "carrier": "Telnyx", "line_type": "Wireless"},
            "to": [{"phone_number": to, "status": "queued", "carrier": "T-MOBILE USA, INC.", "line_type": "Wireless"}
                   for to in recipients],
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
            "webhook_url": body.get("webhook_url") or self.sim.config.webhook_url,
            "webhook_failover_url": body.get("webhook_failover_url") or self.sim.config.webhook_failover_url,
        }

    def _profile_of(self, sender: str) -> str:
        """The profile a send without ``messaging_profile_id`` goes out on: its number's, else the default."""
        owned = self.numbers.owner(sender)
        return (owned[1].get("messaging_profile_id") if owned else None) or self.sim.config.profile_id

    def accept(self, body: dict[str, Any], build: Callable[[dict[str, Any]], dict[str, Any]],
               idempotency_key: str | None, send_at: datetime | None, endpoint: str = "",
               outcome: str | None = None) -> dict[str, Any]:
        payload = build(body)
        now = self.sim.elapsed()
        # Before anything is recorded: a full sender queue refuses the message (429 / 40318).
        wait = 0.0 if send_at is not None else self.sim.throughput.admit(payload, now)
        message = SimMessage(payload=payload, request=body, idempotency_key=idempotency_key, endpoint=endpoint,
                             outcomes=[outcome or self.sim.pick_outcome() for _ in payload["to"]], send_at=send_at)
        if send_at is not None:
            payload["send_at"] = send_at.isoformat()
            for recipient in payload["to"]:
                recipient["status"] = "scheduled"
        self.sim.state.add(message, now, departs_s=now + wait)
        self.sim.spawn(self._lifecycle(message, wait))
        return payload

    async def _lifecycle(self, message: SimMessage, wait_s: float = 0.0) -> None:
        if message.send_at is not None:
            await asyncio.sleep(max(0.0, (message.send_at - datetime.now(UTC)).total_seconds()))
            if message.cancelled:
                return
        payload = message.payload
        await asyncio.sleep(wait_s + self.sim.config.sent_delay_s)  # queued behind the sender's rate, then sent
        payload["sent_at"] = now_iso()
        for recipient in payload["to"]:
            recipient["status"] = "sent"
        await self.sim.emit(message, "message.sent", payload)
        await asyncio.sleep(self.sim.config.final_delay_s)
        payload["completed_at"] = now_iso()
        payload["valid_until"] = None
        for recipient, outcome in zip(payload["to"], message.outcomes, strict=True):
            recipient["status"] = outcome
        # The message keeps its delivery errors, as GET /v2/messages/{id} shows them after a failure.
        payload["errors"] = [copy.deepcopy(e) for e in map(OUTCOME_ERRORS.get, message.outcomes) if e]
        for recipient, outcome in zip(payload["to"], message.outcomes, strict=True):
            # One message.finalized per recipient, as Telnyx does for group MMS.
            snapshot = {**copy.deepcopy(payload), "to": [copy.deepcopy(recipient)],
                        "errors": [e for e in [OUTCOME_ERRORS.get(outcome)] if e]}
            await self.sim.emit(message, "message.finalized", snapshot)

    # -- HTTP -----------------------------------------------------------------------------------------

    def sender(self, build: Callable[[dict[str, Any]], dict[str, Any]], *, schedule: bool = False
               ) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                require_auth(request, self.sim.config.api_key)
                body = await json_object(request)
                send_at = check_send_at(body.get("send_at"), required=schedule)
                return await self._answer(request, body, build, send_at, check_outcome(request))
            except Refusal as refusal:
                return refusal.response()
        return endpoint

    async def _answer(self, request: Request, body: dict[str, Any], build: Callable[[dict[str, Any]], dict[str, Any]],
                      send_at: datetime | None, outcome: str | None) -> Response:
        path = request.url.path
        key = request.headers.get("idempotency-key")
        if key is None:
            return JSONResponse({"data": self.accept(body, build, None, send_at, path, outcome)})
        scope = (request.method, path, key)
        seen = self.sim.state.begin(scope, await request.body())
        if isinstance(seen, Replay):
            status, content = seen.response  # type: ignore[misc]
            return JSONResponse(content, status_code=status, headers={"Idempotent-Replayed": "true"})
        if seen == "busy":
            raise Refusal(409, "10036", "Request already being processed",
                          "A request with this Idempotency-Key is already being processed.")
        if seen == "mismatch":
            raise Refusal(422, "10037", "Idempotency-Key reused",
                          "This Idempotency-Key was already used with a different request body.")
        try:
            content = {"data": self.accept(body, build, key, send_at, path, outcome)}
        except Refusal:
            self.sim.state.finish(scope, None)
            raise
        self.sim.state.finish(scope, content)
        return JSONResponse(content)

    async def retrieve(self, request: Request) -> Response:
        """Outbound and inbound messages alike (the spec's oneOf, told apart by ``direction``)."""
        try:
            require_auth(request, self.sim.config.api_key)
            payload = self.sim.state.payload(request.path_params["id"])
            if payload is None:
                raise _not_found()
            return JSONResponse({"data": payload})
        except Refusal as refusal:
            return refusal.response()

    async def cancel(self, request: Request) -> Response:
        try:
            require_auth(request, self.sim.config.api_key)
            message = self._find(request.path_params["id"])
        except Refusal as refusal:
            return refusal.response() if refusal.status != 404 else _single(refusal)
        if message.send_at is None or message.cancelled or \
                message.send_at - datetime.now(UTC) <= CANCEL_CUTOFF:
            return _single(Refusal(403, "10010", "Message cannot be cancelled",
                                   "Only scheduled messages more than a minute before send_at can be cancelled."))
        message.cancelled = True
        for recipient in message.payload["to"]:
            recipient["status"] = "cancelled"
        # The spec answers with the message itself, not wrapped in "data".
        return JSONResponse(message.payload)

    async def group(self, request: Request) -> Response:
        try:
            require_auth(request, self.sim.config.api_key)
            message = self._find(request.path_params["message_id"])
        except Refusal as refusal:
            return refusal.response()
        return JSONResponse({"data": [{**message.payload, "to": [recipient]} for recipient in message.payload["to"]]})

    def _find(self, message_id: str) -> SimMessage:
        message = self.sim.state.get(message_id)
        if message is None:
            raise _not_found()
        return message

    def routes(self) -> list[Route]:
        return [
            Route("/v2/messages", self.sender(self._general), methods=["POST"]),
            Route("/v2/messages/long_code", self.sender(self._long_code), methods=["POST"]),
            Route("/v2/messages/short_code", self.sender(self._short_code), methods=["POST"]),
            Route("/v2/messages/number_pool", self.sender(self._number_pool), methods=["POST"]),
            Route("/v2/messages/alphanumeric_sender_id", self.sender(self._alphanumeric), methods=["POST"]),
            Route("/v2/messages/group_mms", self.sender(self._group_mms), methods=["POST"]),
            Route("/v2/messages/whatsapp", self.sender(self._whatsapp), methods=["POST"]),
            Route("/v2/messages/schedule", self.sender(self._general, schedule=True), methods=["POST"]),
            Route("/v2/messages/group/{message_id}", self.group, methods=["GET"]),
            Route("/v2/messages/{id}", self.retrieve, methods=["GET"]),
            Route("/v2/messages/{id}", self.cancel, methods=["DELETE"]),
        ]


def _not_found() -> Refusal:
    return Refusal(404, "10005", "Resource not found", "The requested message does not exist.")


def _single(refusal: Refusal) -> JSONResponse:
    """DELETE's 403 and 404 carry one error object, not the ``errors`` array."""
    return JSONResponse({"code": refusal.code, "title": refusal.title, "detail": refusal.detail},
                        status_code=refusal.status)
