"""``sendq campaign``: create a campaign from a CSV file, watch it, pause, resume or cancel it.

    sendq campaign create --csv FILE (--from SENDER ... | --profile UUID) --template TEXT [--media URL ...]
                          [--send-at ISO8601] [--name NAME] [--valid-for S] [--rate-cap MPS]
                          [--phone-column NAME] [--errors FILE] [--json]
    sendq campaign status ID [--watch] [--json]
    sendq campaign pause|resume|cancel ID [--json]

The CSV needs a header; the phone column is ``phone`` (or ``to``, ``number``, ``phone_number``, ``msisdn``)
unless ``--phone-column`` names another, and every other column is a template variable (``{first_name}``).
Rows that cannot be sent are written to the errors file (default ``FILE.errors.csv``) with their line numbers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from producers.output import cell, emit, group_only, subcommand
from worker.errors import ValidationError

if TYPE_CHECKING:
    from producers.producer import Producer

AddCommand = Callable[..., argparse.ArgumentParser]
SHOWN = ("id", "name", "status", "recipients", "rows_read", "rows_invalid", "duplicates", "not_created",
         "send_rate", "limit_rate", "eta_s", "created_at", "completed_at")


def cmd_create(args: argparse.Namespace) -> int:
    from producers import Producer
    from producers.campaign import CampaignOptions, ErrorsFile, check_csv_file, csv_rows
    from worker.settings import Settings

    path = Path(args.csv)
    if not path.is_file():
        raise ValidationError("--csv", f"no such file: {path}")
    options = CampaignOptions(template=args.template, senders=args.from_ or (), profile=args.profile,
                              media_urls=args.media or (), send_at=args.send_at, name=args.name,
                              valid_for=args.valid_for, rate_cap=args.rate_cap)
    settings = Settings.from_env()
    # Everything that refuses the whole campaign comes before anything connects: the options, the file, its
    # header against the template, the errors file. A refused campaign stores nothing and starts nothing.
    options.check(settings.webhook_url)
    check_csv_file(path)
    errors = ErrorsFile(Path(args.errors) if args.errors else path.with_name(path.name + ".errors.csv"))
    errors.check()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        phone_column, rows = csv_rows(handle, args.phone_column, template=options.template)
        with Producer.connect(settings) as producer:
            try:
                result = producer.create_campaign(options, rows, phone_column=phone_column, on_error=errors)
            finally:
                errors.close()
    result["errors_file"] = str(errors.path) if errors.count else None
    text = (f"{result['id']} {result['status']}: {result['recipients']} recipients "
            f"({result['rows_read']} rows, {result['rows_invalid']} invalid, {result['duplicates']} duplicates)")
    if errors.count:
        text += f"; row errors in {errors.path}"
    emit(args, result, text)
    return 0


def format_progress(record: dict[str, Any]) -> str:
    lines = [f"{key:>13}: {cell(record[key])}" for key in SHOWN]
    lines += [f"{status:>13}: {n}" for status, n in record["messages"].items()]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from producers import Producer
    from worker.settings import Settings

    with Producer.connect(Settings.from_env()) as producer:
        if args.watch and not args.json:
            watch(producer, args.id, args.interval)
            return 0
        record = producer.campaign_status(args.id)
    emit(args, record, format_progress(record))
    return 0


def watch(producer: Producer, campaign_id: str, interval_s: float, *, out: TextIO | None = None,
          timeout_s: float | None = None) -> dict[str, Any]:
    """A live progress bar until the campaign is completed, cancelled or paused (or ``timeout_s`` passed)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    record = producer.campaign_status(campaign_id)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"))
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    with Progress(*columns, console=Console(file=out) if out is not None else None) as bar:
        task = bar.add_task(record["name"] or campaign_id[:8], total=max(record["recipients"], 1), detail="")
        while True:
            detail = (f"{record['status']}  {record['send_rate']:.1f} msg/s"
                      + (f"  ETA {record['eta_s']:.0f} s" if record["eta_s"] is not None else "")
                      + "  " + " ".join(f"{s}={n}" for s, n in record["messages"].items()))
            bar.update(task, completed=record["final"], total=max(record["recipients"], 1), detail=detail)
            if record["status"] in ("completed", "cancelled", "paused"):
                return record
            if deadline is not None and time.monotonic() > deadline:
                return record
            time.sleep(interval_s)
            record = producer.campaign_status(campaign_id)


def _control(action: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from producers import Producer
        from worker.settings import Settings

        with Producer.connect(Settings.from_env()) as producer:
            record = getattr(producer, f"{action}_campaign")(args.id)
        emit(args, record, format_progress(record))
        return 0

    return handler


def register(add: AddCommand) -> None:
    """Add ``sendq campaign create|status|pause|resume|cancel`` through ``build_parser``'s ``add`` helper."""
    campaign = add("campaign", group_only, "send one template to many recipients from a CSV, paced per sender")
    commands = campaign.add_subparsers(dest="campaign_command", required=True, metavar="COMMAND")

    create = subcommand(commands, "create", cmd_create, "create a campaign from a CSV file and start it")
    create.add_argument("--csv", required=True, metavar="FILE", help="recipients, with a header row")
    create.add_argument("--from", dest="from_", action="append", metavar="SENDER",
                        help="sender (repeatable: recipients are spread over the senders in turn)")
    create.add_argument("--profile", metavar="UUID", help="messaging profile (number pool, alphanumeric sender)")
    create.add_argument("--template", required=True, help="message text with {column} variables")
    create.add_argument("--media", action="append", metavar="URL", help="media URL (repeatable, MMS)")
    create.add_argument("--send-at", metavar="ISO8601", help="start at this time (with a UTC offset)")
    create.add_argument("--name", help="a name to recognize the campaign by")
    create.add_argument("--valid-for", type=int, metavar="S",
                        help="a message not sent this many seconds after its turn came ends expired")
    create.add_argument("--rate-cap", type=float, metavar="MPS", help="at most this many messages per second")
    create.add_argument("--phone-column", metavar="NAME", help="the column with the phone numbers")
    create.add_argument("--errors", metavar="FILE", help="where row errors go (default: FILE.errors.csv)")

    status = subcommand(commands, "status", cmd_status, "counts per status, send rate and ETA")
    status.add_argument("id")
    status.add_argument("--watch", action="store_true", help="a live progress bar until the campaign ends")
    status.add_argument("--interval", type=float, default=0.5, metavar="S", help="refresh interval of --watch")
    for action, help_text in (("pause", "stop sending (resume continues where it stopped)"),
                              ("resume", "continue a paused campaign"),
                              ("cancel", "cancel everything not yet sent")):
        subcommand(commands, action, _control(action), help_text).add_argument("id")
