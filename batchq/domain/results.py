"""Result lines, as written to a batch's output and error files.

Every line is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
"error": {"code", "message"} | null}``. A 2xx response goes to the output file; a non-2xx
response goes to the error file with its status and body; no response at all goes to the error
file with ``error`` set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from batchq.domain.ids import new_request_id

CANCELLED = ("batch_cancelled", "This request was not executed because the batch was cancelled.")
EXPIRED = ("batch_expired", "This request could not be executed before the completion window expired.")
LOST = ("request_lost", "This request was lost by the workers too many times and was not completed.")


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class ResultLine:
    ok: bool  # True: output file; False: error file
    data: bytes  # the serialized JSON line, without the newline
    usage: Usage


def response_line(custom_id: str, status: int, request_id: str | None, body: Any) -> ResultLine:
    line = {
        "id": new_request_id(),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }
    ok = 200 <= status < 300
    return ResultLine(ok, orjson.dumps(line), usage_of(body) if ok else Usage())


def error_line(custom_id: str, code: str, message: str) -> ResultLine:
    line = {
        "id": new_request_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
    return ResultLine(False, orjson.dumps(line), Usage())


def usage_of(body: Any) -> Usage:
    """Token usage from an upstream body, in Chat/Completions or Responses naming."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return Usage()
    given = _int(usage.get("input_tokens", usage.get("prompt_tokens")))
    produced = _int(usage.get("output_tokens", usage.get("completion_tokens")))
    total = _int(usage.get("total_tokens")) or given + produced
    return Usage(given, produced, total)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
