"""The Celery app: configuration derived from ``batchq.config.Settings``, nothing else."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import Reject
from kombu import Queue  # type: ignore[attr-defined]

from batchq import upgrade
from batchq.config import Settings, get_settings
from batchq.domain.redis_url import is_sentinel, parse_sentinel_url
from batchq.errors import NewerSchema
from batchq.storage import keys, schema
from workers import kombu_redis

# Control work (validation, finalization, webhooks) has its own queue, so it never waits behind
# line tasks; every worker consumes both. Line tasks are granted into theirs by the scheduler.
CONTROL_TASKS = keys.CONTROL_TASKS


def celery_config(s: Settings) -> dict[str, Any]:
    pool = s.worker_concurrency + 32  # above concurrency: an undersized pool drops acks
    return {
        "broker_url": broker_url(s.redis_url),
        "broker_connection_retry_on_startup": True,
        "broker_pool_limit": pool,
        "redis_max_connections": pool,
        "broker_transport_options": transport_options(s, pool),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_pool": "threads",
        "worker_concurrency": s.worker_concurrency,
        "worker_send_task_events": s.task_events,
        "worker_disable_rate_limits": True,  # batchq limits upstreams itself (storage/limits.py)
        "task_send_sent_event": False,
        "task_ignore_result": True,  # results live in batchq's own store, never in Celery's
        "worker_hijack_root_logger": False,
        "task_queues": [Queue(keys.CONTROL_QUEUE), Queue(keys.LINE_QUEUE)],  # type: ignore[no-untyped-call]
        "task_default_queue": keys.LINE_QUEUE,
        "task_routes": {name: {"queue": keys.CONTROL_QUEUE} for name in CONTROL_TASKS},
        "include": ["workers.tasks"],
    }


def broker_url(redis_url: str) -> str:
    """kombu's URL for ``BATCHQ_REDIS_URL``: the same Redis URL, or kombu's form of a Sentinel URL."""
    return parse_sentinel_url(redis_url).kombu_url() if is_sentinel(redis_url) else redis_url


def transport_options(s: Settings, pool: int) -> dict[str, object]:
    """kombu's Redis transport options, plus what its Sentinel transport needs (the master's name)."""
    options: dict[str, object] = {"visibility_timeout": s.visibility_timeout_s, "max_connections": pool}
    if is_sentinel(s.redis_url):
        options |= parse_sentinel_url(s.redis_url).kombu_options()
    return options


class VersionedTask(Task):  # type: ignore[misc]  # Celery's classes are untyped
    """Runs a message of a schema this code knows; hands any other back (not acknowledged, for a
    newer worker) and stops this worker (``batchq.upgrade``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            schema.check(self.request.get(schema.HEADER), f"a {self.name} task message")
            return super().__call__(*args, **kwargs)
        except NewerSchema as error:
            upgrade.stop_outdated(error)
            raise Reject("newer schema: handed back", requeue=True) from None  # the line above said why


@signals.before_task_publish.connect
def _stamp_schema(headers: dict[str, Any] | None = None, **_: object) -> None:
    """Every message Celery publishes carries the schema (line tasks get it in ``workers.publish``)."""
    if headers is not None:
        headers[schema.HEADER] = schema.SCHEMA


def create_app(settings: Settings | None = None) -> Celery:
    kombu_redis.install()
    app = Celery("batchq", task_cls=VersionedTask)
    app.conf.update(celery_config(settings or get_settings()))
    return app


app = create_app()
