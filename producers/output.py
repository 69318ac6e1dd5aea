"""Output shared by every ``sendq`` command: one JSON object with ``--json``, aligned text otherwise."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any


def subcommand(group: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
               handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
    """A subcommand under ``group`` (``sendq numbers list``, ...) that takes ``--json``."""
    command = group.add_parser(name, help=help_text, description=help_text)
    command.set_defaults(handler=handler)
    command.add_argument("--json", action="store_true", help="print one JSON object")
    return command


def group_only(args: argparse.Namespace) -> int:
    """The handler of a command group itself; unreachable, as argparse insists on a subcommand first."""
    return 2


def emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    """Print ``obj`` as one JSON object when ``--json`` was given, else ``text``."""
    print(json.dumps(obj, default=str) if getattr(args, "json", False) else text)


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


