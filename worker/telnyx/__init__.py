"""Telnyx Messaging API v2 client on httpx.

``TelnyxClient`` groups the operations the way the official SDK does (``client.messages.send``,
``client.optouts.list``, ...), each a typed method over one shared :class:`Transport`. The HTTP seam is
injected (``http=httpx.Client(...)``), so tests point it at the simulator or give it a ``MockTransport``.
"""

from worker.telnyx.client import TelnyxClient, Timeouts
from worker.telnyx.transport import Transport, error_for, parse_errors, retry_after

__all__ = ["TelnyxClient", "Timeouts", "Transport", "error_for", "parse_errors", "retry_after"]
