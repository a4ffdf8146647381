"""Unit tests for the pure part of Idempotency-Key handling (batchq.domain.idempotency)."""

from __future__ import annotations

import pytest

from batchq.api.idempotency import operation_path
from batchq.domain import idempotency as idem
from batchq.domain.models import Owner
from batchq.errors import InProgress, InvalidRequest


@pytest.mark.parametrize("key", ["a", "x" * 255, "req-2026-11-29/eval 42", "~!@#$%^&*()"])
def test_valid_keys_pass(key: str) -> None:
    assert idem.check_key(key) == key


def test_no_key_is_no_key() -> None:
    assert idem.check_key(None) is None


@pytest.mark.parametrize("key", ["", " ", "x" * 256, "tab\there", "line\nbreak", "caf\u00e9", "\x7f"])
def test_bad_keys_are_400(key: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        idem.check_key(key)
    assert (caught.value.status_code, caught.value.param, caught.value.code) == (
        400,
        "Idempotency-Key",
        "invalid_idempotency_key",
    )


def test_scope_separates_accounts_users_and_keys() -> None:
    scopes = {
        idem.scope(Owner("key_a"), "k"),
        idem.scope(Owner("key_b"), "k"),
        idem.scope(Owner("key_a", "u1"), "k"),
        idem.scope(Owner("key_a", "u2"), "k"),
        idem.scope(Owner("key_a"), "k2"),
        idem.scope(Owner("key_a", "u|x"), "k"),
        idem.scope(Owner("key_a", "u"), "x|k"),
    }
    assert len(scopes) == 7
    assert idem.scope(Owner("key_a", "u1"), "k") == idem.scope(Owner("key_a", "u1"), "k")


def test_digest_follows_method_path_and_content() -> None:
    base = idem.request_digest("POST", "/batches", [b"a", b"b"])
    assert base == idem.request_digest("post", "/batches", [b"a", b"b"])
    assert base != idem.request_digest("POST", "/files", [b"a", b"b"])
    assert base != idem.request_digest("PUT", "/batches", [b"a", b"b"])
    assert base != idem.request_digest("POST", "/batches", [b"ab"])  # parts are length-prefixed
    assert base != idem.request_digest("POST", "/batches", [b"a", b"c"])


def test_json_content_ignores_key_order_and_spacing() -> None:
    assert idem.json_content({"b": 1, "a": {"y": 2, "x": 3}}) == idem.json_content({"a": {"x": 3, "y": 2}, "b": 1})
    assert idem.json_content({"a": 1}) != idem.json_content({"a": 2})


def test_form_content_covers_fields_filename_and_bytes() -> None:
    base = idem.form_content({"purpose": "batch"}, "in.jsonl", "00")
    assert base == idem.form_content({"purpose": "batch"}, "in.jsonl", "00")
    assert base != idem.form_content({"purpose": "batch"}, "in.jsonl", "01")
    assert base != idem.form_content({"purpose": "batch"}, "other.jsonl", "00")
    assert base != idem.form_content({"purpose": "batch", "x": "1"}, "in.jsonl", "00")


def test_judge() -> None:
    answer = idem.Answer(200, b"{}")
    assert idem.judge(None, None, "d") is idem.Seen.NEW
    assert idem.judge("d", None, "d") is idem.Seen.RUNNING
    assert idem.judge("d", answer, "d") is idem.Seen.REPLAY
    assert idem.judge("d", answer, "e") is idem.Seen.REUSED
    assert idem.judge("d", None, "e") is idem.Seen.REUSED


@pytest.mark.parametrize(("status", "final"), [(200, True), (400, True), (404, True), (409, True), (413, True),
                                               (429, False), (500, False), (503, False)])  # fmt: skip
def test_what_is_kept_for_replay(status: int, final: bool) -> None:
    assert idem.is_final(status) is final


def test_conflicts_are_409_with_their_codes() -> None:
    assert (idem.reused().status_code, idem.reused().code) == (409, "idempotency_key_reused")
    busy = idem.in_progress(2)
    assert isinstance(busy, InProgress)
    assert (busy.status_code, busy.code, busy.retry_after) == (409, "idempotency_request_in_progress", 2)


@pytest.mark.parametrize(
    ("path", "operation"),
    [("/v1/batches", "/batches"), ("/api/v1/llm/batches", "/batches"), ("/v1/uploads/u/parts", "/uploads/u/parts"),
     ("/other", "/other")],
)  # fmt: skip
def test_operation_path_drops_the_prefix(path: str, operation: str) -> None:
    assert operation_path(path) == operation
