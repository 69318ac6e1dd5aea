"""The store or Redis down, as a user of the CLI and the Python API sees it: one line naming the dependency, exit 1.

Real processes, real services: the store is a PostgreSQL URL on a port nothing listens on (or a SQLite file that
cannot be opened), Redis a URL on such a port, and the other dependency is the real one. No command may print a
traceback, a usage block or a second line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from producers.producer import Producer
from worker.errors import DependencyUnavailable, RedisUnavailable, StoreUnavailable
from worker.serving import free_port
from worker.settings import Settings
from worker.store import Store

SENDQ = [sys.executable, "-m", "producers.cli"]
TO, FROM = "+13125550002", "+13125550001"
PROFILE = "4001795e-4f35-4ddc-b5b7-02d1c2c6a1a3"
CAMPAIGN = "{campaign}"  # replaced by the id of a campaign stored while everything was up

#: Commands that need the store (every producer and ops command but ``limits``).
NEEDS_STORE = [
    ("send", "--to", TO, "--from", FROM, "--text", "hi"),
    ("send", "--to", TO, "--from", FROM, "--text", "hi", "--json"),
    ("status", "m-1"),
    ("cancel", "m-1", "--json"),
    ("bulk-update", "--profile", PROFILE, "--numbers", TO),
    ("migrate",),
    ("migrate", "--json"),
    ("campaign", "create", "--csv", "{csv}", "--from", FROM, "--template", "hi {name}"),
    ("campaign", "status", "c-1"),
    ("campaign", "pause", "c-1"),
    ("campaign", "resume", "c-1"),
    ("campaign", "cancel", "c-1"),
    ("optouts", "list"),
    ("optouts", "add", TO, "--scope", FROM),
    ("optouts", "remove", TO, "--scope", FROM, "--json"),
    ("dlq", "list"),
    ("dlq", "replay", "--all"),
    ("dlq", "purge", "--json"),
]
#: Commands that need Redis once the store has answered.
NEEDS_REDIS = [
    ("campaign", "create", "--csv", "{csv}", "--from", FROM, "--template", "hi {name}"),
    ("campaign", "status", CAMPAIGN),
    ("campaign", "status", CAMPAIGN, "--json"),
    ("dlq", "list", "--json"),
    ("dlq", "replay", "--all"),
    ("dlq", "purge"),
    ("limits", "show"),
    ("limits", "show", FROM, "--json"),
    ("limits", "set", "long_code", "2"),
    ("limits", "reset", "long_code"),
]


def nowhere(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{free_port()}" + ("/test" if scheme == "postgresql" else "/0")


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "recipients.csv"
    path.write_text(f"phone,name\n{TO},Ada\n", encoding="utf-8")
    return path


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    """The session's Redis (a namespace of its own) and a SQLite store: for tests where one of them is down."""
    return Settings(redis_url=redis_url, database_url=f"sqlite:///{tmp_path / 'sendq.db'}",
                    namespace=f"outage-{uuid.uuid4().hex[:8]}", telnyx_api_key="KEY-outage-test")


@pytest.fixture
def stored(base_settings: Settings) -> Settings:
    """The session's Redis and each store backend (SQLite, and PostgreSQL when DATABASE_URL names one), up."""
    return base_settings


def environment(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDQ_", "TELNYX_"))}
    env.update(REDIS_URL=str(settings.redis_url), DATABASE_URL=settings.database_url,
               SENDQ_NAMESPACE=settings.namespace, TELNYX_API_KEY="KEY-outage-test",
               TELNYX_BASE_URL=f"http://127.0.0.1:{free_port()}/v2")
    env.update(overrides)
    return env


def run(args: tuple[str, ...], env: dict[str, str], **names: str) -> subprocess.CompletedProcess[str]:
    argv = [names.get(arg[1:-1], arg) if arg.startswith("{") and arg.endswith("}") else arg for arg in args]
    return subprocess.run([*SENDQ, *argv], env=env, capture_output=True, text=True, timeout=60)


def assert_one_line_naming(done: subprocess.CompletedProcess[str], dependency: str) -> None:
    where = f"{done.args[3:]}: rc={done.returncode} stderr={done.stderr!r}"
    assert done.returncode == 1, where
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, where
    lines = done.stderr.splitlines()
    assert len(lines) == 1, where
    assert lines[0].startswith(f"sendq: error: {dependency} unavailable: "), where
    assert done.stdout == "", where  # not even a partial JSON object


@pytest.mark.parametrize("args", NEEDS_STORE, ids=" ".join)
def test_store_down_is_one_line_and_exit_1(args: tuple[str, ...], settings: Settings, csv_file: Path) -> None:
    env = environment(settings, DATABASE_URL=nowhere("postgresql"))
    assert_one_line_naming(run(args, env, csv=str(csv_file)), "store")


@pytest.mark.parametrize("args", [("status", "m-1"), ("migrate",), ("optouts", "list")], ids=" ".join)
def test_a_sqlite_store_that_cannot_be_opened_is_unavailable_too(args: tuple[str, ...], settings: Settings,
                                                                  tmp_path: Path) -> None:
    env = environment(settings, DATABASE_URL=f"sqlite:///{tmp_path / 'no-such-dir' / 'sendq.db'}")
    assert_one_line_naming(run(args, env), "store")


@pytest.fixture
def campaign_id(stored: Settings) -> Iterator[str]:
    """A campaign stored (and started) while everything was up, paused so that nothing more is enqueued."""
    with Producer.connect(stored) as producer:
        created = producer.campaign([{"phone": TO}], template="hi", from_=FROM)
        producer.pause_campaign(created["id"])
    yield created["id"]


@pytest.mark.parametrize("args", NEEDS_REDIS, ids=" ".join)
def test_redis_down_is_one_line_and_exit_1(args: tuple[str, ...], stored: Settings, csv_file: Path,
                                           campaign_id: str) -> None:
    env = environment(stored, REDIS_URL=nowhere("redis"))
    assert_one_line_naming(run(args, env, csv=str(csv_file), campaign=campaign_id), "redis")


def test_commands_that_need_only_the_store_work_while_redis_is_down(stored: Settings) -> None:
    env = environment(stored, REDIS_URL=nowhere("redis"))
    added = run(("optouts", "add", TO, "--scope", FROM, "--json"), env)
    assert added.returncode == 0 and json.loads(added.stdout)["added"] is True, added.stderr
    missing = run(("status", "m-1"), env)
    assert missing.returncode == 1 and missing.stderr == "sendq: error: no message or bulk update with id 'm-1'\n"


# -- the Python API ----------------------------------------------------------------------------------------------

def test_the_python_api_raises_store_unavailable(stored: Settings) -> None:
    down = stored.model_copy(update={"database_url": nowhere("postgresql")})
    with pytest.raises(StoreUnavailable) as raised:
        Producer.connect(down)
    assert str(raised.value).startswith("store unavailable: ") and "\n" not in str(raised.value)

    with Producer.connect(stored) as producer:
        producer.store.close()
        producer.store = Store.from_url(down.database_url)  # the store lost after connecting
        for call in (lambda: producer.status("m-1"), lambda: producer.send(TO, from_=FROM, text="hi"),
                     lambda: producer.cancel("m-1"), lambda: producer.campaign_status("c-1"),
                     lambda: producer.bulk_update(PROFILE, [TO])):
            with pytest.raises(StoreUnavailable):
                call()


def test_the_python_api_raises_redis_unavailable(stored: Settings, campaign_id: str) -> None:
    down = stored.model_copy(update={"redis_url": nowhere("redis")})
    with Producer.connect(down) as producer:
        assert producer.campaign_status  # connecting needs no Redis; the store answers
        with pytest.raises(RedisUnavailable) as raised:
            producer.campaign_status(campaign_id)
        assert str(raised.value).startswith("redis unavailable: ") and "\n" not in str(raised.value)
        with pytest.raises(RedisUnavailable):
            producer.resume_campaign(campaign_id)
        with pytest.raises(DependencyUnavailable):
            producer.campaign([{"phone": TO}], template="hi", from_=FROM)
