"""Messaging-profile management: alphanumeric sender IDs, profile metrics, the profile's v1 secret and
auto-response configurations (Advanced Opt-In/Opt-Out)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

from worker.telnyx.numbers import segment
from worker.telnyx.transport import Transport, body

TimeFrame = Literal["1h", "3h", "24h", "3d", "7d", "30d"]
AutorespOp = Literal["start", "stop", "info"]


def _autoresp_path(profile_id: str, config_id: str | None = None) -> str:
    path = f"/messaging_profiles/{segment(profile_id)}/autoresp_configs"
    return path if config_id is None else f"{path}/{segment(config_id)}"


class Profiles:
    """Operations on messaging profiles (``client.profiles``), one method per Telnyx operation."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    # -- alphanumeric sender IDs ----------------------------------------------------------------------

    def list_alphanumeric_sender_ids(self, *, messaging_profile_id: str | None = None,
                                     page_size: int = 250) -> Iterator[dict[str, Any]]:
        """``GET /alphanumeric_sender_ids``: every sender ID (of one profile, if given), lazily."""
        params = body(**{"filter[messaging_profile_id]": messaging_profile_id})
        return self._t.paginate("/alphanumeric_sender_ids", params, page_size=page_size)

    def create_alphanumeric_sender_id(self, *, alphanumeric_sender_id: str, messaging_profile_id: str,
                                      us_long_code_fallback: str | None = None) -> dict[str, Any]:
        """``POST /alphanumeric_sender_ids``: register a 1-11 character sender on a profile. US destinations
        cannot receive alphanumeric senders, so ``us_long_code_fallback`` names the long code used there."""
        payload = body(alphanumeric_sender_id=alphanumeric_sender_id, messaging_profile_id=messaging_profile_id,
                       us_long_code_fallback=us_long_code_fallback)
        return self._t.data_object("POST", "/alphanumeric_sender_ids", json=payload)

    def retrieve_alphanumeric_sender_id(self, sender_id: str) -> dict[str, Any]:
        """``GET /alphanumeric_sender_ids/{id}``."""
        return self._t.data_object("GET", f"/alphanumeric_sender_ids/{segment(sender_id)}")

    def delete_alphanumeric_sender_id(self, sender_id: str) -> dict[str, Any]:
        """``DELETE /alphanumeric_sender_ids/{id}``; returns the deleted sender ID."""
        return self._t.data_object("DELETE", f"/alphanumeric_sender_ids/{segment(sender_id)}")

    # -- metrics and secret ---------------------------------------------------------------------------

    def list_metrics(self, *, time_frame: TimeFrame | None = None, page_size: int = 250) -> Iterator[dict[str, Any]]:
        """``GET /messaging_profile_metrics``: sent / delivered / error ratio per profile, lazily."""
        return self._t.paginate("/messaging_profile_metrics", body(time_frame=time_frame), page_size=page_size)

    def metrics(self, profile_id: str, *, time_frame: TimeFrame | None = None) -> dict[str, Any]:
        """``GET /messaging_profiles/{id}/metrics``: ``overview`` plus ``detailed`` per time bucket and
        sender type. Telnyx defaults ``time_frame`` to 24h."""
        return self._t.data_object("GET", f"/messaging_profiles/{segment(profile_id)}/metrics",
                            params=body(time_frame=time_frame))

    def regenerate_secret(self, profile_id: str) -> dict[str, Any]:
        """``POST /messaging_profiles/{id}/actions/regenerate_secret``; returns the profile with its new
        ``v1_secret`` (the old one stops working)."""
        return self._t.data_object("POST", f"/messaging_profiles/{segment(profile_id)}/actions/regenerate_secret")

    # -- auto-response configs ------------------------------------------------------------------------

    def list_autoresp_configs(self, profile_id: str, *, country_code: str | None = None,
                              created_at_gte: str | None = None, created_at_lte: str | None = None,
                              updated_at_gte: str | None = None, updated_at_lte: str | None = None,
                              ) -> list[dict[str, Any]]:
        """``GET /messaging_profiles/{profile_id}/autoresp_configs``, filtered as asked (one request, as the
        official SDK makes it)."""
        params = body(**{"country_code": country_code, "created_at[gte]": created_at_gte,
                         "created_at[lte]": created_at_lte, "updated_at[gte]": updated_at_gte,
                         "updated_at[lte]": updated_at_lte})
        return list(self._t.data("GET", _autoresp_path(profile_id), params=params) or [])

    def create_autoresp_config(self, profile_id: str, *, op: AutorespOp, keywords: Sequence[str], country_code: str,
                               resp_text: str | None = None) -> dict[str, Any]:
        """``POST .../autoresp_configs``: answer inbound ``keywords`` from ``country_code`` with ``resp_text``,
        and for ``op`` start / stop, lift or set the opt-out block."""
        payload = body(op=op, keywords=list(keywords), country_code=country_code, resp_text=resp_text)
        return self._t.data_object("POST", _autoresp_path(profile_id), json=payload)

    def retrieve_autoresp_config(self, profile_id: str, config_id: str) -> dict[str, Any]:
        """``GET .../autoresp_configs/{autoresp_cfg_id}``."""
        return self._t.data_object("GET", _autoresp_path(profile_id, config_id))

    def update_autoresp_config(self, profile_id: str, config_id: str, *, op: AutorespOp, keywords: Sequence[str],
                               country_code: str, resp_text: str | None = None) -> dict[str, Any]:
        """``PUT .../autoresp_configs/{autoresp_cfg_id}``: a full replacement, so every field is required."""
        payload = body(op=op, keywords=list(keywords), country_code=country_code, resp_text=resp_text)
        return self._t.data_object("PUT", _autoresp_path(profile_id, config_id), json=payload)

    def delete_autoresp_config(self, profile_id: str, config_id: str) -> str:
        """``DELETE .../autoresp_configs/{autoresp_cfg_id}``; Telnyx answers with the bare JSON string ``"OK"``."""
        return str(self._t.request("DELETE", _autoresp_path(profile_id, config_id)))
