"""The simulator's ASGI app: ``create_app`` serves one :class:`~worker.simulator.core.Simulator` through every
route group.

The modules, from the bottom up: leaves (``rules``, ``http``, ``signing``, ``state``, ``webhooks``), the parts
of the simulator's state that need no simulator (``faults``, ``throughput``, ``optout_list``), the simulator
itself (``core``), the endpoint modules serving it (``inventory`` and ``usage`` beneath ``messages``,
``numbers``, ``profiles``, ``optouts``, ``control``), and this module on top.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware

import worker.simulator.control as control
import worker.simulator.faults as faults
import worker.simulator.numbers as numbers
import worker.simulator.optouts as optouts
import worker.simulator.profiles as profiles
import worker.simulator.throughput as throughput
from worker.simulator.core import DEFAULT_KEY_SEED, DEFAULT_PROFILE_ID, POOL_NUMBERS, Simulator, SimulatorConfig
from worker.simulator.faults import FaultMiddleware
from worker.simulator.messages import MessageEndpoints
from worker.simulator.webhooks import WebhookSender

# The constants and the Simulator live in core; they stay importable from here, where callers long found them.
__all__ = ["DEFAULT_KEY_SEED", "DEFAULT_PROFILE_ID", "POOL_NUMBERS", "Simulator", "SimulatorConfig", "create_app"]


def create_app(simulator: Simulator | None = None) -> Starlette:
    sim = simulator or Simulator()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with WebhookSender.session() as http:
            sim.webhooks = WebhookSender(http, sim.signer, retry_base_s=sim.config.webhook_retry_base_s)
            try:
                yield
            finally:
                for task in list(sim.tasks):
                    task.cancel()

    routes = [*MessageEndpoints(sim).routes(), *optouts.routes(sim), *control.routes(sim), *faults.routes(sim.faults),
              *throughput.routes(sim.throughput, sim.elapsed), *numbers.routes(sim), *profiles.routes(sim)]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(FaultMiddleware, faults=sim.faults)])
    app.state.simulator = sim
    return app
