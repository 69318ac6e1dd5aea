"""The simulator's shared core: its configuration and the :class:`Simulator` every endpoint module serves.

It holds the state the endpoints share (messages, opt-outs, faults, throughput, the webhook sender) and knows
nothing of the endpoints themselves: they import it, and :mod:`worker.simulator.app` assembles them on top.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from worker.simulator.faults import FaultConfig, Faults
from worker.simulator.optout_list import OptOutList
from worker.simulator.signing import WebhookSigner
from worker.simulator.state import ORGANIZATION_ID, SimMessage, SimState
from worker.simulator.throughput import Throughput, ThroughputConfig
from worker.simulator.webhooks import WebhookSender, event

DEFAULT_KEY_SEED = "sendq-simulator"
DEFAULT_PROFILE_ID = "4001767e-ce0f-4cae-9d5f-0d5e636e7809"
#: The numbers of the default messaging profile, used when a number pool sends.
POOL_NUMBERS = ("+13125550100", "+13125550101", "+13125550102")


@dataclass
class SimulatorConfig:
    """How the simulator behaves. Everything a test may want to vary lives here."""

    webhook_url: str | None = None
    webhook_failover_url: str | None = None
    #: None accepts any bearer key; a value requires exactly that key.
    api_key: str | None = None
    key_seed: str = DEFAULT_KEY_SEED
    sent_delay_s: float = 0.05
    final_delay_s: float = 0.05
    #: Final status of each recipient, drawn by weight: {"delivered": 0.9, "delivery_failed": 0.1}.
    outcomes: dict[str, float] = field(default_factory=lambda: {"delivered": 1.0})
    #: Seed of every random choice (outcomes, faults), so a run can be repeated exactly.
    seed: int = 0
    webhook_retry_base_s: float = 0.5
    profile_id: str = DEFAULT_PROFILE_ID
    pool_numbers: tuple[str, ...] = POOL_NUMBERS
    #: Numbers the account owns beyond the seeded ones (on the default profile); more can be added at run time
    #: with ``POST /_sim/numbers``. Telnyx refuses a ``from`` the account does not own (40305).
    numbers: tuple[str, ...] = ()
    #: Accept any well-formed sender, owned or not: for benchmarks and tests that invent hundreds of senders.
    any_sender: bool = False
    #: Injected 5xx, 429, resets, timeouts and latency on /v2 (default: none).
    faults: FaultConfig = field(default_factory=FaultConfig)
    #: Per-sender and account message rates, queued as Telnyx queues them (default: unlimited).
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)


class Simulator:
    """State and behaviour shared by every route group."""

    organization_id = ORGANIZATION_ID

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.state = SimState()
        self.optouts = OptOutList()
        self.signer = WebhookSigner.from_seed(self.config.key_seed)
        self.random = random.Random(self.config.seed)
        self.started = time.monotonic()
        self.tasks: set[asyncio.Task[None]] = set()
        self.webhooks: WebhookSender | None = None
        self.url: str | None = None  # where it is served, once known (tests and the demo set it)
        self.faults = Faults(self.config.faults, default_seed=self.config.seed)
        self.throughput = Throughput(self.config.throughput)
        self._reset_hooks: list[Callable[[], None]] = [self.state.reset, self.optouts.reset, self.faults.reset,
                                                       self.throughput.reset]

    @property
    def public_key(self) -> str:
        return self.signer.public_key

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def on_reset(self, hook: Callable[[], None]) -> None:
        """Register state that ``POST /_sim/reset`` clears."""
        self._reset_hooks.append(hook)

    def reset(self) -> None:
        for hook in self._reset_hooks:
            hook()

    def pick_outcome(self) -> str:
        outcomes = self.config.outcomes
        return self.random.choices(list(outcomes), weights=list(outcomes.values()))[0]

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, keeping a reference so it is not collected mid-flight."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def emit(self, message: SimMessage, event_type: str, payload: dict[str, Any]) -> None:
        """Record an outbound event and deliver it to the message's webhook URLs."""
        envelope = event(event_type, payload)
        message.events.append(envelope)
        await self._deliver(envelope, payload)

    async def emit_inbound(self, payload: dict[str, Any]) -> None:
        await self._deliver(event("message.received", payload), payload)

    async def _deliver(self, envelope: dict[str, Any], payload: dict[str, Any]) -> None:
        urls = [u for u in (payload.get("webhook_url"), payload.get("webhook_failover_url")) if u]
        if urls and self.webhooks is not None:
            await self.webhooks.deliver(envelope, urls)
