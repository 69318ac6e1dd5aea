"""``sendq optouts``: the suppression list (recipients who opted out), and Telnyx's own opt-out blocks.

    sendq optouts list [--scope S] [--json]                         sendq's suppression list, every page
    sendq optouts list --telnyx [--profile UUID] [--from SENDER] [--since ISO8601] [--json]
                                                                   Telnyx's opt-out blocks, every page
    sendq optouts add NUMBER --scope S [--json]                     never send to NUMBER from S
    sendq optouts remove NUMBER --scope S [--json]                  lift that block
    sendq optouts sync [--json]                                     copy Telnyx's new blocks in now

The scope is a messaging profile UUID (every number of the profile) or a sender (E.164 number, short code or
alphanumeric ID). The suppression list needs only the store (``DATABASE_URL``); ``--telnyx`` and ``sync``
need ``TELNYX_API_KEY``. Bad input exits 2 naming the field. See :mod:`worker.suppressions`.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from producers.output import emit, group_only, subcommand, table

AddCommand = Callable[..., argparse.ArgumentParser]
COLUMNS = (("RECIPIENT", "recipient"), ("SCOPE", "scope"), ("NUMBER", "number"), ("SOURCE", "source"),
           ("KEYWORD", "keyword"), ("CREATED", "created_at"))
TELNYX_COLUMNS = (("TO", "to"), ("FROM", "from"), ("KEYWORD", "keyword"), ("PROFILE", "messaging_profile_id"),
                  ("CREATED", "created_at"))


@contextlib.contextmanager
def _store() -> Iterator[Any]:
    from worker.settings import Settings
    from worker.store import Store

    store = Store.from_url(Settings.from_env().database_url).migrate()
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def _telnyx() -> Iterator[Any]:
    from producers.ops_cli import telnyx_client

    with telnyx_client() as client:
        yield client


def _rows(items: list[dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> str:
    return table([h for h, _ in columns], [[item.get(key) for _, key in columns] for item in items])


def cmd_list(args: argparse.Namespace) -> int:
    """sendq's suppression list (or, with ``--telnyx``, Telnyx's opt-out blocks), every page."""
    if args.telnyx:
        return _list_telnyx(args)
    from worker.errors import ValidationError
    from worker.suppressions import Suppressions

    for name in ("profile", "from_", "since"):
        if getattr(args, name):
            raise ValidationError(name.rstrip("_"), "filters Telnyx's list: give it with --telnyx (or use --scope)")
    with _store() as store:
        rows = [s.as_dict() for s in Suppressions.of(store).iterate(scope=args.scope)]
    emit(args, {"data": rows, "count": len(rows)}, _rows(rows, COLUMNS))
    return 0


def _list_telnyx(args: argparse.Namespace) -> int:
    if args.scope:
        from worker.errors import ValidationError

        raise ValidationError("scope", "filters sendq's list; with --telnyx use --profile or --from")
    with _telnyx() as client:
        blocks = list(client.optouts.list(messaging_profile_id=args.profile, from_=args.from_,
                                          created_at_gte=args.since))
    emit(args, {"data": blocks, "count": len(blocks)}, _rows(blocks, TELNYX_COLUMNS))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    """Never send to NUMBER from the scope (a manual block, kept until removed or the recipient texts START)."""
    from worker.suppressions import MANUAL, Suppressions, check_pair

    recipient, profile, sender = check_pair(args.number, args.scope)
    with _store() as store:
        suppressions = Suppressions.of(store)
        added = suppressions.add(recipient, profile=profile, number=sender, source=MANUAL)
        row = suppressions.get(recipient, profile or str(sender))
    record = {**(row.as_dict() if row else {"recipient": recipient, "scope": profile or sender}), "added": added}
    emit(args, record, f"{recipient} suppressed for {record['scope']}" + ("" if added else " (already)"))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Lift the block of NUMBER for the scope (exit 0 whether or not it was there; ``removed`` says)."""
    from worker.suppressions import Suppressions, check_pair

    recipient, profile, sender = check_pair(args.number, args.scope)
    scope = profile or str(sender)
    with _store() as store:
        removed = Suppressions.of(store).remove(recipient, scope)
    emit(args, {"recipient": recipient, "scope": scope, "removed": removed},
         f"{recipient} {'no longer' if removed else 'was not'} suppressed for {scope}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """One opt-out sync pass now: Telnyx's blocks created since the last pass, into the suppression list."""
    from worker.optout_sync import OptOutSync

    with _store() as store, _telnyx() as client:
        result = OptOutSync(store, client).run()
    emit(args, result.as_dict(), f"{result.fetched} listed by Telnyx since {result.since or 'the start'}, "
                                 f"{result.added} new, {result.skipped} unusable; mark {result.high_water_mark}")
    return 0


def register(add: AddCommand) -> None:
    """Add ``sendq optouts list|add|remove|sync`` (``add`` is ``build_parser``'s helper)."""
    optouts = add("optouts", group_only, "the suppression list (recipients who opted out) and Telnyx's opt-outs")
    commands = optouts.add_subparsers(dest="optouts_command", required=True, metavar="COMMAND")

    listing = subcommand(commands, "list", cmd_list, "list sendq's suppression list (or Telnyx's, --telnyx)")
    listing.add_argument("--scope", metavar="S", help="only blocks that apply to this profile UUID or sender")
    listing.add_argument("--telnyx", action="store_true", help="list Telnyx's opt-out blocks instead")
    listing.add_argument("--profile", metavar="UUID", help="with --telnyx: only this messaging profile's")
    listing.add_argument("--from", dest="from_", metavar="SENDER", help="with --telnyx: only this sending number's")
    listing.add_argument("--since", metavar="ISO8601", help="with --telnyx: only blocks created at or after this")

    for name, handler, help_text in (("add", cmd_add, "never send to NUMBER from a profile or sender"),
                                     ("remove", cmd_remove, "lift the block of NUMBER for a profile or sender")):
        command = subcommand(commands, name, handler, help_text)
        command.add_argument("number", metavar="NUMBER", help="the recipient, E.164")
        command.add_argument("--scope", required=True, metavar="S",
                             help="a messaging profile UUID, or a sender (E.164 number, short code, alphanumeric ID)")

    subcommand(commands, "sync", cmd_sync, "copy the opt-outs Telnyx added since the last sync into the list now")
