"""Bad input, as CONTRACT.md wants it refused: exit 2 (or ``ValidationError``), one line naming what is wrong,
nothing stored, no file created, no process left.

One table drives the console script (``python -m producers.cli`` in a fresh directory) and another the Python
API. Every CLI case runs on the embedded defaults (no ``REDIS_URL``/``DATABASE_URL``: the command must refuse
before it creates ``./sendq.db`` or ``.sendq/`` or starts a Redis server), and again against the test's
Redis and stores (SQLite, and PostgreSQL when ``DATABASE_URL`` names one) when it is a case that reaches a
store, where no table may gain a row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy as sa

import producers
from producers.producer import Producer
from worker.errors import SendqError, ValidationError
from worker.settings import Settings
from worker.store import bulk_updates, campaign_recipients, campaigns, messages, suppressions
from worker.suppressions import check_pair

SENDQ = [sys.executable, "-m", "producers.cli"]
PROFILE = "4001767e-ce0f-4cae-9d5f-0d5e636e7809"
TO, FROM = "+13125550002", "+13125550001"
ARABIC_INDIC = "+" + "".join(chr(0x0660 + int(d)) for d in "13125550002")
FULLWIDTH = "+" + "".join(chr(0xFF10 + int(d)) for d in "13125550002")
SEND = ["send", "--from", FROM, "--text", "hi"]
TABLES = (messages, campaigns, campaign_recipients, suppressions, bulk_updates)
#: Variables that would point a subprocess somewhere else than where a case wants it.
OURS = ("REDIS_URL", "DATABASE_URL", "TELNYX_API_KEY", "PROMETHEUS_MULTIPROC_DIR")
GOOD_CSV = "phone,first_name\n+13125550010,Ann\n+13125550011,Bob\n"


@dataclass(frozen=True)
class Cli:
    """One bad command line: ``args``, the name its error must carry, files it needs, variables it sets."""

    args: tuple[str, ...]
    field: str
    files: dict[str, bytes | str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    #: Whether the command, had the input been good, would have written to the store (then it runs on both).
    stores: bool = True


def cli(*args: str, field: str, stores: bool = True, files: dict[str, bytes | str] | None = None,
        env: dict[str, str] | None = None) -> Cli:
    return Cli(tuple(args), field, files or {}, env or {}, stores)


def campaign(*args: str, field: str, csv: bytes | str = GOOD_CSV, template: str = "Hi {first_name}") -> Cli:
    return cli("campaign", "create", "--csv", "people.csv", "--from", FROM, "--template", template, *args,
               field=field, files={"people.csv": csv})


CLI_CASES: dict[str, Cli] = {
    # numbers: phonenumbers, E.164 exactly
    "to-too-short": cli(*SEND, "--to", "+12", field="to"),
    "to-trailing-newline": cli(*SEND, "--to", TO + "\n", field="to"),
    "to-trailing-space": cli(*SEND, "--to", TO + " ", field="to"),
    "to-arabic-indic-digits": cli(*SEND, "--to", ARABIC_INDIC, field="to"),
    "to-fullwidth-digits": cli(*SEND, "--to", FULLWIDTH, field="to"),
    "to-spaced": cli(*SEND, "--to", "+1 312 555 0002", field="to"),
    "to-no-plus": cli(*SEND, "--to", "13125550002", field="to"),
    "to-extension": cli(*SEND, "--to", TO + "x12", field="to"),
    "to-too-long": cli(*SEND, "--to", "+131255500021", field="to"),
    "group-mms-bad-member": cli("send", "--from", FROM, "--text", "hi", "--kind", "group_mms",
                                "--to", f"{TO},+12", field="to"),
    "group-mms-twice": cli("send", "--from", FROM, "--text", "hi", "--kind", "group_mms",
                           "--to", f"{TO},{TO}", field="to"),
    "from-newline-alphanumeric": cli("send", "--to", TO, "--text", "hi", "--profile", PROFILE,
                                     "--from", "sendq\n", field="from"),
    "from-tab-alphanumeric": cli("send", "--to", TO, "--text", "hi", "--profile", PROFILE,
                                 "--from", "send\tq", field="from"),
    "from-arabic-indic-number": cli("send", "--to", TO, "--text", "hi", "--from", ARABIC_INDIC, field="from"),
    # other send fields
    "text-empty": cli("send", "--to", TO, "--from", FROM, "--text", "", field="text"),
    "text-escape-character": cli("send", "--to", TO, "--from", FROM, "--text", "hi\x1b[31m", field="text"),
    "idempotency-key-space": cli(*SEND, "--to", TO, "--idempotency-key", "a b", field="idempotency_key"),
    "idempotency-key-newline": cli(*SEND, "--to", TO, "--idempotency-key", "abc\n", field="idempotency_key"),
    "profile-braces": cli("send", "--to", TO, "--text", "hi", "--profile", "{" + PROFILE + "}", field="profile"),
    "media-newline": cli(*SEND, "--to", TO, "--media", "https://example.com/a.png\n", field="media"),
    "send-at-words": cli(*SEND, "--to", TO, "--send-at", "tomorrow", field="send_at"),
    "send-at-past": cli(*SEND, "--to", TO, "--send-at", "2020-01-01T00:00:00Z", field="send_at"),
    "valid-for-zero": cli(*SEND, "--to", TO, "--valid-for", "0", field="valid_for"),
    # argparse: one line, the option named, no usage block
    "kind-pigeon": cli(*SEND, "--to", TO, "--kind", "pigeon", field="--kind"),
    "priority-high": cli(*SEND, "--to", TO, "--priority", "high", field="--priority"),
    "valid-for-abc": cli(*SEND, "--to", TO, "--valid-for", "abc", field="--valid-for"),
    "schedule-mode-pigeon": cli(*SEND, "--to", TO, "--schedule-mode", "pigeon", field="--schedule-mode"),
    "to-missing": cli(*SEND, field="--to"),
    "unknown-option": cli(*SEND, "--to", TO, "--colour", "red", field="--colour"),
    "unknown-command": cli("pigeon", field="COMMAND", stores=False),
    "worker-processes-0": cli("worker", "--processes", "0", field="--processes", stores=False),
    "worker-threads-abc": cli("worker", "--threads", "abc", field="--threads", stores=False),
    "worker-unknown-queue": cli("worker", "--queues", "nope", field="--queues", stores=False),
    "web-port-abc": cli("web", "--port", "abc", field="--port", stores=False),
    "web-port-70000": cli("web", "--port", "70000", field="--port", stores=False),
    "simulator-port-0": cli("simulator", "--port", "0", field="--port", stores=False),
    # environment variables, named
    "env-log-format-yaml": cli(*SEND, "--to", TO, field="SENDQ_LOG_FORMAT", env={"SENDQ_LOG_FORMAT": "yaml"},
                               stores=False),
    "env-log-level": cli(*SEND, "--to", TO, field="SENDQ_LOG_LEVEL", env={"SENDQ_LOG_LEVEL": "loud"}, stores=False),
    "env-database-url-bogus": cli(*SEND, "--to", TO, field="DATABASE_URL", env={"DATABASE_URL": "bogus://x"},
                                  stores=False),
    "env-redis-url-http": cli(*SEND, "--to", TO, field="REDIS_URL", env={"REDIS_URL": "http://x"}, stores=False),
    "env-metrics-port": cli("worker", field="SENDQ_METRICS_PORT", env={"SENDQ_METRICS_PORT": "abc"}, stores=False),
    "env-rate-limits": cli(*SEND, "--to", TO, field="SENDQ_RATE_LIMITS", env={"SENDQ_RATE_LIMITS": "{"},
                           stores=False),
    "env-simulator-too": cli("simulator", field="SENDQ_LOG_FORMAT", env={"SENDQ_LOG_FORMAT": "yaml"}, stores=False),
    # bulk updates, opt-outs, limits
    "bulk-number-short": cli("bulk-update", "--profile", PROFILE, "--numbers", "+12", field="numbers"),
    "bulk-number-arabic-indic": cli("bulk-update", "--profile", PROFILE, "--numbers", f"{TO},{ARABIC_INDIC}",
                                    field="numbers"),
    "bulk-profile": cli("bulk-update", "--profile", "not-a-uuid", "--numbers", TO, field="profile"),
    "bulk-profile-newline": cli("bulk-update", "--profile", PROFILE + "\n", "--numbers", TO, field="profile"),
    "optout-number-newline": cli("optouts", "add", TO + "\n", "--scope", FROM, field="number"),
    "optout-number-fullwidth": cli("optouts", "add", FULLWIDTH, "--scope", PROFILE, field="number"),
    "optout-scope-newline": cli("optouts", "add", TO, "--scope", "sendq\n", field="scope"),
    "optout-remove-short": cli("optouts", "remove", "+12", "--scope", FROM, field="number"),
    "limits-sender-short": cli("limits", "set", "+12", "5", field="sender", stores=False),
    # campaigns
    "csv-missing": cli("campaign", "create", "--csv", "absent.csv", "--from", FROM, "--template", "Hi",
                       field="--csv"),
    "csv-not-utf8": campaign(field="--csv", csv="phone,first_name\n+13125550010,Jos\xe9\n".encode("latin-1")),
    "csv-not-utf8-late": campaign(field="--csv", csv=(GOOD_CSV * 2000).encode() + b"+13125550012,\xff\n"),
    "csv-cell-too-large": campaign(field="--csv", csv=f"phone,first_name\n+13125550010,{'x' * 200_000}\n"),
    "csv-template-column-missing": campaign(field="template", template="Hi {last_name}"),
    "csv-no-phone-column": campaign(field="csv", csv="name\nAnn\n", template="Hi {name}"),
    "csv-phone-column-absent": campaign("--phone-column", "mobile", field="phone_column"),
    "campaign-template-escape": campaign(field="template", template="Hi {first_name}\x1b"),
    "campaign-from-short": cli("campaign", "create", "--csv", "people.csv", "--from", "+12", "--template", "Hi",
                               field="from", files={"people.csv": GOOD_CSV}),
    "campaign-rate-cap-abc": campaign("--rate-cap", "abc", field="--rate-cap"),
    "campaign-errors-unwritable": campaign("--errors", "no/such/folder/errors.csv", field="--errors"),
}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OURS and not k.startswith("SENDQ_")}
    return {**env, **extra}


def _run(case: Cli, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, content in case.files.items():
        target = cwd / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    return subprocess.run([*SENDQ, *case.args], cwd=cwd, env={**env, **case.env}, capture_output=True, text=True,
                          timeout=60)


def _assert_refused(done: subprocess.CompletedProcess[str], case: Cli) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # one line: no usage block, no traceback, no log record
    assert lines[0].startswith("sendq: error: "), lines[0]
    assert case.field in lines[0], lines[0]
    assert "usage:" not in done.stderr and "Traceback" not in done.stderr


def _left_in(folder: Path) -> list[str]:
    """Processes still running in (or naming) ``folder``: an embedded Redis would be one."""
    found = []
    for process in psutil.process_iter(["pid", "name", "cwd", "cmdline"]):
        info = process.info
        where = " ".join([info.get("cwd") or "", *(info.get("cmdline") or [])])
        if str(folder) in where and process.pid != os.getpid():
            found.append(f"{info['pid']} {info['name']}")
    return found


def _redis_servers() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if (p.info.get("name") or "").startswith("redis-server")}


@pytest.mark.parametrize("case", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_the_cli_refuses_on_embedded_defaults_before_creating_anything(case: Cli, tmp_path: Path):
    before = {p.name for p in tmp_path.iterdir()}
    servers = _redis_servers()

    done = _run(case, tmp_path, _clean_env())

    _assert_refused(done, case)
    created = {p.name for p in tmp_path.iterdir()} - before - set(case.files)
    assert not created, f"a refused command created {created}"
    assert not (tmp_path / "sendq.db").exists() and not (tmp_path / ".sendq").exists()
    # The embedded Redis runs detached (its parent is init), in the folder of its snapshot, ./.sendq: a server
    # started by the command would be found there.
    assert _left_in(tmp_path) == []
    assert [pid for pid in _redis_servers() - servers if str(tmp_path) in _where(pid)] == []


def _where(pid: int) -> str:
    try:
        process = psutil.Process(pid)
        return " ".join([process.cwd(), *process.cmdline()])
    except psutil.Error:
        return ""


def _counts(url: str) -> dict[str, int]:
    from worker.store import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in TABLES}
    finally:
        engine.dispose()


@pytest.fixture
def services_env(base_settings: Settings) -> dict[str, str]:
    return _clean_env(REDIS_URL=base_settings.redis_url or "", DATABASE_URL=base_settings.database_url,
                      SENDQ_NAMESPACE=base_settings.namespace, TELNYX_API_KEY="KEY-bad-input",
                      SENDQ_RATE_LIMITS=json.dumps(base_settings.rate_limits))


STORED = {name: case for name, case in CLI_CASES.items() if case.stores}


@pytest.mark.parametrize("case", STORED.values(), ids=STORED.keys())
def test_the_cli_refuses_on_services_and_stores_nothing(case: Cli, tmp_path: Path, services_env: dict[str, str],
                                                        base_settings: Settings):
    before = _counts(base_settings.database_url)

    done = _run(case, tmp_path, services_env)

    _assert_refused(done, case)
    assert _counts(base_settings.database_url) == before
    assert not (tmp_path / ".sendq").exists()


# -- the Python API --------------------------------------------------------------------------------------

def _send(to: Any = TO, **options: Any) -> Callable[[Producer], Any]:
    return lambda producer: producer.send(to, **{"from_": FROM, "text": "hi", **options})


ROWS = [{"phone": "+13125550010", "first_name": "Ann"}]
API_CASES: dict[str, tuple[Callable[[Producer], Any], str]] = {
    "to-too-short": (_send("+12"), "to"),
    "to-trailing-newline": (_send(TO + "\n"), "to"),
    "to-arabic-indic": (_send(ARABIC_INDIC), "to"),
    "to-an-int": (_send(13125550002), "to"),
    "to-group-duplicate": (_send([TO, TO], kind="group_mms"), "to"),
    "from-newline": (_send(from_="sendq\n", profile=PROFILE), "from"),
    "from-an-int": (_send(from_=13125550001), "from"),
    "text-nul": (_send(text="hi\x00there"), "text"),
    "text-an-int": (_send(text=5), "text"),
    "valid-for-true": (_send(valid_for=True), "valid_for"),
    "send-at-an-int": (_send(send_at=12345), "send_at"),
    "media-a-string": (_send(media_urls="https://example.com/a.png"), "media"),
    "idempotency-key-an-int": (_send(idempotency_key=7), "idempotency_key"),
    "bulk-number": (lambda p: p.bulk_update(PROFILE, ["+12"]), "numbers"),
    "bulk-profile-newline": (lambda p: p.bulk_update(PROFILE + "\n", [TO]), "profile"),
    "campaign-template-nul": (lambda p: p.campaign(ROWS, template="Hi\x00 {first_name}", from_=FROM), "template"),
    "campaign-from-short": (lambda p: p.campaign(ROWS, template="Hi", from_="+12"), "from"),
    "optout-pair-fullwidth": (lambda p: check_pair(FULLWIDTH, PROFILE), "number"),
    "optout-scope-tab": (lambda p: check_pair(TO, "send\tq"), "scope"),
}


@pytest.fixture
def producer(base_settings: Settings) -> Iterator[Producer]:
    with Producer.connect(base_settings) as made:
        yield made


@pytest.mark.parametrize(("call", "field_name"), API_CASES.values(), ids=API_CASES.keys())
def test_the_python_api_raises_validation_error_naming_the_field(call: Callable[[Producer], Any], field_name: str,
                                                                  producer: Producer, base_settings: Settings):
    before = _counts(base_settings.database_url)

    with pytest.raises(ValidationError) as caught:
        call(producer)

    assert isinstance(caught.value, SendqError)
    assert caught.value.field == field_name
    assert "\n" not in str(caught.value)
    assert _counts(base_settings.database_url) == before


@pytest.mark.parametrize(("call", "field_name"), [
    (lambda: producers.send("+12", from_=FROM, text="hi"), "to"),
    (lambda: producers.send(TO, from_=FROM, text="hi", kind="pigeon"), "kind"),
    (lambda: producers.bulk_update(PROFILE, [ARABIC_INDIC]), "numbers"),
], ids=["send", "send-kind", "bulk-update"])
def test_the_module_functions_refuse_before_connecting(call: Callable[[], Any], field_name: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    for name in OURS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(producers, "_default", None)

    with pytest.raises(ValidationError) as caught:
        call()

    assert caught.value.field == field_name
    assert list(tmp_path.iterdir()) == []
    assert producers._default is None


@pytest.mark.parametrize(("variable", "value"), [
    ("SENDQ_LOG_FORMAT", "yaml"), ("DATABASE_URL", "bogus://x"), ("DATABASE_URL", "postgresql://h:port/db"),
    ("REDIS_URL", "http://x"), ("SENDQ_SENDING_LEASE_S", "0"), ("SENDQ_LOG_LEVEL", "loud"),
])
def test_settings_name_the_bad_variable(variable: str, value: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError) as caught:
        Settings.from_env()

    assert caught.value.field == variable
    assert "\n" not in str(caught.value)
    assert "port/db" not in str(caught.value)  # a URL may carry a password: only its scheme is repeated


# -- rows: refused one at a time, never reaching a message -------------------------------------------------

def test_control_characters_in_a_cell_refuse_that_row_only(tmp_path: Path, services_env: dict[str, str],
                                                           base_settings: Settings):
    rows = ("phone,first_name\n"
            "+13125550010,Ann\n"
            "+13125550011,B\x00b\n"
            "+13125550012,\"Multi\nline\"\n"
            "+13125550013\x00,Cy\n"
            " +13125550014 ,Dee\n"
            f"{ARABIC_INDIC},Eve\n"
            "+13125550015,Fay\x1b\n")
    (tmp_path / "people.csv").write_text(rows, encoding="utf-8")

    done = subprocess.run([*SENDQ, "campaign", "create", "--csv", "people.csv", "--from", FROM, "--template",
                           "Hi {first_name}", "--json"], cwd=tmp_path,
                          env=services_env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["rows_read"], result["rows_invalid"], result["recipients"]) == (7, 4, 3)
    errors = (tmp_path / "people.csv.errors.csv").read_text(encoding="utf-8").splitlines()
    assert errors[0] == "line,phone,field,error"
    assert [line.split(",")[:3] for line in errors[1:]] == [
        ["3", "+13125550011", "first_name"], ["6", "+13125550013\\x00", "phone"],
        ["8", ARABIC_INDIC, "phone"], ["9", "+13125550015", "first_name"],
    ]
    from worker.store import create_engine

    engine = create_engine(base_settings.database_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.select(campaign_recipients.c.phone, campaign_recipients.c.text)).all()
    finally:
        engine.dispose()
    assert sorted(stored) == [("+13125550010", "Hi Ann"), ("+13125550012", "Hi Multi\nline"),
                              ("+13125550014", "Hi Dee")]


# -- sendq demo: its embedded Redis does not outlive it ------------------------------------------------------

def test_the_demo_stops_its_embedded_redis(tmp_path: Path):
    servers = _redis_servers()
    done = subprocess.run([*SENDQ, "demo"], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True,
                          timeout=240)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "graceful shutdown failed" not in done.stderr
    assert _left_in(tmp_path) == []
    # Its server runs detached in a temporary folder of the demo's own (sendq-demo-...).
    assert [pid for pid in _redis_servers() - servers if "sendq-demo-" in _where(pid)] == []
