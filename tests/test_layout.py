"""Importing sendq has no side effects, and configuration is read in one place."""

from __future__ import annotations

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
    from worker.simulator.app import DEFAULT_KEY_SEED

    assert f"TELNYX_PUBLIC_KEY={Signer.from_seed(DEFAULT_KEY_SEED).public_key}" in (ROOT / "README.md").read_text()
