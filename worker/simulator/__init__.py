"""A local stand-in for the Telnyx Messaging API v2, for tests, benchmarks and ``sendq demo``.

It serves the API under ``/v2`` with Telnyx-shaped bodies and errors, honours ``Idempotency-Key`` as
Telnyx documents it, and sends Ed25519-signed ``message.sent`` / ``message.finalized`` webhooks. A
control API under ``/_sim/`` exposes the truth (every message, its outcome, arrival times) to tests.
"""

from worker.simulator.app import create_app
from worker.simulator.core import Simulator, SimulatorConfig

__all__ = ["Simulator", "SimulatorConfig", "create_app"]
