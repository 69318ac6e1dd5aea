"""HTTP helpers shared by the simulator's route modules: Telnyx's error envelope, auth, bodies, paging."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse

DOCS = "https://developers.telnyx.com/docs/overview/errors/"


def error_body(code: str, title: str, detail: str | None = None, pointer: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "title": title, "detail": detail, "meta": {"url": DOCS + code}}
    if pointer:
        error["source"] = {"pointer": pointer}
    return error


def telnyx_error(status: int, code: str, title: str, detail: str | None = None, pointer: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """Telnyx's usual ``{"errors": [...]}`` answer."""
    return JSONResponse({"errors": [error_body(code, title, detail, pointer)]}, status_code=status, headers=headers)


class Refusal(Exception):
    """Raised by request handling to answer with a Telnyx error."""

    def __init__(self, status: int, code: str, title: str, detail: str | None = None,
                 pointer: str | None = None) -> None:
        super().__init__(f"{code} {title}")
        self.status, self.code, self.title, self.detail, self.pointer = status, code, title, detail, pointer

    def response(self) -> JSONResponse:
        return telnyx_error(self.status, self.code, self.title, self.detail, self.pointer)


def require_auth(request: Request, api_key: str | None) -> None:
    """Any non-empty bearer key passes unless the simulator was given one to require."""
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth.startswith("Bearer ") else ""
    if not key or (api_key is not None and key != api_key):
        raise Refusal(401, "10009", "Authentication failed", "The API key provided is missing or invalid.")


async def json_object(request: Request) -> dict[str, Any]:
    try:
        found = await request.json()
    except ValueError:
        raise Refusal(400, "10015", "Bad Request", "The request body is not valid JSON.") from None
    if not isinstance(found, dict):
        raise Refusal(400, "10015", "Bad Request", "The request body must be a JSON object.")
    return found


def paged(request: Request, items: list[Any], *, default_size: int = 20, max_size: int = 250) -> dict[str, Any]:
    """``{"data", "meta"}`` for one page of ``items``, as Telnyx pages.

    Both spellings are accepted: ``page[number]`` / ``page[size]`` (the spec's deepObject form) and
    ``page_number`` / ``page_size`` (what the current SDK sends on the first page).
    """
    query = request.query_params
    try:
        number = int(query.get("page[number]", query.get("page_number", 1)))
        size = int(query.get("page[size]", query.get("page_size", default_size)))
    except ValueError:
        raise Refusal(400, "10015", "Bad Request", "page[number] and page[size] must be integers.") from None
    if number < 1 or not 1 <= size <= max_size:
        raise Refusal(400, "10015", "Bad Request", f"page[number] >= 1 and 1 <= page[size] <= {max_size}.")
    start = (number - 1) * size
    return {
        "data": items[start:start + size],
        "meta": {"page_number": number, "page_size": size, "total_pages": max(1, math.ceil(len(items) / size)),
                 "total_results": len(items)},
    }


Config = TypeVar("Config")


def config_from_json(cls: type[Config], data: Any) -> Config:
    """A config dataclass from a JSON object of its fields (``POST /_sim/faults``, ``/_sim/throughput``);
    ValueError on unknown fields or bad values."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if not isinstance(data, dict) or set(data) - known:
        raise ValueError(f"expected a JSON object with fields among {sorted(known)}")
    return cls(**data)
