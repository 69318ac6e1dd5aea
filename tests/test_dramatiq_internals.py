"""worker/dramatiq_internals.py was read against a range of dramatiq releases; outside it, read it again."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

from dramatiq.brokers.redis import RedisBroker

from worker.dramatiq_internals import CHECKED_BELOW, CHECKED_FROM, LOGGERS, OutageRetries

ROOT = Path(__file__).resolve().parent.parent
RECHECK = ("re-check worker/dramatiq_internals.py against this dramatiq (RedisBroker.enqueue and its dispatch "
           "script's arguments, _max_unpack_size, _should_do_maintenance, Retries.after_process_message, the "
           "logger names and message texts job_logs filters), then move CHECKED_FROM/CHECKED_BELOW and the pin "
           "in pyproject.toml")


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def test_the_installed_dramatiq_is_one_the_internals_were_checked_against():
    installed = _release(version("dramatiq"))

    assert CHECKED_FROM <= installed < CHECKED_BELOW, f"dramatiq {version('dramatiq')} is installed: {RECHECK}"


def test_pyproject_pins_dramatiq_to_the_checked_range():
    pin = re.search(r'"dramatiq\[redis\]>=([\d.]+),<([\d.]+)"', (ROOT / "pyproject.toml").read_text())

    assert pin is not None
    assert (_release(pin.group(1)), _release(pin.group(2) + ".0")) == (CHECKED_FROM, CHECKED_BELOW), RECHECK


def test_the_retries_middleware_logs_under_a_name_job_logs_filters():
    assert OutageRetries().logger.name in LOGGERS, RECHECK


def test_the_broker_internals_async_enqueue_reads_exist():
    broker = RedisBroker(url="redis://127.0.0.1:1/0", middleware=[])  # connects lazily: nothing is reached

    for name in ("_max_unpack_size", "_should_do_maintenance", "emit_before", "emit_after"):
        assert callable(getattr(broker, name, None)), f"RedisBroker.{name} is gone: {RECHECK}"
    assert "dispatch" in broker.scripts, RECHECK


def test_a_released_worker_is_one_the_dispatch_script_s_maintenance_takes_for_dead():
    broker = RedisBroker(url="redis://127.0.0.1:1/0", middleware=[])
    script = broker.scripts["dispatch"].script
    script = script.decode() if isinstance(script, bytes) else script

    assert isinstance(broker.broker_id, str), RECHECK  # name_worker replaces it
    # release_dead_worker writes the heartbeat where maintenance reads it, scored by time (0: dead long ago).
    assert 'namespace .. ":__heartbeats__"' in script, RECHECK
    assert 'redis.call("zrangebyscore", heartbeats, 0, timestamp - heartbeat_timeout)' in script, RECHECK
