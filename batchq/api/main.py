"""The ASGI entry point for uvicorn: ``batchq.api.main:app``, built from the environment."""

from __future__ import annotations

import threading

from batchq.api.app import create_app
from batchq.config import get_settings
from batchq.observability.logs import configure_logging
from batchq.runtime import build_runtime
from batchq.storage.procs import keep_registered
from batchq.storage.server import warn_if_not_durable
from workers.tasks import queue

settings = get_settings()
configure_logging(settings.log_level, json=settings.log_json)
runtime = build_runtime(settings, pool_size=64, api=True)
warn_if_not_durable(runtime.redis)
runtime.deployment.establish_at_start()  # a mismatch is logged (one ERROR) and reported by /health
keep_registered(runtime.redis, "api", threading.Event())  # its release, for batchq doctor
app = create_app(runtime, queue)
