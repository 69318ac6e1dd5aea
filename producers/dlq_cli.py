"""``sendq dlq``: the jobs dramatiq gave up on (its dead-letter queues), and putting them back.

    sendq dlq list [--json]                 every dead job: queue, actor, sendq's id, its status, when, why
    sendq dlq replay (ID | --all) [--json]  re-enqueue dead jobs that may safely run again (see below)
    sendq dlq purge [--json]                drop every dead job

A replay never repeats an outcome: a message's job is replayed only while the message is still ``queued``, and
its claim and Idempotency-Key keep it from going out twice; a message in a final status (``failed`` after its
retries ran out) stays as it is, because a final status never changes: send a new message to try again. See
:mod:`worker.dead_letters`. ``replay ID`` exits 1 with the reason when that job may not be replayed.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from producers.output import emit, group_only, table

AddCommand = Callable[..., argparse.ArgumentParser]
COLUMNS = ("FAILED AT", "QUEUE", "ACTOR", "ID", "STATUS", "RETRIES", "LAST ERROR")


@contextlib.contextmanager
def dead_letters() -> Iterator[Any]:
    """A :class:`worker.dead_letters.DeadLetters` on the configured (or embedded) Redis and store."""
    from worker.broker import build_broker
    from worker.dead_letters import DeadLetters
    from worker.embedded import resolve_redis
    from worker.settings import Settings
    from worker.store import Store

    settings, embedded = resolve_redis(Settings.from_env())
    broker = build_broker(settings)
    store = Store.from_url(settings.database_url).migrate()
    try:
        yield DeadLetters(broker, store)
    finally:
        broker.close()
        store.close()
        if embedded:
            embedded.close()


def _error_text(entry: Any) -> str:
    error = entry.last_error
    if error:
        return f"{error.get('code')} {error.get('title') or ''}".strip()
    return (entry.traceback or "").splitlines()[-1] if entry.traceback else "-"


def cmd_list(args: argparse.Namespace) -> int:
    with dead_letters() as dlq:
        entries = dlq.list()
    rows = [(e.failed_at.isoformat(timespec="seconds"), e.queue, e.actor, e.message_id or e.dramatiq_id,
             e.status, e.retries, _error_text(e)) for e in entries]
    emit(args, {"data": [e.as_dict() for e in entries], "count": len(entries)}, table(COLUMNS, rows))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from worker.errors import ConflictError, ValidationError

    if bool(args.id) == args.all:
        raise ValidationError("id", "give one dead job's ID, or --all")
    with dead_letters() as dlq:
        results = dlq.replay(None if args.all else args.id)
    if args.id and not any(r.replayed for r in results):
        refused = results[0]
        raise ConflictError(f"{refused.id} not replayed: {refused.reason}", status=refused.status)
    replayed = [r.id for r in results if r.replayed]
    skipped = [r.as_dict() for r in results if not r.replayed]
    lines = [f"replayed {r.id}" if r.replayed else f"skipped  {r.id}: {r.reason}" for r in results]
    emit(args, {"replayed": replayed, "skipped": skipped}, "\n".join(lines) or "nothing to replay")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    with dead_letters() as dlq:
        purged = dlq.purge()
    emit(args, {"purged": purged}, f"purged {purged} dead jobs")
    return 0


def register(add: AddCommand) -> None:
    """Add ``sendq dlq list|replay|purge`` to the ``sendq`` parser (``add`` is ``build_parser``'s helper)."""
    dlq = add("dlq", group_only, "inspect, replay or purge the jobs dramatiq gave up on (dead-letter queues)")
    commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")

    def sub(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        command.add_argument("--json", action="store_true", help="print one JSON object")
        return command

    sub("list", cmd_list, "list every dead job, oldest first")
    replay = sub("replay", cmd_replay, "re-enqueue dead jobs that may safely run again (a message still queued)")
    replay.add_argument("id", nargs="?", metavar="ID", help="sendq's message or bulk update id, or a dramatiq id")
    replay.add_argument("--all", action="store_true", help="every dead job")
    sub("purge", cmd_purge, "drop every dead job")
