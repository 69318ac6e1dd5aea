"""``sendq bulk-update``: move many phone numbers to a messaging profile as one durable job.

    sendq bulk-update --profile UUID --numbers +13125550001,+13125550002 [--assign-only] [--json]

The command validates the request, stores it and enqueues its job, then prints ``{"id", "status"}``; a worker
posts the numbers to Telnyx in chunks and polls until each has moved or failed. ``sendq status ID`` shows how
far it got.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from producers.output import cell, emit

AddCommand = Callable[..., argparse.ArgumentParser]
#: The fields of a bulk update's record that the text output shows, in order.
SHOWN = ("id", "status", "messaging_profile_id", "assign_only", "order_ids", "success", "pending", "failed_numbers",
         "polls", "created_at", "updated_at")


def cmd_bulk_update(args: argparse.Namespace) -> int:
    from producers import Producer
    from worker.bulk_updates import check_request
    from worker.settings import Settings

    numbers = [n.strip() for n in args.numbers.split(",") if n.strip()]
    # Bad input exits 2 before anything connects (the embedded Redis is not started for nothing).
    profile, numbers, assign_only = check_request(args.profile, numbers, args.assign_only)
    with Producer.connect(Settings.from_env()) as producer:
        result = producer.bulk_update(profile, numbers, assign_only=assign_only)
    emit(args, result, f"{result['id']} {result['status']}")
    return 0


def format_record(record: dict[str, Any]) -> str:
    """A bulk update's record as aligned text (``sendq status`` without ``--json``)."""
    lines = [f"{key:>15}: {cell(record[key])}" for key in SHOWN]
    for error in record["errors"]:
        lines.append(f"{'error':>15}: {error.get('code')} {error.get('title')} {error.get('detail') or ''}")
    return "\n".join(lines)


def register(add: AddCommand) -> None:
    """Add ``bulk-update`` to the ``sendq`` parser through ``build_parser``'s ``add`` helper."""
    bulk = add("bulk-update", cmd_bulk_update, "move phone numbers to a messaging profile (a durable job)",
               json_flag=True)
    bulk.add_argument("--profile", required=True, metavar="UUID",
                      help='messaging profile UUID to move the numbers to ("" unassigns them)')
    bulk.add_argument("--numbers", required=True, metavar="N1,N2,...", help="comma-separated E.164 numbers")
    bulk.add_argument("--assign-only", action="store_true",
                      help="only assign the profile, keep the numbers' other messaging settings")
