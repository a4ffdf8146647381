"""``/batches/limits`` and ``/batches/{id}/results``: what the server accepts, and results while a batch runs.

Included before ``batches.router``: ``/batches/limits`` must win over ``/batches/{batch_id}``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from batchq.api.deps import OwnerDep, RuntimeDep
from batchq.api.errors import ERROR_RESPONSES
from batchq.config import Settings
from batchq.domain.feed import Cursor
from batchq.domain.limits import Limits
from batchq.services.results import MAX_PAGE_BYTES, MAX_PAGE_LINES, ResultsPage, read_results

router = APIRouter(prefix="/batches", tags=["batches"], responses=ERROR_RESPONSES)
POLL_S = 0.1  # how often a long poll (wait > 0) looks for new lines
MAX_WAIT_S = 30.0
CURSOR_PATTERN = r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$"  # batchq.domain.feed.Cursor.text
CURSOR_HEADER = "X-Batchq-Next-Cursor"
STATUS_HEADER = "X-Batchq-Batch-Status"
MORE_HEADER = "X-Batchq-Has-More"

RESULTS_RESPONSE = {
    200: {
        "description": "JSONL: result lines, in the format of the output and error files.",
        "content": {"application/jsonl": {"schema": {"type": "string"}}},
        "headers": {
            CURSOR_HEADER: {"description": "Pass as `after` for the next page.", "schema": {"type": "string"}},
            STATUS_HEADER: {"description": "The batch's status when the page was read.", "schema": {"type": "string"}},
            MORE_HEADER: {
                "description": "`true`: more lines are stored already. `false` and a final status: the batch "
                "has ended and this page holds its last lines (a follower stops).",
                "schema": {"type": "string", "enum": ["true", "false"]},
            },
        },
    }
}


@router.get("/limits", response_model=Limits)
def limits(rt: RuntimeDep, owner: OwnerDep) -> Limits:
    """The server's limits: requests and bytes per batch, per line, per key; results pages."""
    return limits_of(rt.settings)


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_requests_per_batch=settings.max_lines,
        max_file_bytes=settings.max_file_bytes,
        max_line_bytes=settings.max_line_bytes,
        endpoints=list(settings.endpoints),
        min_completion_window=settings.min_completion_window,
        max_completion_window=settings.max_completion_window,
        max_active_batches_per_key=settings.max_active_batches_per_key,
        max_enqueued_requests_per_key=settings.max_enqueued_lines_per_key,
        requests_per_minute_per_key=settings.api_rpm_per_key,
        max_results_page_lines=MAX_PAGE_LINES,
        max_results_page_bytes=MAX_PAGE_BYTES,
    )


@router.get("/{batch_id}/results", response_class=Response, responses=RESULTS_RESPONSE)  # type: ignore[arg-type]
async def batch_results(
    batch_id: str,
    rt: RuntimeDep,
    owner: OwnerDep,
    after: Annotated[str | None, Query(max_length=64, pattern=CURSOR_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LINES)] = 1000,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
) -> Response:
    """The result lines stored so far after the cursor `after`, as JSONL, while the batch runs and after.

    `wait` (seconds) holds the request until a line is stored or the batch ends (a long poll).
    """
    cursor, deadline = Cursor.parse(after), time.monotonic() + wait
    while True:
        page = await run_in_threadpool(read_results, rt, owner, batch_id, cursor, limit)
        if page.lines or page.ended or time.monotonic() >= deadline:
            return _response(page)
        await asyncio.sleep(POLL_S)


def _response(page: ResultsPage) -> Response:
    headers = {CURSOR_HEADER: page.cursor.text, STATUS_HEADER: page.status.value}
    headers[MORE_HEADER] = "true" if page.has_more else "false"
    return Response(page.body(), media_type="application/jsonl", headers=headers)
