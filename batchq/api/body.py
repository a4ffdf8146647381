"""Reading a JSON request body defensively: size-capped while reading, depth-capped by orjson."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from batchq.errors import InvalidRequest, PayloadTooLarge


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"Request body is larger than {max_bytes} bytes.", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"Request body is larger than {max_bytes} bytes.", code="request_too_large")
        chunks.append(chunk)
    return _parse(b"".join(chunks))


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)  # rejects nesting deeper than 1024 instead of recursing
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}.", code="invalid_json") from exc
    if not isinstance(value, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json")
    return value
