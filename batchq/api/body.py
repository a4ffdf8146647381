"""Reading a JSON request body defensively: size-capped while reading, depth-capped by orjson."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
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


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI ``requestBody`` for a JSON body read with ``read_json`` and validated by ``model``
    (nested models inlined: the document has no ``$defs``)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    return {"required": True, "content": {"application/json": {"schema": _inline(schema, defs)}}}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref", "")
    if ref.startswith("#/$defs/"):
        return _inline(defs[ref.removeprefix("#/$defs/")], defs)
    return {key: _inline(value, defs) for key, value in node.items()}


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)  # rejects nesting deeper than 1024 instead of recursing
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}.", code="invalid_json") from exc
    if not isinstance(value, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json")
    return value
