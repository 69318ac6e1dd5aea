"""The reference for bench/overhead.py: a bare dramatiq actor that does only sendq's HTTP POST.

Same broker (Redis), same httpx POST with bearer auth and an Idempotency-Key, no store, no limiter, no
status tracking. Run by dramatiq's own CLI: ``dramatiq bench.bare_actor --processes P --threads T``.
Configuration comes from the environment because that is how dramatiq's CLI loads a module.
"""

import os
import threading

import dramatiq
import httpx
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["REDIS_URL"], namespace=os.environ["BARE_NAMESPACE"])
dramatiq.set_broker(broker)
_local = threading.local()


def _client() -> httpx.Client:
    if not hasattr(_local, "client"):
        _local.client = httpx.Client(timeout=10)
    return _local.client


@dramatiq.actor(queue_name="bare", max_retries=0)
def post(message_id: str, body: dict) -> None:
    response = _client().post(os.environ["BARE_URL"], json=body, headers={
        "Authorization": "Bearer KEY-bench", "Idempotency-Key": message_id})
    response.raise_for_status()
