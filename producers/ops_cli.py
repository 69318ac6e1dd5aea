"""Read-only ops commands of the ``sendq`` console script: what Telnyx says about the account's numbers and
messaging profiles.

    sendq numbers list [--profile UUID] [--json]
    sendq numbers show ID [--json]
    sendq profile metrics ID [--time-frame 24h] [--json]

(Telnyx's opt-out blocks are ``sendq optouts list --telnyx``, with the suppression list: :mod:`producers.optouts_cli`.)

They call Telnyx directly and need nothing else (no Redis, no database): only ``TELNYX_API_KEY`` and,
optionally, ``TELNYX_BASE_URL``. Without ``--json`` they print aligned tables; with it, exactly one JSON
object (lists wrapped as ``{"data": [...]}``). Telnyx errors propagate as ``TelnyxError``, which ``main``
turns into exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from producers.output import cell, emit, group_only, subcommand, table

Handler = Callable[[argparse.Namespace], int]
AddCommand = Callable[..., argparse.ArgumentParser]
TIME_FRAMES = ("1h", "3h", "24h", "3d", "7d", "30d")
NUMBER_COLUMNS = (("PHONE NUMBER", "phone_number"), ("ID", "id"), ("TYPE", "type"),
                  ("PROFILE", "messaging_profile_id"), ("PRODUCT", "messaging_product"), ("TAGS", "tags"))
METRIC_COLUMNS = ("TIMESTAMP", "LABEL", "SENT", "DELIVERED", "ERROR RATIO", "RECEIVED")


@contextlib.contextmanager
def telnyx_client() -> Iterator[Any]:
    """A Telnyx client built from the environment, closed afterwards; refuses to start without an API key."""
    from worker.settings import Settings
    from worker.telnyx import TelnyxClient

    client = TelnyxClient.from_settings(Settings.from_env())
    try:
        yield client
    finally:
        client.close()


def settings_lines(record: dict[str, Any]) -> str:
    """A number's messaging settings, one aligned ``name: value`` line each."""
    shown = dict(record)
    for use, flags in (record.get("features") or {}).items():
        enabled = [name for name, on in (flags or {}).items() if on]
        shown[f"features.{use}"] = ", ".join(enabled) if flags else "not available"
    for name, value in (record.get("health") or {}).items():
        shown[f"health.{name}"] = value
    shown.pop("features", None)
    shown.pop("health", None)
    width = max(len(k) for k in shown)
    return "\n".join(f"{key:>{width}}: {cell(value)}" for key, value in shown.items())


def metrics_text(data: dict[str, Any]) -> str:
    """The overview as aligned lines, then one table row per time bucket and sender type."""
    overview = data.get("overview") or {}
    outbound, inbound = overview.get("outbound") or {}, overview.get("inbound") or {}
    head = table(("PROFILE", "NUMBERS", "SENT", "DELIVERED", "ERROR RATIO", "RECEIVED"), [(
        overview.get("messaging_profile_id"), overview.get("phone_numbers"), outbound.get("sent"),
        outbound.get("delivered"), float(outbound.get("error_ratio") or 0), inbound.get("received"),
    )])
    rows = [(bucket.get("timestamp"), m.get("label"), m.get("sent"), m.get("delivered"),
             float(m.get("outbound_error_ratio") or 0), m.get("received"))
            for bucket in data.get("detailed") or [] for m in bucket.get("metrics") or []]
    return head + "\n\n" + table(METRIC_COLUMNS, rows)


def cmd_numbers_list(args: argparse.Namespace) -> int:
    """Every phone number with its messaging profile and product (optionally only one profile's)."""
    with telnyx_client() as client:
        numbers = list(client.numbers.list(messaging_profile_id=args.profile))
    rows = [[n.get(key) for _, key in NUMBER_COLUMNS] for n in numbers]
    emit(args, {"data": numbers}, table([h for h, _ in NUMBER_COLUMNS], rows))
    return 0


def cmd_numbers_show(args: argparse.Namespace) -> int:
    """One number's messaging settings, by Telnyx id or E.164 number."""
    with telnyx_client() as client:
        record = client.numbers.retrieve(args.id)
    emit(args, record, settings_lines(record))
    return 0


def cmd_profile_metrics(args: argparse.Namespace) -> int:
    """A messaging profile's metrics over ``--time-frame``: the overview and the per-bucket detail."""
    with telnyx_client() as client:
        data = client.profiles.metrics(args.id, time_frame=args.time_frame)
    emit(args, data, metrics_text(data))
    return 0


def register(sub: Any, add: AddCommand) -> None:
    """Add ``numbers`` and ``profile`` (each a group of subcommands) to the ``sendq`` parser.

    ``add`` is ``build_parser``'s helper for a top-level command; the subcommands hang below it.
    """
    numbers = add("numbers", group_only, "inspect the account's numbers and their messaging settings")
    commands = numbers.add_subparsers(dest="numbers_command", required=True, metavar="COMMAND")
    listing = subcommand(commands, "list", cmd_numbers_list, "list phone numbers with profile and product")
    listing.add_argument("--profile", metavar="UUID", help="only the numbers on this messaging profile")
    show = subcommand(commands, "show", cmd_numbers_show, "show one phone number's messaging settings")
    show.add_argument("id", metavar="ID", help="the number's Telnyx id, or the number itself in E.164")

    profile = add("profile", group_only, "inspect messaging profiles")
    commands = profile.add_subparsers(dest="profile_command", required=True, metavar="COMMAND")
    metrics = subcommand(commands, "metrics", cmd_profile_metrics, "show a messaging profile's metrics")
    metrics.add_argument("id", metavar="ID", help="messaging profile UUID")
    metrics.add_argument("--time-frame", choices=TIME_FRAMES, default="24h", help="window to report (default 24h)")
