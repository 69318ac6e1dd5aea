"""Number settings in the simulator: phone, mobile and hosted numbers with their messaging settings, and
bulk messaging-profile updates (under both ``/messaging_numbers_bulk_updates`` and the older
``/messaging_numbers/bulk_updates``).

A number is addressed by its id or by the number itself, as Telnyx's docs describe for these paths.
Bulk orders settle gradually (see :class:`~worker.simulator.inventory.NumberBook`), and each settled
number really moves to the new profile, so later reads and profile metrics see it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import worker.simulator.inventory as inventory
from worker.simulator.http import Refusal, error_body, json_object, paged, require_auth

if TYPE_CHECKING:
    from worker.simulator.core import Simulator

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
NUMBER_TYPES = ("tollfree", "longcode", "shortcode")
BULK_PATHS = ("/v2/messaging_numbers_bulk_updates", "/v2/messaging_numbers/bulk_updates")

Handler = Callable[[Request], Awaitable[Response]]


class QueryRefusal(Refusal):
    """A 400 naming a query parameter (``source.parameter``) rather than a body field."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(400, "10015", "Bad Request", detail)
        self.parameter = parameter

    def response(self) -> JSONResponse:
        error = {**error_body(self.code, self.title, self.detail), "source": {"parameter": self.parameter}}
        return JSONResponse({"errors": [error]}, status_code=self.status)


def guarded(sim: Simulator, handler: Handler) -> Handler:
    """``handler`` behind bearer auth, with any :class:`Refusal` turned into Telnyx's error answer."""
    async def run(request: Request) -> Response:
        try:
            require_auth(request, sim.config.api_key)
            return await handler(request)
        except Refusal as refusal:
            return refusal.response()
    return run


def not_found(what: str, key: str) -> Refusal:
    return Refusal(404, "10005", "Resource not found", f"{what} '{key}' could not be found.")


def missing(field: str) -> Refusal:
    return Refusal(400, "10004", "Missing required parameter", f"The '{field}' parameter is required.", f"/{field}")


def invalid(field: str, detail: str, code: str = "10015") -> Refusal:
    title = "Invalid phone number" if code == "10016" else "Invalid value"
    return Refusal(422, code, title, detail, f"/{field}")


def profile_value(value: Any, known: Callable[[str], bool], field: str = "messaging_profile_id") -> str | None:
    """A messaging-profile assignment: ``""`` unassigns (None), the UUID of a ``known`` profile assigns."""
    if not isinstance(value, str):
        raise invalid(field, f"'{field}' must be a string: a messaging profile UUID, or \"\" to unassign.")
    if value == "":
        return None
    if not UUID.match(value):
        raise invalid(field, f"'{field}' must be a UUID, or \"\" to unassign.")
    if not known(value):
        raise Refusal(422, "10005", "Resource not found", f"Messaging profile '{value}' could not be found.",
                      f"/{field}")
    return value


def settings_changes(body: dict[str, Any], record: dict[str, Any], book: inventory.NumberBook) -> dict[str, Any]:
    """The changes a PATCH asks for; an absent or null field keeps its current value."""
    changes: dict[str, Any] = {}
    if body.get("messaging_profile_id") is not None:
        changes["messaging_profile_id"] = profile_value(body["messaging_profile_id"], book.profile_known)
    product = body.get("messaging_product")
    if product is not None:
        eligible = record.get("eligible_messaging_products") or [record.get("messaging_product")]
        if product not in eligible:
            raise invalid("messaging_product", f"This number can use {', '.join(eligible)}, not {product!r}.")
        changes["messaging_product"] = changes["traffic_type"] = product
    tags = body.get("tags")
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise invalid("tags", "'tags' must be an array of strings.")
        changes["tags"] = list(dict.fromkeys(tags))
    return changes


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in allowed:
        raise QueryRefusal(name, f"{name} must be one of {', '.join(allowed)}.")
    return value


def filtered(request: Request, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records matching Telnyx's number-list filters, sorted as asked."""
    query = request.query_params
    kind = _choice(request, "filter[type]", NUMBER_TYPES)
    order = _choice(request, "sort[phone_number]", ("asc", "desc"))
    exact = {n.strip() for n in query["filter[phone_number]"].split(",")} if query.get("filter[phone_number]") else None
    checks: list[Callable[[dict[str, Any]], bool]] = [
        lambda r: query.get("filter[messaging_profile_id]") in (None, r["messaging_profile_id"]),
        lambda r: exact is None or r["phone_number"] in exact,
        lambda r: query.get("filter[phone_number][contains]", "") in r["phone_number"],
        lambda r: kind is None or r["type"].replace("-", "") == kind,
    ]
    found = [r for r in records if all(check(r) for check in checks)]
    if order:
        found.sort(key=lambda r: r["phone_number"], reverse=order == "desc")
    return found


def bulk_request(body: dict[str, Any], book: inventory.NumberBook) -> tuple[str | None, list[str], bool]:
    """The checked ``(profile, numbers, assign_only)`` of a bulk update body."""
    if body.get("messaging_profile_id") is None:
        raise missing("messaging_profile_id")
    profile = profile_value(body["messaging_profile_id"], book.profile_known)
    numbers = body.get("numbers")
    if numbers is None or numbers == []:
        raise missing("numbers")
    if not isinstance(numbers, list) or not all(isinstance(n, str) for n in numbers):
        raise invalid("numbers", "'numbers' must be an array of phone numbers.")
    assign_only = body.get("assign_only", False)
    if not isinstance(assign_only, bool):
        raise invalid("assign_only", "'assign_only' must be a boolean.")
    return profile, numbers, assign_only


NAMES = {"phone": "Phone number", "mobile": "Mobile phone number", "hosted": "Hosted number"}


class NumberEndpoints:
    """The number-settings handlers, over the simulator's :func:`inventory.book`."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.book = inventory.book(sim)

    def one(self, kind: str, key: str) -> dict[str, Any]:
        found = self.book.get(kind, key)
        if found is None:
            raise not_found(NAMES[kind], key)
        return found

    def lister(self, kind: str) -> Handler:
        async def handler(request: Request) -> Response:
            records = self.book.all(kind)
            return JSONResponse(paged(request, records if kind == "mobile" else filtered(request, records)))
        return guarded(self.sim, handler)

    def reader(self, kind: str) -> Handler:
        async def handler(request: Request) -> Response:
            return JSONResponse({"data": self.one(kind, request.path_params["id"])})
        return guarded(self.sim, handler)

    def updater(self, kind: str) -> Handler:
        async def handler(request: Request) -> Response:
            record = self.one(kind, request.path_params["id"])
            changes = settings_changes(await json_object(request), record, self.book)
            return JSONResponse({"data": self.book.update(kind, record["id"], changes)})
        return guarded(self.sim, handler)

    async def delete_hosted(self, request: Request) -> Response:
        """Telnyx answers with a hosted-number order showing the number ``deleted``."""
        record = self.one("hosted", request.path_params["id"])
        self.book.remove("hosted", record["id"])
        hosted = {"id": record["id"], "phone_number": record["phone_number"], "record_type": "messaging_hosted_number",
                  "status": "deleted"}
        return JSONResponse({"data": {
            "id": record["id"], "record_type": "messaging_hosted_number_order", "status": "deleted",
            "messaging_profile_id": record["messaging_profile_id"], "phone_numbers": [hosted],
        }})

    async def create_bulk(self, request: Request) -> Response:
        return JSONResponse({"data": self.book.start_bulk(*bulk_request(await json_object(request), self.book))})

    async def get_bulk(self, request: Request) -> Response:
        order_id = request.path_params["order_id"]
        found = self.book.poll_bulk(order_id)
        if found is None:
            raise not_found("Bulk update order", order_id)
        return JSONResponse({"data": found})

    def routes(self) -> list[Route]:
        bulk = [route for path in BULK_PATHS for route in (
            Route(path, guarded(self.sim, self.create_bulk), methods=["POST"]),
            Route(path + "/{order_id}", guarded(self.sim, self.get_bulk), methods=["GET"]),
        )]
        return [
            Route("/v2/phone_numbers/messaging", self.lister("phone"), methods=["GET"]),
            Route("/v2/phone_numbers/{id}/messaging", self.reader("phone"), methods=["GET"]),
            Route("/v2/phone_numbers/{id}/messaging", self.updater("phone"), methods=["PATCH"]),
            Route("/v2/mobile_phone_numbers/messaging", self.lister("mobile"), methods=["GET"]),
            Route("/v2/mobile_phone_numbers/{id}/messaging", self.reader("mobile"), methods=["GET"]),
            Route("/v2/messaging_hosted_numbers", self.lister("hosted"), methods=["GET"]),
            Route("/v2/messaging_hosted_numbers/{id}", self.reader("hosted"), methods=["GET"]),
            Route("/v2/messaging_hosted_numbers/{id}", self.updater("hosted"), methods=["PATCH"]),
            Route("/v2/messaging_hosted_numbers/{id}", guarded(self.sim, self.delete_hosted), methods=["DELETE"]),
            *bulk,
        ]


def routes(sim: Simulator) -> list[Route]:
    """Every number-settings route of the simulator."""
    return NumberEndpoints(sim).routes()
