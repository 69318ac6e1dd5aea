"""Configuration, read from the environment once at process start and passed down explicitly.

This is the only module that reads ``os.environ``. Names follow CONTRACT.md: the Telnyx SDK's own
variables (``TELNYX_API_KEY``, ``TELNYX_PUBLIC_KEY``, ``TELNYX_BASE_URL``), the usual ``REDIS_URL`` and
``DATABASE_URL``, and ``SENDQ_*`` for everything else.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.queues import Target

DEFAULT_TELNYX_BASE_URL = "https://api.telnyx.com/v2"
DEFAULT_DATABASE_URL = "sqlite:///./sendq.db"
#: The stores sendq runs on (CONTRACT.md): SQLite and PostgreSQL, with any driver SQLAlchemy names after a ``+``.
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")
REDIS_SCHEMES = ("redis", "rediss", "unix")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Fields whose value an error message must not repeat.
_SECRET_FIELDS = ("telnyx_api_key",)


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
    #: Verified webhooks arriving within this many ms of a batch's first one are deduplicated in one Redis round
    #: trip and enqueued as one ``apply_events`` job; each waits for its batch before its 2xx (group commit).
    webhook_batch_ms: float = Field(default=5.0, ge=0)
    #: A batch this large is flushed without waiting for the rest of its window.
    webhook_batch_max: int = Field(default=100, ge=1)

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
    #: A `sending` message this old lost its worker mid-send (a job is stopped after 120 s): the scheduler then
    #: applies ``ambiguous_policy`` to it.
    sending_lease_s: int = Field(default=300, ge=1)
    #: "retry": back to `queued` and re-sent with the same Idempotency-Key, so Telnyx answers a repeat with the
    #: first answer instead of sending twice; "fail": `failed` with the error code "ambiguous".
    ambiguous_policy: Literal["retry", "fail"] = "retry"
    #: A `submitted` or `sent` message with no final webhook after this long is fetched from Telnyx
    #: (``GET /messages/{id}``) and what Telnyx says is applied.
    finalize_after_s: int = Field(default=900, ge=1)
    scheduler_interval_s: float = 0.5
    #: Scheduled messages are handed to the queue this long before they are due, as delayed jobs, so that
    #: a burst due in the same second is already in Redis when its second comes.
    schedule_lookahead_s: float = 2.0
    #: Validity of urgent messages that name none (a 2FA code is worthless after a few minutes).
    urgent_valid_for_s: int = 600
    #: How often an idle worker asks Redis for new jobs; it bounds the pickup latency of a quiet queue.
    worker_poll_ms: int = 100
    #: A worker process silent this long counts as dead, and the jobs it held are redelivered at the next broker
    #: maintenance (dramatiq's default: 60 000). A live worker stalled longer gets its jobs redelivered too; the
    #: conditional claim keeps that from sending twice.
    heartbeat_timeout_ms: int = Field(default=15_000, ge=1_000)
    #: Broker calls in a million that run that maintenance (dramatiq's default: 1 000).
    maintenance_chance: int = Field(default=10_000, ge=0, le=1_000_000)

    #: Messages per second by sender type (long_code, toll_free, short_code, alphanumeric, number_pool) or by
    #: exact sender (a profile id for number pools), as a JSON object; the exact sender wins. Unset: Telnyx's
    #: defaults (worker.limits.DEFAULT_MPS).
    rate_limits: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict,
                                                              validation_alias="SENDQ_RATE_LIMITS")
    #: Account-wide messages per second, ``{"sms": 50, "mms": 15}`` (either key may be left out).
    account_mps: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict,
                                                              validation_alias="SENDQ_ACCOUNT_MPS")
    #: A worker sleeps until its reserved slot when it is at most this far away; a later slot is not reserved
    #: and the job is re-enqueued with that delay instead (a sleeping thread is a thread not sending).
    limiter_max_wait_s: float = Field(default=1.0, ge=0)
    #: What a message costs the limiter: its SMS parts ("segments", as carriers meter) or 1 ("message").
    limiter_cost: Literal["segments", "message"] = "segments"
    #: Messages a sender may send back to back before strict spacing applies (GCRA tolerance); 1 = strict.
    limiter_burst: float = Field(default=1.0, ge=1)
    #: Share of each sender's rate kept for urgent messages: while urgent traffic for a sender is active, normal
    #: and bulk messages get at most (1 - share) of its rate.
    urgent_share: float = Field(default=0.2, ge=0, lt=1)
    #: How long after an urgent message (sent or waiting) its sender counts as having urgent traffic.
    urgent_active_s: float = Field(default=5.0, gt=0)

    #: The application's dramatiq actor that receives every inbound message, as ``actor_name`` or
    #: ``queue_name:actor_name`` (queue ``hooks`` by default); unset: no hook (see worker.hooks).
    inbound_actor: str | None = None
    #: The same for the record of every message that reaches a final status.
    status_actor: str | None = None
    #: How often ``sendq scheduler`` fetches the opt-outs Telnyx added since the last fetch
    #: (``GET /messaging_optouts``, ``created_at[gte]``) into the suppression list; 0 turns it off.
    optout_sync_interval_s: float = Field(default=300.0, ge=0)

    log_level: str = "INFO"
    #: ``text``: one readable line per event; ``json``: one JSON object per line (for log shippers).
    log_format: Literal["text", "json"] = "text"
    #: Where ``sendq worker`` and ``sendq scheduler`` serve ``/metrics`` and ``/healthz``; unset: not served
    #: (``sendq web`` serves both on its own port). Deployments set it; the Procfile's processes share a host.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: prometheus_client's own switch: every process writes samples here and /metrics aggregates them.
    #: It must be in the environment before prometheus_client is imported, so it is read, not set, here.
    prometheus_multiproc_dir: str | None = Field(default=None, validation_alias=_env("PROMETHEUS_MULTIPROC_DIR"))

    @classmethod
    def from_env(cls) -> Settings:
        """The settings from the environment; a bad variable raises :class:`worker.errors.ValidationError`
        naming it (the CLI's exit 2), not pydantic's multi-line report."""
        try:
            return cls()
        except pydantic.ValidationError as exc:
            raise _named_error(cls, exc) from None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        # Checked here, before anything connects, rather than by SQLAlchemy at the first connection (a traceback,
        # and after the embedded Redis is started). Only the scheme is repeated: the URL may hold a password.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        from worker.errors import ValidationError

        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme.split("+", 1)[0] not in DATABASE_SCHEMES:
            raise ValidationError("DATABASE_URL", f"must be a sqlite:/// or postgresql:// URL (got scheme {scheme!r})")
        try:
            make_url(value)
        except (ArgumentError, ValueError):
            raise ValidationError("DATABASE_URL", f"not a valid {scheme}:// URL (a port must be a number)") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        from worker.errors import ValidationError

        if not value:
            return None  # REDIS_URL= (set but empty) means unset, as before: the embedded server
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in REDIS_SCHEMES:
            raise ValidationError("REDIS_URL", f"must be a redis://, rediss:// or unix:// URL (got scheme {scheme!r})")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        from worker.errors import ValidationError

        if value.upper() not in LOG_LEVELS:
            raise ValidationError("SENDQ_LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)} (got {value!r})")
        return value.upper()

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _check_rate_limits(cls, value: Any) -> dict[str, float]:
        # Raises worker.errors.ValidationError (not a pydantic error) naming SENDQ_RATE_LIMITS: CLI exit 2.
        from worker.limits import parse_rate_limits

        return parse_rate_limits(value)

    @field_validator("account_mps", mode="before")
    @classmethod
    def _check_account_mps(cls, value: Any) -> dict[str, float]:
        from worker.limits import parse_account_mps

        return parse_account_mps(value)

    @field_validator("inbound_actor", "status_actor")
    @classmethod
    def _check_hook(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Raises worker.errors.ValidationError naming the variable: CLI exit 2.
        assert info.field_name is not None  # a field validator always runs for a named field
        Target.parse(value, f"SENDQ_{info.field_name.upper()}")
        return value.strip() if value and value.strip() else None

    @property
    def public_keys(self) -> list[str]:
        return [k.strip() for k in (self.telnyx_public_key or "").split(",") if k.strip()]

    def api_key(self) -> str | None:
        return self.telnyx_api_key.get_secret_value() if self.telnyx_api_key else None


def variable_of(cls: type[BaseSettings], name: str) -> str:
    """The environment variable that sets field ``name``."""
    field = cls.model_fields.get(name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, AliasChoices):
        alias = alias.choices[0]
    if isinstance(alias, str):
        return alias
    return f"{cls.model_config.get('env_prefix', '')}{name}".upper()


def _named_error(cls: type[BaseSettings], exc: pydantic.ValidationError) -> Exception:
    """pydantic's report as one :class:`worker.errors.ValidationError` naming the first bad variable."""
    from worker.errors import ValidationError

    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    variable = variable_of(cls, name) if name in cls.model_fields else name.upper() or "environment"
    reason = str(first["msg"])
    if name not in _SECRET_FIELDS and "input" in first:
        shown = repr(first["input"])
        reason += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
    return ValidationError(variable, reason)
