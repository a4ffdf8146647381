"""Thin task shims: parse the message, call one batchq function, return nothing big."""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from functools import lru_cache

import redis
from celery import signals
from celery.app.task import Task

from batchq import upgrade
from batchq.config import get_settings
from batchq.domain import leases
from batchq.domain.health import Deferred
from batchq.errors import NewerSchema
from batchq.execution import dispatch, runner, submit, watchdog, webhooks
from batchq.execution import finalize as finalizing
from batchq.observability.logs import configure_logging
from batchq.observability.metrics import start_worker_metrics_server
from batchq.runtime import Runtime, build_runtime
from batchq.storage import clock, keys
from batchq.storage.procs import keep_registered
from batchq.storage.server import warn_if_not_durable
from workers.celery_app import app
from workers.publish import line_messages, line_of

log = logging.getLogger("batchq.worker")
RETRY_ON = (redis.RedisError, OSError)


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    return build_runtime(get_settings())


class CeleryQueue:
    """``batchq.runtime.TaskQueue`` over Celery."""

    def submit_batch(self, batch_id: str) -> None:
        submit_task.delay(batch_id)

    def finalize_batch(self, batch_id: str, countdown: float = 0) -> None:
        finalize_task.apply_async((batch_id,), countdown=countdown or None)

    def dispatch_batch(self, batch_id: str, lines: list[tuple[int, int, int]]) -> None:
        """Every line's task waits in the scheduler; it grants them into the line queue."""
        dispatch.add(runtime(), batch_id, _messages(batch_id, lines))

    def notify(self, batch_id: str, event_type: str) -> None:
        if runtime().settings.webhook_url:
            webhook_task.delay(batch_id, event_type, int(time.time()))

    def requeue_lines(self, batch_id: str, lines: list[tuple[int, int, int]]) -> None:
        dispatch.put_back(runtime(), batch_id, list(_messages(batch_id, lines)))

    def queued_lines(self) -> set[tuple[str, int]]:
        found = (line_of(m) for m in runtime().scheduler.queued_messages())
        return {line for line in found if line is not None}

    def waiting_lines(self, batch_id: str) -> set[int]:
        found = (line_of(m) for m in runtime().scheduler.waiting_messages(batch_id))
        return {line[1] for line in found if line is not None and line[0] == batch_id}


def _messages(batch_id: str, lines: list[tuple[int, int, int]]) -> Iterator[bytes]:
    return line_messages(line_task.name, [(batch_id, i, o, n) for i, o, n in lines], keys.LINE_QUEUE)


queue = CeleryQueue()


@app.task(name="batchq.submit", autoretry_for=RETRY_ON, retry_backoff=True, max_retries=5)
def submit_task(batch_id: str) -> None:
    submit.submit(runtime(), queue, batch_id)


@app.task(name="batchq.line", autoretry_for=RETRY_ON, retry_backoff=True, max_retries=5)
def line_task(batch_id: str, index: int, offset: int, length: int) -> None:
    try:
        progress = runner.run_line(runtime(), batch_id, index, offset, length)
    except Deferred:  # its route is down: it waits in the scheduler, not in this thread
        queue.requeue_lines(batch_id, [(index, offset, length)])
        return
    if progress is not None and progress.last:
        queue.finalize_batch(batch_id)  # the batch's completion callback: fired once, by the last line


@app.task(name="batchq.finalize", bind=True, autoretry_for=(redis.RedisError,), retry_backoff=True, max_retries=8)
def finalize_task(self: Task, batch_id: str) -> None:
    rt = runtime()
    try:
        finalizing.finalize(rt, queue, batch_id)
    except OSError as exc:  # the result files could not be written (a full disk): logged, recorded, retried
        # at most half a step apart: the watchdog leaves a failing finalize to these retries that long
        longest = min(rt.settings.finalize_retry_max_s, watchdog.STEP_S / 2)
        wait = backoff(self.request.retries, longest)
        raise self.retry(exc=exc, countdown=wait, max_retries=FINALIZE_RETRIES) from exc


WEBHOOK_BACKOFF_MAX_S = 600.0
FINALIZE_RETRIES = 10_000  # a full disk is retried until space returns (the watchdog takes over after a crash)


def backoff(retries: int, cap: float) -> float:
    """Seconds before a task's next try: doubling from 1, at most ``cap``, jittered down to half."""
    return min(cap, 2.0**retries) * random.uniform(0.5, 1.0)


@app.task(name="batchq.webhook", bind=True, max_retries=None)
def webhook_task(self: Task, batch_id: str, event_type: str, created_at: int) -> None:
    settings = runtime().settings
    try:
        webhooks.deliver(settings, batch_id, event_type, created_at)
    except webhooks.DeliveryFailed as exc:
        if self.request.retries + 1 >= settings.webhook_max_attempts:
            log.error("webhook given up", extra={"batch_id": batch_id, "event": event_type, "reason": str(exc)})
            return
        raise self.retry(exc=exc, countdown=backoff(self.request.retries, WEBHOOK_BACKOFF_MAX_S)) from exc


def watchdog_loop(stop: threading.Event) -> None:
    rt = runtime()
    interval = rt.settings.watchdog_interval_s
    rt.deployment.establish_at_start()  # a mismatch is logged once; then every sweep deletes nothing
    contact = leases.Contact()  # leases are not judged by time right after a break with Redis
    due = time.monotonic() + interval
    while not stop.wait(max(0.0, due - time.monotonic())):
        started = time.monotonic()
        if leases.woke_late(due, started, interval):  # this host stalled: its heartbeat did not run either
            contact.note_break(started)
        try:
            locked = rt.redis.set(keys.WATCHDOG_LOCK, "1", nx=True, ex=max(1, int(interval * 0.9)))
            contact.note(True, time.monotonic() - started, time.monotonic())
            if locked:
                watchdog.sweep(rt, queue, contact)
        except NewerSchema as error:  # a newer release's data: leave it alone, and this process stops
            upgrade.stop_outdated(error)
            return
        except Exception as exc:  # keep the watchdog alive through Redis blips
            if isinstance(exc, redis.RedisError):
                contact.note(False, 0.0, time.monotonic())
            log.exception("watchdog sweep failed")
        due = time.monotonic() + interval  # counted from the sweep's end: a long sweep is not a stall


def heartbeat_loop(stop: threading.Event) -> None:
    """The worker process's heartbeat (``batchq.execution.recovery``): the leases of the lines it
    holds and the expiry of its upstream slots are renewed, and a Redis restart is noticed."""
    rt = runtime()
    lease_s = rt.settings.line_lease_s
    while True:
        beat(rt, lease_s)
        if stop.wait(leases.beat_every(lease_s)):
            return


def beat(rt: Runtime, lease_s: float) -> None:
    """One beat, each part on its own: a part that fails (Redis away: the next beat tries again,
    the leases outlive a short outage) does not cost the others their renewal."""
    parts = (
        lambda: _clocked(rt),
        lambda: rt.held.check(rt.redis, lambda batch_id, lines: rt.batches.renew_held(batch_id, lines, lease_s)),
        rt.upstream.limiter.renew_held,
        lambda: rt.batch_locks.renew(rt.locks.held(), lease_s),
    )
    for part in parts:
        try:
            part()
        except Exception:
            log.debug("heartbeat part failed", exc_info=True)


def _clocked(rt: Runtime) -> None:
    """Redis's clock measured again; the beat reached Redis (the watchdog of this process reads it)."""
    clock.sync(rt.redis)
    rt.held.beat_at = time.monotonic()


_stop = threading.Event()


def run_scheduler() -> None:
    """The watchdog loop in the foreground, for a dedicated scheduler process."""
    signal.signal(signal.SIGTERM, lambda *_: _stop.set())
    registered = keep_registered(runtime().redis, "scheduler", _stop)
    watchdog_loop(_stop)
    registered.join(2)


@signals.setup_logging.connect
def _setup_logging(**_: object) -> None:
    """Connected, so Celery leaves logging (and stdout) to batchq."""
    s = get_settings()
    configure_logging(s.log_level, json=s.log_json)


@signals.worker_init.connect
def _start_metrics(**_: object) -> None:
    start_worker_metrics_server(get_settings().worker_metrics_port)


@signals.worker_ready.connect
def _start_watchdog(sender: object = None, **_: object) -> None:
    _registered.append(keep_registered(runtime().redis, "worker", _stop))  # its release, for batchq doctor
    print(f"batchq worker {getattr(sender, 'hostname', '')} ready", file=sys.stderr, flush=True)
    warn_if_not_durable(runtime().redis)
    clock.check_at_start(runtime().redis)
    threading.Thread(target=watchdog_loop, args=(_stop,), name="batchq-watchdog", daemon=True).start()
    threading.Thread(target=heartbeat_loop, args=(_stop,), name="batchq-heartbeat", daemon=True).start()


@signals.worker_shutting_down.connect
def _stand_aside(**_: object) -> None:
    """A warm shutdown: lines waiting for an upstream slot go back to their batch's turn at once
    (lines in flight finish, their leases renewed by the heartbeat until the pool has stopped)."""
    runtime().stopping.set()


@signals.worker_shutdown.connect
def _stop_watchdog(**_: object) -> None:
    _stop.set()
    for thread in _registered:
        thread.join(2)  # it removes this worker from the registry of processes


_registered: list[threading.Thread] = []
