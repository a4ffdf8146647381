"""Run one request line: claim it, send it upstream, store its result exactly once."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from batchq.domain.health import RouteState
from batchq.domain.results import ResultLine, error_line, response_line
from batchq.domain.routing import Release, Route
from batchq.domain.scheduling import Verdict
from batchq.execution.upstream import Outcome, no_upstream
from batchq.runtime import Runtime
from batchq.storage.batches import LineSource, Progress
from batchq.storage.limits import Health, log_change
from batchq.storage.lua import Call

log = logging.getLogger("batchq.runner")


def run_line(rt: Runtime, batch_id: str, index: int, offset: int, length: int) -> Progress | None:
    """Returns the batch's progress after this line, or None when the line was not run.

    Raises ``Deferred`` (its lease given back) when the line's route is down and enough lines
    already wait for it: the caller puts its task back with its batch's waiting lines.

    Two Redis round trips in the common case: one leases the line, takes its first limiter slot
    and lets the next granted line into the queue (the task was taken out of it); one stores the
    result and gives the last slot back.
    """
    source = rt.batches.line_source(batch_id)
    if source is None:
        rt.scheduler.fill(time.time())  # the task left the queue all the same: let the next one in
        return None  # the batch is gone
    try:
        request = read_request(rt, source.input_file_id, offset, length)
    except FileNotFoundError:
        _check_ended(rt, batch_id, index)
        return None
    body = request["body"]
    route = rt.upstream.route(source.endpoint, body.get("model"))
    ask = rt.upstream.limiter.acquire_call(route) if route is not None else None
    start = rt.batches.begin_line(batch_id, index, rt.settings.line_lease_s, ask[1] if ask else None, _fill(rt))
    if start.verdict is not Verdict.GO:
        return None
    rt.held.add(batch_id, index)  # from now on the worker's heartbeat renews its lease
    held = ask[0] if ask and start.slot else None
    if route is not None and held is not None:
        rt.upstream.limiter.granted(route, held)  # and its slot's expiry
    try:
        return _run(rt, batch_id, index, request, (route, source, body), held)
    finally:
        rt.held.discard(batch_id, index)


def _run(
    rt: Runtime,
    batch_id: str,
    index: int,
    request: dict[str, Any],
    where: tuple[Route | None, LineSource, dict[str, Any]],
    held: str | None,
) -> Progress:
    """Send a leased line and store its result."""
    try:
        outcome, done = _send(rt, *where, held)
    except BaseException:
        rt.batches.drop_lease(batch_id, index)  # let the watchdog hand it out again at once
        raise
    result = result_of(request["custom_id"], outcome)
    progress = _complete(rt, batch_id, index, result, done)
    route = where[0]
    if route is not None:
        _note_health(rt, route, progress)
    if progress.accepted:
        rt.upstream.metrics.line_stored(result.ok)
        if not result.ok:
            log.info("line failed", extra=_failure(batch_id, index, request["custom_id"], outcome))
    return progress


def _note_health(rt: Runtime, route: Route, progress: Progress) -> None:
    """This line's answer closed its route's breaker: say so, and let the route's parked batches
    back into the queue now (nothing else may begin a line to fill it until the watchdog's sweep)."""
    health = Health.parse(progress.health or None)
    log_change(route.name, health)
    if health.changed and health.state is RouteState.CLOSED:
        rt.scheduler.fill(time.time())


def _check_ended(rt: Runtime, batch_id: str, index: int) -> None:
    """A task whose input file is gone is fine once its batch has ended (the file may be deleted then)."""
    if rt.batches.begin_line(batch_id, index, rt.settings.line_lease_s, fill=_fill(rt)).verdict is Verdict.GO:
        rt.batches.drop_lease(batch_id, index)
        raise FileNotFoundError(f"the input file of running batch {batch_id} is missing")


def _fill(rt: Runtime) -> Call:
    return rt.scheduler.fill_call(time.time())


def _send(
    rt: Runtime,
    route: Route | None,
    source: LineSource,
    body: dict[str, Any],
    held: str | None,
) -> tuple[Outcome, Release | None]:
    if route is None:
        return no_upstream(source.endpoint, body.get("model")), None
    payload = rt.upstream.payload(route, body)  # no per-line heartbeat: the worker's renews the lease (rt.held)
    return rt.upstream.send_on(
        route, source.endpoint, payload, held, deadline=source.expires_at, may_defer=_may_defer(source, route)
    )


def _may_defer(source: LineSource, route: Route) -> bool:
    """A line may stand aside for a down route only when the scheduler can park its batch: when
    all the batch's lines go to that route. Else it would be granted again at once, in a loop."""
    return source.route == route.name


def _complete(rt: Runtime, batch_id: str, index: int, result: ResultLine, done: Release | None) -> Progress:
    release = rt.upstream.limiter.release_call(done) if done is not None else None
    try:
        return rt.batches.complete_line(batch_id, index, result, release)
    except BaseException:
        if done is not None:
            rt.upstream.limiter.release(done)  # best effort; else the slot expires on its own
        raise


def _failure(batch_id: str, index: int, custom_id: str, outcome: Outcome) -> dict[str, object]:
    """What a log may say about a failed line: ids and codes, never the request or the answer."""
    return {
        "batch_id": batch_id, "line": index + 1, "custom_id": custom_id, "status_code": outcome.status,
        "reason": outcome.error_code, "attempts": outcome.attempts,
    }  # fmt: skip


def read_request(rt: Runtime, file_id: str, offset: int, length: int) -> dict[str, Any]:
    with open(rt.files.path(file_id), "rb") as handle:
        handle.seek(offset)
        request: dict[str, Any] = orjson.loads(handle.read(length))
    return request


def result_of(custom_id: str, outcome: Outcome) -> ResultLine:
    if outcome.status is None:
        return error_line(custom_id, outcome.error_code or "upstream_error", outcome.error_message or "")
    return response_line(custom_id, outcome.status, outcome.request_id, outcome.body)
