"""``sendq limits``: the rate limits in force, and live overrides every worker picks up within a second.

    sendq limits show [SENDER] [--json]     defaults, configuration and overrides; or one sender's rate and backlog
    sendq limits set SENDER MPS [--json]    a live override for a sender or a sender type
    sendq limits reset SENDER [--json]      remove that override

SENDER is an E.164 number, a short code, an alphanumeric ID, a messaging profile UUID (number pools) or a sender
type (long_code, toll_free, short_code, alphanumeric, number_pool). Input is checked before Redis is touched, so
bad input exits 2 without starting the embedded server.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

from producers.output import emit, group_only, subcommand, table

AddCommand = Callable[..., argparse.ArgumentParser]


@contextlib.contextmanager
def limiter() -> Iterator[Any]:
    """A :class:`worker.limiter.Limiter` on the configured (or embedded) Redis, closed afterwards."""
    import redis

    from worker.embedded import resolve_redis
    from worker.limiter import Limiter
    from worker.settings import Settings

    settings, embedded = resolve_redis(Settings.from_env())
    assert settings.redis_url is not None  # resolve_redis sets it
    client = redis.Redis.from_url(settings.redis_url)
    try:
        yield Limiter.from_settings(client, settings)
    finally:
        client.close()
        if embedded:
            embedded.close()


def parse_mps(value: str) -> float:
    """The MPS argument as a positive finite number; ValidationError naming ``mps`` otherwise."""
    from worker.errors import ValidationError

    try:
        mps = float(value)
    except ValueError:
        raise ValidationError("mps", f"must be a number of messages per second (got {value!r})") from None
    if not math.isfinite(mps) or mps <= 0:
        raise ValidationError("mps", f"must be a positive number of messages per second (got {value!r})")
    return mps


def overview_text(described: dict[str, Any]) -> str:
    """Every sender type and account stream with its effective rate, then the per-sender entries."""
    # Rates as text: output.cell would show a rate of 1 or less as a percentage.
    rows = [(name, f"{rate['mps']:g}", rate["source"]) for name, rate in described["effective"].items()]
    entries = [*((name, mps, "config") for name, mps in described["config"].items()),
               *((name, mps, "override") for name, mps in described["overrides"].items())]
    senders = [(name, f"{mps:g}", source) for name, mps, source in entries if name not in described["defaults"]]
    text = table(("NAME", "MPS", "SOURCE"), rows)
    return text + ("\n\n" + table(("SENDER", "MPS", "SOURCE"), senders) if senders else "")


def status_text(status: dict[str, Any]) -> str:
    width = max(len(key) for key in status)
    return "\n".join(f"{key:>{width}}: {'-' if value is None else value}" for key, value in status.items())


def cmd_show(args: argparse.Namespace) -> int:
    """Without SENDER: defaults, configuration, live overrides and the effective rates; with it, one sender."""
    from worker.limits import classify

    if args.sender is not None:
        classify(args.sender)
    with limiter() as limits:
        if args.sender is None:
            described = limits.limits.describe(limits.overrides.fresh())
            emit(args, described, overview_text(described))
        else:
            status = limits.status(args.sender)
            emit(args, status, status_text(status))
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    """Store a live override; every worker uses it within its cache period (about 1 s)."""
    from worker.limits import classify

    classify(args.sender)
    mps = parse_mps(args.mps)
    with limiter() as limits:
        limits.overrides.set(args.sender, mps)
        status = limits.status(args.sender)
    emit(args, status, status_text(status))
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    """Remove a live override: the sender falls back to the configuration or the default."""
    from worker.limits import classify

    classify(args.sender)
    with limiter() as limits:
        removed = limits.overrides.reset(args.sender)
        status = {**limits.status(args.sender), "removed": removed}
    emit(args, status, status_text(status))
    return 0




def register(add: AddCommand) -> None:
    """Add ``limits`` (show, set, reset) to the ``sendq`` parser through ``build_parser``'s ``add`` helper."""
    sender_help = "E.164 number, short code, alphanumeric ID, messaging profile UUID, or a sender type"
    limits = add("limits", group_only, "show and override sender rate limits (messages per second)")
    commands = limits.add_subparsers(dest="limits_command", required=True, metavar="COMMAND")
    show = subcommand(commands, "show", cmd_show, "show the rate limits in force, or one sender's")
    show.add_argument("sender", nargs="?", metavar="SENDER", help=sender_help)
    setting = subcommand(commands, "set", cmd_set, "set a live override (every worker within about 1 s)")
    setting.add_argument("sender", metavar="SENDER", help=sender_help)
    setting.add_argument("mps", metavar="MPS", help="messages per second, more than 0")
    reset = subcommand(commands, "reset", cmd_reset, "remove a live override")
    reset.add_argument("sender", metavar="SENDER", help=sender_help)
