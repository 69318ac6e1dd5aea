"""Read-only ops commands of the ``sendq`` console script: what Telnyx says about the account's numbers and
messaging profiles.

    sendq numbers list [--profile UUID] [--json]
    sendq numbers show ID [--json]
    sendq profile metrics ID [--time-frame 24h] [--json]

They call Telnyx directly and need nothing else (no Redis, no database): only ``TELNYX_API_KEY`` and,
optionally, ``TELNYX_BASE_URL``. Without ``--json`` they print aligned tables; with it, exactly one JSON
object (lists wrapped as ``{"data": [...]}``). Telnyx errors propagate as ``TelnyxError``, which ``main``
turns into exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from worker.errors import ConfigurationError

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
    from worker.telnyx import TelnyxClient, Timeouts

    settings = Settings.from_env()
    api_key = settings.api_key()
    if not api_key:
        raise ConfigurationError("TELNYX_API_KEY is not set: the ops commands read from Telnyx")
    # main() logs at INFO for these commands, and httpx would print a line per page fetched.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    client = TelnyxClient.build(api_key=api_key, base_url=settings.telnyx_base_url, attempts=settings.http_attempts,
                                timeouts=Timeouts(settings.http_timeout_s, settings.http_connect_timeout_s))
    try:
        yield client
    finally:
        client.close()


def cell(value: Any) -> str:
    """One value as a table shows it: ``-`` for nothing, lists comma-joined."""
    if value is None or value == [] or value == "":
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.2%}" if value <= 1 else f"{value:g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(c) for c in column) for column in zip(headers, *cells, strict=False)]
    numeric = [bool(rows) and all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric, strict=True)]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


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


def emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj, default=str) if args.json else text)


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


def _subcommand(group: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    command = group.add_parser(name, help=help_text, description=help_text)
    command.set_defaults(handler=handler)
    command.add_argument("--json", action="store_true", help="print one JSON object")
    return command


def _group_only(args: argparse.Namespace) -> int:
    # Unreachable: argparse insists on a subcommand before any handler runs.
    return 2


def register(sub: Any, add: AddCommand) -> None:
    """Add ``numbers`` and ``profile`` (each a group of subcommands) to the ``sendq`` parser.

    ``add`` is ``build_parser``'s helper for a top-level command; the subcommands hang below it.
    """
    numbers = add("numbers", _group_only, "inspect the account's numbers and their messaging settings")
    commands = numbers.add_subparsers(dest="numbers_command", required=True, metavar="COMMAND")
    listing = _subcommand(commands, "list", cmd_numbers_list, "list phone numbers with profile and product")
    listing.add_argument("--profile", metavar="UUID", help="only the numbers on this messaging profile")
    show = _subcommand(commands, "show", cmd_numbers_show, "show one phone number's messaging settings")
    show.add_argument("id", metavar="ID", help="the number's Telnyx id, or the number itself in E.164")

    profile = add("profile", _group_only, "inspect messaging profiles")
    commands = profile.add_subparsers(dest="profile_command", required=True, metavar="COMMAND")
    metrics = _subcommand(commands, "metrics", cmd_profile_metrics, "show a messaging profile's metrics")
    metrics.add_argument("id", metavar="ID", help="messaging profile UUID")
    metrics.add_argument("--time-frame", choices=TIME_FRAMES, default="24h", help="window to report (default 24h)")
