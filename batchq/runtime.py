"""The objects one process needs (Redis client, stores, upstream client), built from settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

import redis

from batchq.config import Settings
from batchq.domain.redis_url import redact
from batchq.execution.recovery import HeldLines, HeldLocks
from batchq.execution.upstream import Upstream
from batchq.observability.metrics import worker_metrics
from batchq.storage.apikeys import ApiKeyStore
from batchq.storage.batches import BatchStore
from batchq.storage.files import FileStore
from batchq.storage.idempotency import IdempotencyStore
from batchq.storage.identity import Deployment, DirMarker
from batchq.storage.limits import HeldSlots, RedisLimiter
from batchq.storage.locks import LockStore
from batchq.storage.quotas import Quotas
from batchq.storage.redis_client import connect
from batchq.storage.scheduler import Scheduler
from batchq.storage.uploads import UploadStore


class TaskQueue(Protocol):
    """How the API and the workers hand work to the workers (Celery, in production)."""

    def submit_batch(self, batch_id: str) -> None: ...

    def finalize_batch(self, batch_id: str, countdown: float = 0) -> None: ...

    def dispatch_batch(self, batch_id: str, lines: list[tuple[int, int, int]]) -> None:
        """One task per (index, offset, length), handed to the scheduler; the task storing the last
        line finalizes the batch."""

    def notify(self, batch_id: str, event_type: str) -> None:
        """Deliver a terminal event to the webhook, with retries (no-op without a webhook)."""

    def requeue_lines(self, batch_id: str, lines: list[tuple[int, int, int]]) -> None:
        """Tasks again for lines whose task was lost: first in their batch's next turn."""

    def queued_lines(self) -> set[tuple[str, int]]:
        """(batch id, line index) of every granted line task still in the queue."""

    def waiting_lines(self, batch_id: str) -> set[int]:
        """Line indices of the batch's tasks not granted yet (read in chunks: it may be long)."""


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    batches: BatchStore
    files: FileStore
    apikeys: ApiKeyStore
    quotas: Quotas
    scheduler: Scheduler
    idempotency: IdempotencyStore
    uploads: UploadStore
    deployment: Deployment  # Redis and the data must be one deployment before anything is deleted
    batch_locks: LockStore  # one submit or finalize of a batch at a time
    held: HeldLines = field(default_factory=HeldLines)  # the lines this process's threads hold a lease on
    locks: HeldLocks = field(default_factory=HeldLocks)  # the batch locks they hold (submit, finalize)
    slots: HeldSlots = field(default_factory=HeldSlots)  # the upstream slots they hold
    stopping: threading.Event = field(default_factory=threading.Event)  # set when the worker stops
    _upstream: Upstream | None = field(default=None, repr=False)

    @property
    def upstream(self) -> Upstream:
        if self._upstream is None:
            s = self.settings
            limiter = RedisLimiter(
                self.redis, s.upstream_adaptive, default_timeout_s=s.upstream_timeout_s, breaker=s.breaker(),
                mode=s.upstream_mode, tolerance=s.upstream_tolerance, slot_ttl_s=s.line_lease_s,
                stopping=self.stopping, held=self.slots,
            )  # fmt: skip
            self._upstream = Upstream(s, limiter, metrics=worker_metrics())
        return self._upstream


def build_runtime(settings: Settings, pool_size: int | None = None, api: bool = False) -> Runtime:
    """``api``: retry Redis only briefly (a request answers 503 rather than wait for Redis)."""
    client = connect(
        settings.redis_url, max_connections=pool_size or settings.worker_concurrency + 32,
        connect_timeout_s=settings.redis_connect_timeout_s, socket_timeout_s=settings.redis_socket_timeout_s,
        retry_s=settings.redis_api_retry_s if api else settings.redis_worker_retry_s,
    )  # fmt: skip
    deployment = Deployment(client, DirMarker(settings.data_dir), redact(settings.redis_url))
    return Runtime(
        settings=settings,
        redis=client,
        batches=BatchStore(client),
        files=FileStore(client, settings.data_dir, settings.file_ttl_days, deployment),
        apikeys=ApiKeyStore(client),
        quotas=Quotas(
            client, settings.api_rpm_per_key, settings.max_active_batches_per_key, settings.max_enqueued_lines_per_key
        ),
        scheduler=Scheduler(client, settings.queue_depth),
        idempotency=IdempotencyStore(client, settings.idempotency_lock_s),
        uploads=UploadStore(client, settings.data_dir, deployment),
        deployment=deployment,
        batch_locks=LockStore(client),
    )
