"""Counts the Redis commands a process sends, by command, for bench/end_to_end.py.

The server's own counters (``INFO``) count every client of the server; on a Redis shared with other work they
say little about one run (this machine's shared Redis served about 4,500 commands/s for others while sendq
was measured). Counting on the client side is exact for the processes that load this module.

A process loads it at start-up through ``bench/redis_count_site/sitecustomize.py`` when that directory is on
``PYTHONPATH`` and ``BENCH_REDIS_COUNT_DIR`` is set; the benchmark itself calls :func:`install`. Counts are
written to ``<dir>/<pid>.json`` every :data:`FLUSH_EVERY` commands and at exit (for a child forked by
multiprocessing, which leaves through ``os._exit``, when multiprocessing runs its exit finalizers); a process
that is killed loses at most its last ``FLUSH_EVERY - 1`` commands.
Pipelined commands (and MULTI/EXEC) count one each, as the server counts them.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing.util
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

FLUSH_EVERY = 200

_lock = threading.Lock()
_calls: Counter[str] = Counter()
_sent = 0
_directory: Path | None = None


def _name(args: tuple[Any, ...]) -> str:
    first = args[0] if args else b"?"
    text = first.decode() if isinstance(first, bytes) else str(first)
    return text.split(" ", 1)[0].lower()


def _count(args: tuple[Any, ...]) -> None:
    global _sent
    with _lock:
        _calls[_name(args)] += 1
        _sent += 1
        due = _sent % FLUSH_EVERY == 0
    if due:
        flush()


def flush() -> None:
    """Write this process's counts (all of them since it started) to its file."""
    if _directory is None:
        return
    with _lock:
        snapshot = dict(_calls)
    path = _directory / f"{os.getpid()}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(snapshot))
    temporary.replace(path)  # a reader never sees half a file


def _after_fork() -> None:
    # The child's commands are its own: it starts from zero under its own pid.
    global _lock, _sent
    _lock = threading.Lock()
    _calls.clear()
    _sent = 0


class _Forks:
    """Something multiprocessing can hold a weak reference to (register_after_fork needs one)."""


_forks = _Forks()


def _in_multiprocessing_child(_: object) -> None:
    # multiprocessing clears its finalizers in a new child and then calls this; its exit runs them, atexit not.
    multiprocessing.util.Finalize(None, flush, exitpriority=100)


def snapshot() -> Counter[str]:
    """This process's counts so far."""
    with _lock:
        return Counter(_calls)


def _wrap(cls: type, method: str) -> None:
    original = getattr(cls, method)

    def counted(self: Any, *args: Any) -> Any:
        _count(args)
        return original(self, *args)

    setattr(cls, method, counted)


def install(directory: str) -> None:
    """Count every Redis command this process sends from now on, into ``directory``."""
    global _directory
    if _directory is not None:
        return
    _directory = Path(directory)
    _directory.mkdir(parents=True, exist_ok=True)
    import redis.asyncio.connection
    import redis.connection

    # Every sync command, single or pipelined, is packed by the connection's serializer; every async one by
    # AbstractConnection.pack_command.
    for cls in (redis.connection.PythonRespSerializer, redis.connection.HiredisRespSerializer):
        _wrap(cls, "pack")
    _wrap(redis.asyncio.connection.AbstractConnection, "pack_command")
    os.register_at_fork(after_in_child=_after_fork)
    multiprocessing.util.register_after_fork(_forks, _in_multiprocessing_child)
    atexit.register(flush)


def uninstall() -> None:
    """Stop writing counts (the directory is about to go); commands are still counted in memory."""
    global _directory
    _directory = None


def totals(directory: str) -> Counter[str]:
    """The counts of every process that wrote into ``directory``."""
    found: Counter[str] = Counter()
    for path in Path(directory).glob("*.json"):
        found.update(json.loads(path.read_text()))
    return found
