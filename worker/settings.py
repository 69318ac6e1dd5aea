"""Configuration, read from the environment once at process start and passed down explicitly.

This is the only module that reads ``os.environ``. Names follow CONTRACT.md: the Telnyx SDK's own
variables (``TELNYX_API_KEY``, ``TELNYX_PUBLIC_KEY``, ``TELNYX_BASE_URL``), the usual ``REDIS_URL`` and
``DATABASE_URL``, and ``SENDQ_*`` for everything else.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TELNYX_BASE_URL = "https://api.telnyx.com/v2"
DEFAULT_DATABASE_URL = "sqlite:///./sendq.db"


def _env(name: str) -> AliasChoices:
    # Accept the field name too, so tests and callers can build Settings(redis_url=...) directly.
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    """Everything sendq can be configured with. Immutable; build it with :meth:`from_env`."""

    model_config = SettingsConfigDict(env_prefix="SENDQ_", frozen=True, extra="ignore", populate_by_name=True)

    telnyx_api_key: SecretStr | None = Field(default=None, validation_alias=_env("TELNYX_API_KEY"))
    #: Base64 Ed25519 public keys, comma-separated so a key can be rotated without downtime.
    telnyx_public_key: str | None = Field(default=None, validation_alias=_env("TELNYX_PUBLIC_KEY"))
    telnyx_base_url: str = Field(default=DEFAULT_TELNYX_BASE_URL, validation_alias=_env("TELNYX_BASE_URL"))
    #: None means: start (or join) the embedded Redis server.
    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL"))
    database_url: str = Field(default=DEFAULT_DATABASE_URL, validation_alias=_env("DATABASE_URL"))

    #: Where the embedded Redis keeps its socket and snapshot; every sendq process started in the same
    #: directory shares the one server.
    embedded_redis_path: str = ".sendq/redis.db"
    #: Prefix of every Redis key sendq and its broker write, so several deployments can share a server.
    namespace: str = "sendq"

    #: Per-message webhook URL sent to Telnyx; unset means the messaging profile's URL is used.
    webhook_url: str | None = None
    webhook_tolerance_s: int = 300
    webhook_max_body_bytes: int = 256 * 1024
    #: How long a webhook event id is remembered in Redis; the store remembers it for good.
    webhook_dedupe_ttl_s: int = 7 * 24 * 3600

    http_timeout_s: float = 10.0
    http_connect_timeout_s: float = 5.0
    #: Attempts of one Telnyx call inside a job (tenacity), before the job itself is retried.
    http_attempts: int = 3
    #: Job-level retries (dramatiq) after the in-call attempts are spent; then the message is `failed`.
    send_max_retries: int = 5
    send_min_backoff_ms: int = 1_000
    send_max_backoff_ms: int = 300_000
    #: Numbers per ``POST /messaging_numbers_bulk_updates`` order; a longer bulk update is posted as several orders.
    bulk_chunk_size: int = Field(default=500, ge=1)

    #: A `queued` message untouched this long is re-enqueued by the scheduler (its job may be lost).
    requeue_after_s: int = 300
    scheduler_interval_s: float = 0.5
    #: Scheduled messages are handed to the queue this long before they are due, as delayed jobs, so that
    #: a burst due in the same second is already in Redis when its second comes.
    schedule_lookahead_s: float = 2.0
    #: Validity of urgent messages that name none (a 2FA code is worthless after a few minutes).
    urgent_valid_for_s: int = 600
    #: How often an idle worker asks Redis for new jobs; it bounds the pickup latency of a quiet queue.
    worker_poll_ms: int = 100

    log_level: str = "INFO"
    #: prometheus_client's own switch: every process writes samples here and /metrics aggregates them.
    #: It must be in the environment before prometheus_client is imported, so it is read, not set, here.
    prometheus_multiproc_dir: str | None = Field(default=None, validation_alias=_env("PROMETHEUS_MULTIPROC_DIR"))

    @classmethod
    def from_env(cls) -> Settings:
        return cls()

    @property
    def public_keys(self) -> list[str]:
        return [k.strip() for k in (self.telnyx_public_key or "").split(",") if k.strip()]

    def api_key(self) -> str | None:
        return self.telnyx_api_key.get_secret_value() if self.telnyx_api_key else None
