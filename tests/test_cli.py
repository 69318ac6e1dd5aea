"""The ``sendq`` command: exit codes, JSON output, and the three-process flow of the README."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from worker.serving import free_port
from worker.store import messages

SENDQ = [sys.executable, "-m", "producers.cli"]


@pytest.fixture
def env(base_settings) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": base_settings.redis_url,
        "DATABASE_URL": base_settings.database_url,
        "SENDQ_NAMESPACE": base_settings.namespace,
        "TELNYX_API_KEY": "KEY-cli-test",
        "SENDQ_RATE_LIMITS": json.dumps(base_settings.rate_limits),
        "SENDQ_ACCOUNT_MPS": json.dumps(base_settings.account_mps),
    }


def sendq(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SENDQ, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_the_console_script_is_installed_and_every_command_has_help():
    script = shutil.which("sendq", path=str(Path(sys.executable).parent)) or shutil.which("sendq")
    assert script, "the sendq console script is not installed"
    for command in ("send", "status", "cancel", "worker", "web", "scheduler", "simulator", "demo", "numbers", "profile",
                    "optouts", "limits", "dlq", "migrate"):
        done = subprocess.run([script, command, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "usage: sendq" in done.stdout


@pytest.mark.parametrize(("args", "field"), [
    (["--to", "12345678", "--from", "+13125550001", "--text", "x"], "to"),
    (["--to", "+13125550002", "--from", "+13125550001", "--text", ""], "text"),
    (["--to", "+13125550002", "--from", "+13125550001", "--text", "x", "--idempotency-key", "a b"], "idempotency_key"),
    (["--to", "+13125550002", "--from", "+13125550001", "--text", "x", "--kind", "pigeon"], "kind"),
])
def test_bad_input_exits_2_naming_the_field_and_stores_nothing(env, store, args, field):
    done = sendq("send", *args, "--json", env=env)

    assert done.returncode == 2
    assert field in done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "usage:" not in done.stderr
    with store.engine.connect() as conn:
        assert conn.execute(messages.select()).all() == []


def test_send_then_status_print_one_json_object_each(env):
    sent = sendq("send", "--to", "+13125550002", "--from", "+13125550001", "--text", "hi", "--json", env=env)
    assert sent.returncode == 0, sent.stderr
    accepted = json.loads(sent.stdout)
    assert accepted["status"] == "queued"

    shown = sendq("status", accepted["id"], "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == accepted["id"]


def test_migrate_creates_the_schema_of_an_empty_store_and_is_idempotent(env, tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {**env, "DATABASE_URL": url}
    for _ in range(2):
        done = sendq("migrate", "--json", env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"migrated": True}
    engine = sa.create_engine(url)
    assert {"messages", "message_history", "events", "campaign_counts"} <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_status_of_an_unknown_id_exits_1(env):
    done = sendq("status", "no-such-id", "--json", env=env)

    assert done.returncode == 1
    assert "no-such-id" in done.stderr


@pytest.fixture
def processes(env) -> Iterator[dict[str, str]]:
    """`sendq simulator`, `sendq web` and `sendq worker`, each in its own process, as in the README."""
    web_port, sim_port = free_port(), free_port()
    started: list[subprocess.Popen[str]] = []

    def spawn(*args: str, env_: dict[str, str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen([*SENDQ, *args], env=env_, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        started.append(proc)
        return proc

    sim = spawn("simulator", "--port", str(sim_port), "--webhook-url",
                f"http://127.0.0.1:{web_port}/webhooks/telnyx", "--numbers", "24680", env_=env)
    public_key = _wait_json(f"http://127.0.0.1:{sim_port}/_sim/public_key", sim)["public_key"]
    env = {**env, "TELNYX_BASE_URL": f"http://127.0.0.1:{sim_port}/v2", "TELNYX_PUBLIC_KEY": public_key}
    web = spawn("web", "--port", str(web_port), env_=env)
    _wait_json(f"http://127.0.0.1:{web_port}/healthz", web)
    spawn("worker", "--processes", "1", "--threads", "4", env_=env)
    try:
        yield env
    finally:
        for proc in started:
            proc.send_signal(signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_json(url: str, proc: subprocess.Popen[str], timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            return httpx.get(url, timeout=1).json()
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_three_processes_and_a_send_end_delivered_with_the_whole_history(processes):
    sent = sendq("send", "--to", "+13125550002", "--from", "+13125550001", "--text", "Your code is 123456",
                 "--json", env=processes)
    assert sent.returncode == 0, sent.stderr
    message_id = json.loads(sent.stdout)["id"]

    deadline = time.monotonic() + 45
    while True:
        record = json.loads(sendq("status", message_id, "--json", env=processes).stdout)
        if record["status"] == "delivered" or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert record["status"] == "delivered"
    assert [h["status"] for h in record["history"]] == ["queued", "sending", "submitted", "sent", "delivered"]


def test_sendq_send_reaches_a_final_status_for_every_kind(processes):
    profile = "4001767e-ce0f-4cae-9d5f-0d5e636e7809"
    sends = {
        "auto": ["--to", "+13125550002", "--from", "+13125550001", "--text", "hi"],
        "long_code": ["--to", "+13125550002", "--from", "+13125550001", "--media", "https://example.com/a.png"],
        "short_code": ["--to", "+13125550002", "--from", "24680", "--text", "hi"],
        "alphanumeric": ["--to", "+447700900123", "--from", "MyShop", "--profile", profile, "--text", "hi"],
        "number_pool": ["--to", "+13125550002", "--profile", profile, "--text", "hi"],
        "group_mms": ["--to", "+13125550002,+13125550003", "--from", "+13125550001", "--text", "hi"],
        "whatsapp": ["--to", "+13125550002", "--from", "+13125550001", "--text", "hi"],
    }
    ids = {}
    for kind, args in sends.items():
        done = sendq("send", *args, "--kind", kind, "--json", env=processes)
        assert done.returncode == 0, (kind, done.stderr)
        ids[kind] = json.loads(done.stdout)["id"]

    deadline = time.monotonic() + 60
    records = {}
    while len(records) < len(ids) and time.monotonic() < deadline:
        for kind, message_id in ids.items():
            record = json.loads(sendq("status", message_id, "--json", env=processes).stdout)
            if record["status"] == "delivered":
                records[kind] = record
        time.sleep(0.3)

    assert sorted(records) == sorted(ids)
    assert records["group_mms"]["recipient_statuses"] == {"+13125550002": "delivered", "+13125550003": "delivered"}
