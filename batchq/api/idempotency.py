"""``Idempotency-Key`` on the create operations: the HTTP side, in one place.

A route reads its request (a JSON body, or a multipart body streamed to disk and hashed), then
hands its content and the operation itself to ``once``:

- no key: the operation runs as usual;
- a free key: the operation runs; its answer (status and body) is kept for 24 h when it is final
  (2xx, and 4xx but 429), else the key is freed again (5xx, 429: a retry may succeed). A request
  cancelled meanwhile leaves the operation running to its end, and its answer is kept all the same;
- the same key with the same request: the kept answer, byte for byte, with ``Idempotent-Replayed:
  true``. While the first request still runs, duplicates wait for its answer (polling the record,
  at most ``BATCHQ_IDEMPOTENCY_WAIT_S``), then answer 409 ``idempotency_request_in_progress``
  with ``Retry-After``;
- the same key with another request: 409 ``idempotency_key_reused``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated

from fastapi import Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from batchq.api.deps import PREFIXES
from batchq.api.errors import client_error_response
from batchq.domain import idempotency as idem
from batchq.domain.models import Owner
from batchq.runtime import Runtime
from batchq.storage.idempotency import Claim

REPLAYED = "Idempotent-Replayed"
POLL_S = (0.01, 0.2)  # first and longest pause between looks at a running request's record

Action = Callable[[], Awaitable[BaseModel]]
_SETTLING: set[asyncio.Task[Response]] = set()  # operations being settled (one may outlive its request)


def get_idempotency_key(
    idempotency_key: Annotated[
        str | None,
        Header(description="Send the same key again to get the first answer instead of a second resource (24 h)."),
    ] = None,
) -> str | None:
    return idem.check_key(idempotency_key)


IdempotencyKeyDep = Annotated[str | None, Depends(get_idempotency_key)]


def operation_path(path: str) -> str:
    """The path without its prefix, so a key sent under ``/v1`` and ``/api/v1/llm`` means one operation."""
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if path.startswith(prefix + "/"):
            return path[len(prefix) :]
    return path


async def once(
    request: Request, rt: Runtime, owner: Owner, key: str | None, content: Iterable[bytes], action: Action
) -> Response:
    """Run ``action`` at most once per (caller, key); answer duplicates with its first answer."""
    if key is None:
        return _ok(await action())
    scope = idem.scope(owner, key)
    digest = idem.request_digest(request.method, operation_path(request.url.path), content)
    claim = await _claim(rt, scope, digest)
    if claim.seen is idem.Seen.REUSED:
        raise idem.reused()
    if claim.answer is not None:
        return _replay(claim.answer)
    assert claim.token is not None
    return await _run(rt, scope, digest, claim.token, action)


async def _claim(rt: Runtime, scope: str, digest: str) -> Claim:
    """Take the key, or wait (bounded) while the same request runs elsewhere."""
    deadline = time.monotonic() + rt.settings.idempotency_wait_s
    pause = POLL_S[0]
    while True:
        claim = await run_in_threadpool(rt.idempotency.begin, scope, digest)
        if claim.seen is not idem.Seen.RUNNING:
            return claim
        if time.monotonic() + pause > deadline:
            raise idem.in_progress()
        await asyncio.sleep(pause)
        pause = min(pause * 2, POLL_S[1])


async def _run(rt: Runtime, scope: str, digest: str, token: str, action: Action) -> Response:
    """Run ``action`` and settle the key in a task of its own, which the request's cancellation (the
    client went away, a shutdown's grace ran out) does not reach: the create already runs in a thread
    that nothing can stop, so its answer is always recorded, for the client's retry to replay.

    Not ``anyio.CancelScope(shield=True)`` alone: it holds off anyio's cancellation, but a plain
    ``Task.cancel()`` (uvicorn's on a shutdown timeout) still interrupts the wait for the thread."""
    settling = asyncio.create_task(_settle(rt, scope, digest, token, action))
    _SETTLING.add(settling)  # a strong reference until it is done (the loop keeps weak ones)
    settling.add_done_callback(_SETTLING.discard)
    return await asyncio.shield(settling)


async def _settle(rt: Runtime, scope: str, digest: str, token: str, action: Action) -> Response:
    """Keep a final answer (2xx, 4xx but 429); free the key on any other failure."""
    try:
        response = _ok(await action())
    except Exception as exc:
        refused = client_error_response(exc)
        if refused is None or not idem.is_final(refused.status_code):
            await run_in_threadpool(rt.idempotency.release, scope, token)
            raise
        response = refused
    answer = idem.Answer(response.status_code, bytes(response.body))
    await run_in_threadpool(rt.idempotency.finish, scope, token, digest, answer)
    return response


def _ok(model: BaseModel) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"))


def _replay(answer: idem.Answer) -> Response:
    return Response(answer.body, answer.status, media_type="application/json", headers={REPLAYED: "true"})
