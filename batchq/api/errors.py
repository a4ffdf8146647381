"""The one table that turns exceptions into OpenAI-shaped HTTP error responses.

Foreign errors are translated here too (``translate``): Redis unreachable or too slow -> 503 with
``Retry-After``, a full disk (or Redis at its ``maxmemory``) -> 507. The dashboard's pages use the same translation.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from batchq import upgrade
from batchq.errors import BatchqError, NewerSchema, StorageFull, Unavailable

log = logging.getLogger("batchq.api")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    """Every error response: OpenAI's shape."""

    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": text}
    for status, text in {
        400: "Invalid request (the field is named in `param`).",
        401: "Missing or unknown API key.",
        404: "Unknown id, or not the caller's.",
        409: "Not possible in the resource's current state.",
        413: "Request or upload too large.",
        429: "Over a per-key limit; see the Retry-After header.",
        503: "Redis unreachable; see the Retry-After header.",
        507: "The server's storage is full.",
    }.items()
}

_HTTP_CODES = {404: ("not_found", "invalid_request_error"), 405: ("method_not_allowed", "invalid_request_error")}


def envelope(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# ReadOnly: a replica, mid-failover; MasterDown: a replica that lost its master; TryAgain: mid-resharding
REDIS_DOWN = (
    redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
)  # fmt: skip
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# Redis refusing a write for a while, in errors redis-py has no class for (they keep their prefix):
# its disk (MISCONF: the AOF or RDB could not be written), too few replicas (min-replicas-to-write),
# or a busy script.
REDIS_DISK_FULL = ("MISCONF",)
REDIS_BUSY = ("NOREPLICAS", "BUSY")


def translate(exc: BaseException) -> BatchqError | None:
    """The batchq error a foreign exception stands for; None when it is a bug (a 500)."""
    if isinstance(exc, BatchqError):
        return exc
    if isinstance(exc, REDIS_DOWN):
        return Unavailable(f"The service is temporarily unavailable (Redis: {type(exc).__name__}); retry shortly.")
    if (isinstance(exc, OSError) and exc.errno in DISK_FULL) or isinstance(exc, redis.OutOfMemoryError):
        return StorageFull("The server's storage is full: nothing was stored. Retry later, or tell its operator.")
    if isinstance(exc, redis.ResponseError):
        return _refused_by_redis(str(exc))
    return None


def _refused_by_redis(message: str) -> BatchqError | None:
    if message.startswith(REDIS_DISK_FULL):
        return StorageFull("The server's storage is full: nothing was stored. Retry later, or tell its operator.")
    if message.startswith(REDIS_BUSY):
        return Unavailable(f"The service is temporarily unavailable (Redis: {message.split()[0]}); retry shortly.")
    return None


def batchq_response(exc: BatchqError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    body = envelope(exc.message, exc.error_type, exc.param, exc.code)
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def validation_response(exc: RequestValidationError | ValidationError) -> JSONResponse:
    """FastAPI's own validation (query, path: loc starts with where) and pydantic's (a body model)."""
    errors = list(exc.errors())
    first: dict[str, Any] = dict(errors[0]) if errors else {}
    loc = tuple(first.get("loc", ()))
    param = ".".join(str(p) for p in (loc[1:] if isinstance(exc, RequestValidationError) else loc)) or None
    message = (
        f"Invalid value for '{param}': {first.get('msg', 'invalid request')}." if param else "Invalid request body."
    )
    return JSONResponse(envelope(message, "invalid_request_error", param, "invalid_request"), status_code=400)


def client_error_response(exc: Exception) -> JSONResponse | None:
    """The answer to an exception a route raised, when it is one of ours or a validation error."""
    if isinstance(exc, BatchqError):
        return batchq_response(exc)
    if isinstance(exc, (RequestValidationError, ValidationError)):
        return validation_response(exc)
    return None


async def on_batchq_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BatchqError)
    if isinstance(exc, NewerSchema):  # a newer release's data: answered 503, and this process stops
        upgrade.stop_outdated(exc)
    return batchq_response(exc)


async def on_foreign_error(request: Request, exc: Exception) -> JSONResponse:
    mapped = translate(exc)
    if mapped is None:
        return await on_unexpected(request, exc)
    log.warning("request failed", extra={"reason": mapped.code, "path": request.url.path, "error": str(exc)})
    return batchq_response(mapped)


async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, (RequestValidationError, ValidationError))
    return validation_response(exc)


async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code, type_ = _HTTP_CODES.get(exc.status_code, ("invalid_request", "invalid_request_error"))
    return JSONResponse(envelope(str(exc.detail), type_, None, code), status_code=exc.status_code)


async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(envelope("Internal server error.", "server_error", None, None), status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(BatchqError, on_batchq_error)
    for foreign in (*REDIS_DOWN, redis.OutOfMemoryError, OSError):
        app.add_exception_handler(foreign, on_foreign_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
