"""What a server process does about schema versions (``batchq.storage.schema``) during an upgrade.

At start (``start``): it raises the deployment's schema to its own, or refuses to run when a newer
release has started already; and it moves what an earlier release left where this one no longer
looks (tasks in Celery's old default queue), once, safely beside other processes doing the same.

When it meets a record or a task message of a newer schema (``stop_outdated``): it has changed
nothing, logs one line saying so, and stops, as SIGTERM would stop it (the API finishes its
requests, a worker its tasks). The message it met is handed back, not acknowledged, for a newer
worker. Run by an orchestrator, the process restarts and refuses to start until it is upgraded.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import redis

from batchq.errors import NewerSchema
from batchq.storage import schema

log = logging.getLogger("batchq.upgrade")
_stopping = threading.Event()


def start(client: redis.Redis) -> schema.Deployment:
    """Claim the deployment for this schema and move the legacy queue; ``NewerSchema`` when too old."""
    deployment = schema.claim(client)
    moved = schema.move_legacy_queue(client)
    if moved:
        log.warning(
            "moved tasks left in the old celery queue into batchq.control and batchq.lines", extra={"tasks": moved}
        )
    return deployment


def stop_outdated(error: NewerSchema) -> None:
    """Log why (once) and stop this process gracefully: it is older than the data it found."""
    if _stopping.is_set():
        return
    _stopping.set()
    log.critical(error.message + "; stopping")
    os.kill(os.getpid(), signal.SIGTERM)
