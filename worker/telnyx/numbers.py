"""Number settings: which messaging profile and product each phone, mobile and hosted number is on, and
bulk reassignment of numbers between profiles.

Numbers are addressed by their Telnyx id (the E.164 number is accepted too). Path segments are
percent-encoded, so ``+13125550001`` travels as ``%2B13125550001``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal
from urllib.parse import quote

from worker.telnyx.transport import Transport, body

NumberType = Literal["tollfree", "longcode", "shortcode"]
#: The official path; Telnyx also serves ``/messaging_numbers/bulk_updates``, which the SDK does not use.
BULK_UPDATES = "/messaging_numbers_bulk_updates"


def segment(value: str) -> str:
    """One path segment, percent-encoded (a ``+`` or ``/`` in an id must not change the path)."""
    return quote(value, safe="")


def _filters(messaging_profile_id: str | None, phone_number: str | Sequence[str] | None,
             phone_number_contains: str | None, sort: str | None) -> dict[str, Any]:
    exact = phone_number if phone_number is None or isinstance(phone_number, str) else ",".join(phone_number)
    return body(**{"filter[messaging_profile_id]": messaging_profile_id, "filter[phone_number]": exact,
                   "filter[phone_number][contains]": phone_number_contains, "sort[phone_number]": sort})


class Numbers:
    """Messaging settings of the account's numbers (``client.numbers``), one method per Telnyx operation."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    # -- phone numbers --------------------------------------------------------------------------------

    def retrieve(self, number_id: str) -> dict[str, Any]:
        """``GET /phone_numbers/{id}/messaging``: the number's profile, product, features and health."""
        return self._t.data_object("GET", f"/phone_numbers/{segment(number_id)}/messaging")

    def update(self, number_id: str, *, messaging_profile_id: str | None = None,
               messaging_product: str | None = None, tags: Sequence[str] | None = None) -> dict[str, Any]:
        """``PATCH /phone_numbers/{id}/messaging``. None keeps a setting; ``messaging_profile_id=""`` unassigns
        the number, a profile UUID assigns it."""
        payload = body(messaging_profile_id=messaging_profile_id, messaging_product=messaging_product,
                       tags=None if tags is None else list(tags))
        return self._t.data_object("PATCH", f"/phone_numbers/{segment(number_id)}/messaging", json=payload)

    def list(self, *, messaging_profile_id: str | None = None, phone_number: str | Sequence[str] | None = None,
             phone_number_contains: str | None = None, type: NumberType | None = None,
             sort: Literal["asc", "desc"] | None = None, page_size: int = 250) -> Iterator[dict[str, Any]]:
        """``GET /phone_numbers/messaging``: every matching number, fetched lazily page by page."""
        params = {**_filters(messaging_profile_id, phone_number, phone_number_contains, sort),
                  **body(**{"filter[type]": type})}
        return self._t.paginate("/phone_numbers/messaging", params, page_size=page_size)

    # -- mobile numbers -------------------------------------------------------------------------------

    def retrieve_mobile(self, number_id: str) -> dict[str, Any]:
        """``GET /mobile_phone_numbers/{id}/messaging``."""
        return self._t.data_object("GET", f"/mobile_phone_numbers/{segment(number_id)}/messaging")

    def list_mobile(self, *, page_size: int = 250) -> Iterator[dict[str, Any]]:
        """``GET /mobile_phone_numbers/messaging``: every mobile number, lazily."""
        return self._t.paginate("/mobile_phone_numbers/messaging", page_size=page_size)

    # -- hosted numbers -------------------------------------------------------------------------------

    def list_hosted(self, *, messaging_profile_id: str | None = None, phone_number: str | None = None,
                    phone_number_contains: str | None = None, sort: Literal["asc", "desc"] | None = None,
                    page_size: int = 250) -> Iterator[dict[str, Any]]:
        """``GET /messaging_hosted_numbers``: numbers hosted on Telnyx for messaging only, lazily."""
        params = _filters(messaging_profile_id, phone_number, phone_number_contains, sort)
        return self._t.paginate("/messaging_hosted_numbers", params, page_size=page_size)

    def retrieve_hosted(self, number_id: str) -> dict[str, Any]:
        """``GET /messaging_hosted_numbers/{id}`` (by id or phone number)."""
        return self._t.data_object("GET", f"/messaging_hosted_numbers/{segment(number_id)}")

    def update_hosted(self, number_id: str, *, messaging_profile_id: str | None = None,
                      messaging_product: str | None = None, tags: Sequence[str] | None = None) -> dict[str, Any]:
        """``PATCH /messaging_hosted_numbers/{id}``, with the same keep / unassign rules as :meth:`update`."""
        payload = body(messaging_profile_id=messaging_profile_id, messaging_product=messaging_product,
                       tags=None if tags is None else list(tags))
        return self._t.data_object("PATCH", f"/messaging_hosted_numbers/{segment(number_id)}", json=payload)

    def delete_hosted(self, number_id: str) -> dict[str, Any]:
        """``DELETE /messaging_hosted_numbers/{id}``: stop hosting; returns the hosted-number order."""
        return self._t.data_object("DELETE", f"/messaging_hosted_numbers/{segment(number_id)}")

    # -- bulk updates ---------------------------------------------------------------------------------

    def create_bulk_update(self, *, messaging_profile_id: str, numbers: Sequence[str],
                           assign_only: bool | None = None) -> dict[str, Any]:
        """``POST /messaging_numbers_bulk_updates``: move many numbers to a profile (``""`` unassigns).

        Telnyx works through the order asynchronously: poll :meth:`retrieve_bulk_update` with the
        returned ``order_id`` until ``pending`` is empty; ``failed`` lists the numbers it could not move.
        """
        payload = body(messaging_profile_id=messaging_profile_id, numbers=list(numbers), assign_only=assign_only)
        return self._t.data_object("POST", BULK_UPDATES, json=payload)

    def retrieve_bulk_update(self, order_id: str) -> dict[str, Any]:
        """``GET /messaging_numbers_bulk_updates/{order_id}``: ``success``, ``pending`` and ``failed`` so far."""
        return self._t.data_object("GET", f"{BULK_UPDATES}/{segment(order_id)}")
