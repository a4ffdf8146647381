"""Run one request line: claim it, send it upstream, store its result exactly once."""

from __future__ import annotations

import functools
import logging
from typing import Any

import orjson

from batchq.domain.results import ResultLine, error_line, response_line
from batchq.execution.upstream import Outcome
from batchq.runtime import Runtime
from batchq.storage.batches import Progress

log = logging.getLogger("batchq.runner")


def run_line(rt: Runtime, batch_id: str, index: int, offset: int, length: int) -> Progress | None:
    """Returns the batch's progress after this line, or None when the line was not run."""
    start = rt.batches.begin_line(batch_id, index, rt.settings.line_lease_s)
    if start.verdict != "go":
        return None
    try:
        request = read_request(rt, start.input_file_id, offset, length)
        outcome = _send(rt, batch_id, index, start.endpoint, request["body"])
    except BaseException:
        rt.batches.drop_lease(batch_id, index)  # let the watchdog hand it out again at once
        raise
    result = result_of(request["custom_id"], outcome)
    progress = rt.batches.complete_line(batch_id, index, result)
    if progress.accepted:
        rt.upstream.metrics.line_stored(result.ok)
        if not result.ok:
            log.info("line failed", extra=_failure(batch_id, index, request["custom_id"], outcome))
    return progress


def _send(rt: Runtime, batch_id: str, index: int, endpoint: str, body: dict[str, Any]) -> Outcome:
    lease = rt.settings.line_lease_s
    renew = functools.partial(rt.batches.renew_lease, batch_id, index, lease)
    return rt.upstream.send(endpoint, orjson.dumps(body), body.get("model"), heartbeat=renew, every=lease / 3)


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
