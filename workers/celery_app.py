"""The Celery app: configuration derived from ``batchq.config.Settings``, nothing else."""

from __future__ import annotations

from typing import Any

from celery import Celery

from batchq.config import Settings, get_settings


def celery_config(s: Settings) -> dict[str, Any]:
    pool = s.worker_concurrency + 32  # above concurrency: an undersized pool drops acks
    return {
        "broker_url": s.redis_url,
        "result_backend": s.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_pool_limit": pool,
        "redis_max_connections": pool,
        "broker_transport_options": {"visibility_timeout": s.visibility_timeout_s, "max_connections": pool},
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_pool": "threads",
        "worker_concurrency": s.worker_concurrency,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "result_expires": 6 * 3600,
        "worker_hijack_root_logger": False,
        "include": ["workers.tasks"],
    }


def create_app(settings: Settings | None = None) -> Celery:
    app = Celery("batchq")
    app.conf.update(celery_config(settings or get_settings()))
    return app


app = create_app()
