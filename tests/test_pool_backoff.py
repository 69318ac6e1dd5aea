"""``sendq worker``'s supervisor: a child that keeps dying is started again with exponential backoff, one log
line per exit; a child that lived long enough is replaced at once. Real spawned processes."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pool_support
import pytest

from worker.pool import MAX_RESPAWN_DELAY_S, Pool, respawn_delay
from worker.settings import Settings


def test_respawn_delays_double_from_1_s_to_30_s() -> None:
    # The first exit in a row is replaced at once; children that keep dying wait 1 s, 2 s, ... at most 30 s.
    assert [respawn_delay(n) for n in range(1, 10)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert respawn_delay(10_000) == MAX_RESPAWN_DELAY_S


class Running:
    def __init__(self, pool: Pool, starts: Path) -> None:
        self.pool = pool
        self.starts = starts
        self.thread = threading.Thread(target=pool.run, name="pool-under-test")

    def start_times(self) -> list[float]:
        text = self.starts.read_text(encoding="utf-8") if self.starts.exists() else ""
        return [float(line.split()[1]) for line in text.splitlines()]


@pytest.fixture
def run_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:  # type: ignore[type-arg]
    starts = tmp_path / "starts"
    monkeypatch.setenv(pool_support.STARTS_FILE, str(starts))
    running: list[Running] = []

    def start(target, **attributes: float) -> Running:  # type: ignore[no-untyped-def]
        pool = Pool(Settings(), processes=1, threads=1, queues=["default"], target=target)
        for name, value in attributes.items():
            setattr(pool, name, value)
        runner = Running(pool, starts)
        running.append(runner)
        runner.thread.start()
        return runner

    yield start
    for runner in running:
        runner.pool.stop()
        runner.thread.join(30)
        assert not runner.thread.is_alive()


def test_a_child_that_keeps_dying_is_respawned_with_backoff_and_one_line_per_exit(
        run_pool, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="worker.pool")
    runner = run_pool(pool_support.exit_at_once)
    time.sleep(8.0)
    runner.pool.stop()
    runner.thread.join(30)
    starts = runner.start_times()
    # Without backoff: a start per 0.5 s poll and spawn, 10 or more in 8 s. With it: 0, +0, +1, +2, +4 s (plus
    # spawn and poll time).
    assert 3 <= len(starts) <= 6, starts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Each gap is its delay, plus up to two 0.5 s polls and a child's start (a spawned interpreter, 0.3-1 s).
    for n, gap in enumerate(gaps, start=1):  # gap n follows the n-th exit in a row
        assert respawn_delay(n) - 0.05 <= gap <= respawn_delay(n) + 2.5, (n, gaps)
    exits = [r.getMessage() for r in caplog.records if "exited with 3" in r.getMessage()]
    assert len(exits) in (len(starts) - 1, len(starts)), exits  # one line per exit, none while waiting
    assert exits[0].endswith("; starting another"), exits
    assert "starting another in 1 s" in exits[1] and "starting another in 2 s" in exits[2], exits


def test_a_child_that_lived_long_enough_is_replaced_at_once(run_pool, caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="worker.pool")
    monkeypatch.setenv("SENDQ_TEST_POOL_LIFETIME_S", "1.5")
    runner = run_pool(pool_support.exit_after_a_while, healthy_after_s=1.0)
    time.sleep(7.0)
    runner.pool.stop()
    runner.thread.join(30)
    starts = runner.start_times()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) >= 3 and all(gap < 3.0 for gap in gaps), gaps  # lifetime + spawn, no backoff added
    exits = [r.getMessage() for r in caplog.records if "exited with 4" in r.getMessage()]
    assert exits and all(message.endswith("; starting another") for message in exits), exits
