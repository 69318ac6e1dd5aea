"""Running a simulator in-process for a test, with the timings tests use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from worker.serving import ServerThread
from worker.simulator import Simulator, SimulatorConfig, create_app

#: The simulator's timings for tests: fast lifecycles and webhook retries.
FAST = {"sent_delay_s": 0.02, "final_delay_s": 0.02, "webhook_retry_base_s": 0.05}


@contextlib.contextmanager
def running_simulator(config: SimulatorConfig) -> Iterator[Simulator]:
    sim = Simulator(config)
    with ServerThread(create_app(sim)) as server:
        sim.url = server.url
        yield sim
