"""Unit tests for batchq.domain.results (result lines and token usage)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchq.domain.ids import looks_like
from batchq.domain.results import CANCELLED, EXPIRED, LOST, Usage, error_line, response_line, usage_of

CHAT_BODY = {"id": "x", "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


@pytest.mark.parametrize("status", [200, 201, 299])
def test_response_line_2xx_is_ok(status: int) -> None:
    result = response_line("c1", status, "req_1", CHAT_BODY)
    assert result.ok
    data = orjson.loads(result.data)
    assert data["custom_id"] == "c1"
    assert data["response"] == {"status_code": status, "request_id": "req_1", "body": CHAT_BODY}
    assert data["error"] is None
    assert looks_like("batch_req_", data["id"])


@pytest.mark.parametrize("status", [199, 300, 400, 429, 500])
def test_response_line_non_2xx_is_not_ok_and_keeps_status_and_body(status: int) -> None:
    body = {"error": {"message": "nope", "type": "invalid_request_error"}}
    result = response_line("c1", status, None, body)
    assert not result.ok
    data = orjson.loads(result.data)
    assert data["response"] == {"status_code": status, "request_id": None, "body": body}
    assert data["error"] is None


def test_response_line_non_2xx_counts_no_usage() -> None:
    assert response_line("c1", 500, None, CHAT_BODY).usage == Usage()


def test_response_line_2xx_counts_usage() -> None:
    assert response_line("c1", 200, None, CHAT_BODY).usage == Usage(10, 5, 15)


def test_response_line_keeps_a_text_body() -> None:
    result = response_line("c1", 502, None, "Bad Gateway")
    assert orjson.loads(result.data)["response"]["body"] == "Bad Gateway"


def test_response_line_has_no_newline() -> None:
    assert b"\n" not in response_line("c1", 200, None, {"text": "a\nb"}).data


def test_each_line_gets_a_fresh_id() -> None:
    ids = {orjson.loads(response_line("c", 200, None, {}).data)["id"] for _ in range(50)}
    assert len(ids) == 50


def test_error_line_has_error_and_no_response() -> None:
    result = error_line("c2", "batch_expired", "too late")
    assert not result.ok
    assert result.usage == Usage()
    data = orjson.loads(result.data)
    assert data["custom_id"] == "c2"
    assert data["response"] is None
    assert data["error"] == {"code": "batch_expired", "message": "too late"}
    assert looks_like("batch_req_", data["id"])


@pytest.mark.parametrize("reason", [CANCELLED, EXPIRED, LOST])
def test_canned_error_reasons_are_code_and_message(reason: tuple[str, str]) -> None:
    code, message = reason
    assert code and message
    assert orjson.loads(error_line("c", *reason).data)["error"]["code"] == code


def test_usage_of_chat_shape() -> None:
    assert usage_of(CHAT_BODY) == Usage(10, 5, 15)


def test_usage_of_responses_shape() -> None:
    body = {"usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}}
    assert usage_of(body) == Usage(7, 3, 10)


def test_usage_of_sums_total_when_missing() -> None:
    assert usage_of({"usage": {"prompt_tokens": 4, "completion_tokens": 6}}) == Usage(4, 6, 10)
    assert usage_of({"usage": {"input_tokens": 4, "output_tokens": 6}}) == Usage(4, 6, 10)


def test_usage_of_embeddings_shape_has_no_output() -> None:
    assert usage_of({"usage": {"prompt_tokens": 8, "total_tokens": 8}}) == Usage(8, 0, 8)


@pytest.mark.parametrize(
    "body",
    [
        None,
        "text",
        [1, 2],
        42,
        {},
        {"usage": None},
        {"usage": "lots"},
        {"usage": [1, 2, 3]},
        {"usage": {}},
        {"usage": {"prompt_tokens": "10", "completion_tokens": None}},
        {"usage": {"input_tokens": -1, "output_tokens": -5, "total_tokens": -6}},
        {"usage": {"input_tokens": True, "output_tokens": False}},
        {"usage": {"input_tokens": 1.5, "output_tokens": 2.5}},
    ],
)
def test_usage_of_junk_is_zero(body: Any) -> None:
    assert usage_of(body) == Usage()
