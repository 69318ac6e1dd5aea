"""Importing sendq has no side effects, configuration is read in one place, and the house keeps its shape: no
import circles, no long modules, each process built in worker/processes/."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import producers
import worker

ROOT = Path(__file__).resolve().parent.parent


def all_modules() -> list[str]:
    found = []
    for package in (worker, producers):
        found.append(package.__name__)
        found += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return found


def test_importing_every_module_touches_no_file_socket_or_environment(tmp_path):
    script = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise AssertionError('network at import')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        f"for name in {all_modules()!r}: __import__(name)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": "sqlite:///./x.db"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_only_settings_reads_the_environment():
    readers = sorted(
        str(path.relative_to(ROOT))
        for package in ("worker", "producers")
        for path in (ROOT / package).rglob("*.py")
        if re.search(r"os\.environ(?!\[\"(REDIS_URL|PROMETHEUS_MULTIPROC_DIR)\"\] =)|os\.getenv|environ\.get",
                     path.read_text())
    )
    # settings.py reads through pydantic-settings; embedded.py only publishes REDIS_URL to child processes, and
    # ops_server.py PROMETHEUS_MULTIPROC_DIR (prometheus_client reads it when a child imports it).
    assert readers == ["worker/settings.py"]


def test_procfile_names_real_commands_and_queues():
    from producers.cli import build_parser
    from worker.queues import QUEUES

    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for line in (ROOT / "Procfile").read_text().splitlines():
        _name, command = line.split(":", 1)
        words = command.split()
        assert words[0] == "sendq" and words[1] in commands, line
        if "--queues" in words:
            assert set(words[words.index("--queues") + 1].split(",")) <= set(QUEUES), line


def test_ci_runs_the_test_command_of_the_readme_quick_start():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"test_command='(.+)'", ci).group(1)  # type: ignore[union-attr]

    assert f"```sh\n{command}\n```" in readme


def test_the_readme_public_key_is_the_simulators_default():
    from worker.signature import Signer
    from worker.simulator.core import DEFAULT_KEY_SEED

    assert f"TELNYX_PUBLIC_KEY={Signer.from_seed(DEFAULT_KEY_SEED).public_key}" in (ROOT / "README.md").read_text()


def _imports(path: Path, package_of: str) -> set[str]:
    """Every sendq module ``path`` imports, at the top, lazily in a function or under TYPE_CHECKING alike."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package_of.split(".")
                base = ".".join([*parts[:len(parts) - node.level + 1], node.module])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = set(all_modules())
    graph = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        path = Path(spec.origin)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _imports(path, package) if m in modules and m != name}
    return graph


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import each other, directly or through others."""
    reached = {name: reach(graph, name) for name in graph}
    found: list[set[str]] = []
    for name in sorted(graph):
        if name in reached[name] and not any(name in c for c in found):
            found.append({other for other in reached[name] if name in reached[other]})
    return found


def test_no_module_imports_itself_back_through_others():
    assert [sorted(c) for c in circles(import_graph())] == []


def test_settings_hooks_and_the_broker_read_queue_names_from_a_leaf():
    graph = import_graph()

    assert graph["worker.queues"] <= {"worker.errors"}
    assert "worker.queues" in graph["worker.settings"] and "worker.hooks" not in graph["worker.settings"]


def test_no_module_of_worker_or_producers_is_over_400_lines():
    long = sorted(
        str(path.relative_to(ROOT))
        for package in ("worker", "producers")
        for path in (ROOT / package).rglob("*.py")
        if len(path.read_text().splitlines()) > 400
    )

    assert long == []


def test_the_cli_builds_no_process_itself():
    # Each process is built from Settings in worker/processes/; the CLI parses arguments and calls it.
    cli = _imports(ROOT / "producers" / "cli.py", "producers")

    assert not cli & {"worker.pool", "worker.web", "worker.scheduler", "worker.broker", "worker.embedded",
                      "worker.reconcile", "worker.optout_sync", "worker.ops_server"}
    assert {"worker.processes.worker", "worker.processes.web", "worker.processes.scheduler"} <= cli
