"""Queue names: sendq's own queues, and the application queues its hooks enqueue on.

A leaf: settings (which checks hook targets), hooks and the broker all read the names from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.errors import ValidationError

URGENT, DEFAULT, BULK, EVENTS = "urgent", "default", "bulk", "events"
#: Every queue sendq consumes. Urgent traffic (2FA) has its own queue so a campaign never delays it;
#: webhook events have theirs so finalization never waits behind sends.
QUEUES = (URGENT, DEFAULT, BULK, EVENTS)
QUEUE_FOR_PRIORITY = {"urgent": URGENT, "normal": DEFAULT, "bulk": BULK}
PRIORITY_FOR_QUEUE = {queue: priority for priority, queue in QUEUE_FOR_PRIORITY.items()}

#: The queue of a hook named without one.
DEFAULT_HOOK_QUEUE = "hooks"
#: dramatiq's rule for queue names, applied to actor names too.
_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9._-]*$")


@dataclass(frozen=True)
class Target:
    """Where a hook's job goes: an actor name on a queue."""

    queue_name: str
    actor_name: str

    @classmethod
    def parse(cls, value: str | None, variable: str) -> Target | None:
        """``actor`` or ``queue:actor``; None for unset. Raises ValidationError naming ``variable``."""
        if value is None or not value.strip():
            return None
        queue, _, actor = value.strip().rpartition(":")
        queue = queue or DEFAULT_HOOK_QUEUE
        if not _NAME.match(queue) or not _NAME.match(actor):
            raise ValidationError(variable, f"expected actor_name or queue_name:actor_name (got {value!r})")
        if queue in QUEUES:
            raise ValidationError(variable, f"queue {queue!r} is sendq's own; name another queue for your actor")
        return cls(queue, actor)
