"""Typed settings, read from ``BATCHQ_*`` environment variables (or a ``.env`` file).

This is the only module that reads the environment. ``get_settings()`` caches one instance per
process; tests and the CLI call ``get_settings.cache_clear()`` after changing the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import orjson
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from batchq.domain.health import BreakerPolicy
from batchq.domain.redis_url import is_sentinel, parse_sentinel_url
from batchq.domain.routing import Route

MB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCHQ_", env_file=".env", extra="ignore")

    # Where state lives: redis://, rediss://, unix:// or sentinel:// (batchq/domain/redis_url.py)
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The Redis client: connect and read timeouts, and how long a failed command is retried in all.
    # The API answers 503 (with Retry-After) once its budget is spent; a worker rides out a restart.
    redis_connect_timeout_s: float = Field(default=0.5, gt=0)
    redis_socket_timeout_s: float = Field(default=5.0, gt=0)
    redis_api_retry_s: float = Field(default=0.5, ge=0)
    redis_worker_retry_s: float = Field(default=20.0, ge=0)
    data_dir: Path = Path("./batchq-data")

    # Who may call the API: comma-separated keys (managed keys come on top)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # The OpenAI-compatible upstream
    upstream_url: str = "http://127.0.0.1:9000"
    upstream_api_key: str | None = None
    upstream_timeout_s: float = Field(default=600.0, gt=0)
    upstream_connect_timeout_s: float = Field(default=10.0, gt=0)
    upstream_max_attempts: int = Field(default=5, ge=1, le=50)
    upstream_max_retry_time_s: float = Field(default=900.0, gt=0)
    upstream_max_throttled_s: float = Field(default=1800.0, gt=0)  # a line waits through 429s this long at most
    upstream_backoff_base_s: float = Field(default=0.5, ge=0)
    upstream_backoff_max_s: float = Field(default=60.0, ge=0)
    upstream_max_in_flight: int = Field(default=256, ge=0)
    upstream_rpm: int = Field(default=0, ge=0)
    upstream_adaptive: bool = True  # false: every route keeps its max_in_flight (mode fixed)
    # each route's default (Route.mode)
    upstream_mode: Literal["throughput", "aimd", "gradient", "fixed"] = "throughput"
    upstream_tolerance: float = Field(default=1.05, ge=1.0, le=10.0)  # latency inflation batch traffic may cause
    upstreams: Annotated[list[Route], NoDecode] = Field(default_factory=list)  # JSON list of routes
    # Route health: down outcomes in a row (no answer, 502/503/504) that stop sending on a route
    # (0: no breaker), one probe per probe_s while it is down, and how long lines wait for it.
    upstream_breaker_failures: int = Field(default=5, ge=0)
    upstream_probe_s: float = Field(default=1.0, gt=0)
    upstream_max_outage_s: float = Field(default=1800.0, gt=0)
    upstream_outage_waiters: int = Field(default=4, ge=1)  # lines that wait in worker threads per down route

    # Limits
    max_file_bytes: int = Field(default=200 * MB, gt=0)
    max_lines: int = Field(default=50_000, gt=0)
    max_line_bytes: int = Field(default=4 * MB, gt=0)
    max_validation_errors: int = Field(default=100, gt=0)
    file_ttl_days: int = Field(default=30, gt=0)

    # The Uploads API: a part's size cap, and how long an upload stays open
    max_part_bytes: int = Field(default=64 * MB, gt=0)
    upload_ttl_s: int = Field(default=3600, gt=0)

    # Idempotency-Key: how long a duplicate waits for the first request's answer (then 409 with
    # Retry-After), and how long a key stays taken by a request whose API process died
    idempotency_wait_s: float = Field(default=10.0, ge=0)
    idempotency_lock_s: int = Field(default=300, ge=1)

    # Per API key (0: no limit)
    api_rpm_per_key: int = Field(default=600, ge=0)
    max_active_batches_per_key: int = Field(default=100, ge=0)
    max_enqueued_lines_per_key: int = Field(default=1_000_000, ge=0)

    # Workers
    worker_concurrency: int = Field(default=128, ge=1)
    visibility_timeout_s: int = Field(default=7200, ge=60)
    task_events: bool = False  # Celery task events from the start (Flower switches them on itself)
    # a line's lease (and its upstream slot's expiry): its worker's heartbeat renews both three times
    # per lease, so a killed worker's lines are sent again, and its slots freed, this long after it died
    line_lease_s: int = Field(default=10, ge=2)
    cancel_grace_s: float = Field(default=30.0, ge=0)
    watchdog_interval_s: float = Field(default=5.0, gt=0)
    max_requeues: int = Field(default=3, ge=0)
    finalize_retry_max_s: float = Field(default=60.0, gt=0)  # longest wait between tries of a failing finalize
    orphan_grace_s: float = Field(default=3600.0, ge=1)  # a file on disk with no record is removed this old
    queue_depth: int = Field(default=64, ge=1)  # granted line tasks kept in the Celery queue (scheduler.py)
    urgent_share: float = Field(default=0.25, ge=0, le=1)  # a batch in this last part of its window goes first

    # Webhooks: an event on every terminal status, signed when a secret is set
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=12, ge=1)

    # Operations
    log_level: str = "INFO"
    log_json: bool = True  # one JSON object per line on stdout; false: plain text
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)  # each worker's /metrics; 0: off

    # Web dashboard at /ui (off unless a secret is set; see docs/ui.md)
    ui_secret: str | None = Field(default=None, min_length=32)  # signs the session cookie
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)  # keys that see the operators page

    # What POST /batches accepts
    endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
    )
    min_completion_window: str = "1h"
    max_completion_window: str = "7d"

    @field_validator("api_keys", "endpoints", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("upstreams", mode="before")
    @classmethod
    def _empty_routes(cls, value: object) -> object:
        if isinstance(value, str):
            return orjson.loads(value) if value.strip() else []
        return value

    @field_validator("redis_url")
    @classmethod
    def _sentinel_form(cls, value: str) -> str:
        if is_sentinel(value):
            parse_sentinel_url(value)  # a malformed Sentinel URL fails here, saying what is wrong
        return value

    @field_validator("upstream_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def breaker(self) -> BreakerPolicy:
        return BreakerPolicy(
            self.upstream_breaker_failures, self.upstream_probe_s, self.upstream_max_outage_s,
            self.upstream_outage_waiters,
        )  # fmt: skip

    def routes(self) -> list[Route]:
        """The configured routes, or one route from the ``BATCHQ_UPSTREAM_*`` settings."""
        if self.upstreams:
            return self.upstreams
        default = Route(
            name="default", url=self.upstream_url, api_key=self.upstream_api_key,
            max_in_flight=self.upstream_max_in_flight, rpm=self.upstream_rpm,
        )  # fmt: skip
        return [default]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
