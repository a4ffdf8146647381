"""Unit tests for batchq.domain.validation (line-by-line JSONL input validation)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchq.domain.validation import REQUIRED, InputValidator, Report, ValidLine, request_problem

ENDPOINT = "/v1/chat/completions"


def request(custom_id: str = "r1", **overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": "m1", "messages": []},
    }
    obj.update(overrides)
    return obj


def line(custom_id: str = "r1", **overrides: Any) -> bytes:
    return orjson.dumps(request(custom_id, **overrides))


def validator(max_lines: int = 100, max_line_bytes: int = 10_000, max_errors: int = 100) -> InputValidator:
    return InputValidator(ENDPOINT, max_lines=max_lines, max_line_bytes=max_line_bytes, max_errors=max_errors)


def run(lines: list[bytes], **kwargs: Any) -> tuple[InputValidator, Report]:
    v = validator(**kwargs)
    for number, raw in enumerate(lines, start=1):
        v.feed(number, raw)
    return v, v.finish()


def codes(report: Report) -> list[tuple[str, int | None]]:
    return [(e.code, e.line) for e in report.errors]


# --- request_problem -------------------------------------------------------------------------


def test_request_problem_accepts_a_well_formed_request() -> None:
    assert request_problem(request(), ENDPOINT) is None


@pytest.mark.parametrize("name", REQUIRED)
def test_request_problem_names_each_missing_field(name: str) -> None:
    obj = request()
    del obj[name]
    problem = request_problem(obj, ENDPOINT)
    assert problem is not None
    code, message, param = problem
    assert (code, param) == ("missing_required_parameter", name)
    assert name in message


@pytest.mark.parametrize("custom_id", ["", 7, None, ["a"], "x" * 513])
def test_request_problem_rejects_bad_custom_id(custom_id: object) -> None:
    problem = request_problem(request(custom_id=custom_id), ENDPOINT)  # type: ignore[arg-type]
    assert problem is not None
    assert (problem[0], problem[2]) == ("invalid_request", "custom_id")


def test_request_problem_accepts_custom_id_of_512_chars() -> None:
    assert request_problem(request("x" * 512), ENDPOINT) is None


@pytest.mark.parametrize("method", ["GET", "post", "", None, 1])
def test_request_problem_rejects_non_post_method(method: object) -> None:
    problem = request_problem(request(method=method), ENDPOINT)
    assert problem is not None
    assert (problem[0], problem[2]) == ("invalid_request", "method")


@pytest.mark.parametrize(
    "url",
    [
        "/v1/embeddings",
        "http://evil/v1/chat/completions",
        "https://api.openai.com/v1/chat/completions",
        "/v1/chat/completions/",
        "v1/chat/completions",
        "",
        None,
    ],
)
def test_request_problem_rejects_url_other_than_endpoint(url: object) -> None:
    problem = request_problem(request(url=url), ENDPOINT)
    assert problem is not None
    assert (problem[0], problem[2]) == ("invalid_url", "url")


@pytest.mark.parametrize("body", [None, [], "text", 3, True])
def test_request_problem_rejects_non_object_body(body: object) -> None:
    problem = request_problem(request(body=body), ENDPOINT)
    assert problem is not None
    assert (problem[0], problem[2]) == ("invalid_request", "body")


def test_request_problem_rejects_streaming() -> None:
    problem = request_problem(request(body={"model": "m", "stream": True}), ENDPOINT)
    assert problem is not None
    assert (problem[0], problem[2]) == ("streaming_unsupported", "body.stream")


def test_request_problem_allows_stream_false() -> None:
    assert request_problem(request(body={"model": "m", "stream": False}), ENDPOINT) is None


# --- InputValidator.feed ---------------------------------------------------------------------


def test_valid_line_is_returned_with_its_line_number_and_model() -> None:
    v = validator()
    assert v.feed(1, line("a")) == ValidLine(1, "a", "m1")
    assert v.valid_lines == 1
    assert v.ok


def test_valid_line_without_string_model_has_model_none() -> None:
    v = validator()
    result = v.feed(1, line("a", body={"model": 5}))
    assert result is not None
    assert result.model is None


def test_clean_file_reports_no_errors() -> None:
    v, report = run([line("a"), line("b"), line("c")])
    assert report.valid_lines == 3
    assert report.errors == []
    assert report.error_count == 0
    assert v.ok


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"custom_id": "a"',
        b"\xff\xfe{}",
        b'{"custom_id": "\xc3\x28"}',
        b"[1, 2]",
        b'"a string"',
        b"42",
        b"null",
        b"true",
    ],
)
def test_unparsable_or_non_object_line_is_invalid_json_line(raw: bytes) -> None:
    v = validator()
    assert v.feed(1, raw) is None
    assert [(e.code, e.line, e.param) for e in v.errors] == [("invalid_json_line", 1, None)]
    assert not v.ok


def test_deeply_nested_json_is_invalid_json_line_not_a_crash() -> None:
    v = validator(max_line_bytes=1_000_000)
    assert v.feed(1, b"[" * 5000 + b"]" * 5000) is None
    assert v.errors[0].code == "invalid_json_line"


def test_errors_carry_the_one_based_line_number_given() -> None:
    _, report = run([line("a"), b"garbage", line("c"), line("d", method="GET")])
    assert codes(report) == [("invalid_json_line", 2), ("invalid_request", 4)]
    assert report.valid_lines == 2


def test_missing_field_error_names_the_param() -> None:
    obj = request()
    del obj["body"]
    v = validator()
    v.feed(1, orjson.dumps(obj))
    assert [(e.code, e.param, e.line) for e in v.errors] == [("missing_required_parameter", "body", 1)]


def test_absolute_url_is_invalid_url() -> None:
    v = validator()
    v.feed(1, line("a", url="http://evil/v1/chat/completions"))
    assert [(e.code, e.param) for e in v.errors] == [("invalid_url", "url")]


def test_streaming_request_is_rejected_with_streaming_unsupported() -> None:
    v = validator()
    v.feed(1, line("a", body={"model": "m", "stream": True}))
    assert [(e.code, e.param) for e in v.errors] == [("streaming_unsupported", "body.stream")]


def test_line_longer_than_max_line_bytes_is_rejected() -> None:
    raw = line("a")
    v = validator(max_line_bytes=len(raw) - 1)
    assert v.feed(1, raw) is None
    assert [(e.code, e.line) for e in v.errors] == [("invalid_request", 1)]


def test_line_of_exactly_max_line_bytes_is_accepted() -> None:
    raw = line("a")
    v = validator(max_line_bytes=len(raw))
    assert v.feed(1, raw) is not None


def test_duplicate_custom_id_is_reported_on_the_second_occurrence() -> None:
    _, report = run([line("a"), line("b"), line("a")])
    assert [(e.code, e.param, e.line) for e in report.errors] == [("duplicate_custom_id", "custom_id", 3)]
    assert report.valid_lines == 2


def test_rejected_line_does_not_claim_its_custom_id() -> None:
    _, report = run([line("a", method="GET"), line("a")])
    assert codes(report) == [("invalid_request", 1)]
    assert report.valid_lines == 1


# --- blank lines -----------------------------------------------------------------------------


def test_trailing_blank_lines_are_allowed() -> None:
    v, report = run([line("a"), b"", b"  ", b"\r\n", b"\t"])
    assert report.errors == []
    assert v.ok
    assert report.valid_lines == 1


def test_blank_lines_in_the_middle_are_invalid_json_lines() -> None:
    _, report = run([line("a"), b"", b"   ", line("b")])
    assert codes(report) == [("invalid_json_line", 2), ("invalid_json_line", 3)]
    assert report.valid_lines == 2


def test_leading_blank_line_is_an_error() -> None:
    _, report = run([b"\n", line("a")])
    assert codes(report) == [("invalid_json_line", 1)]


def test_blank_line_returns_none() -> None:
    assert validator().feed(1, b"") is None


# --- whole-file errors -----------------------------------------------------------------------


def test_file_with_no_lines_is_empty_file_at_line_1() -> None:
    _, report = run([])
    assert codes(report) == [("empty_file", 1)]
    assert report.error_count == 1


def test_file_with_only_blank_lines_is_empty_file() -> None:
    _, report = run([b"", b"  ", b"\n"])
    assert codes(report) == [("empty_file", 1)]


def test_file_with_only_invalid_lines_is_not_empty() -> None:
    _, report = run([b"junk"])
    assert codes(report) == [("invalid_json_line", 1)]


def test_too_many_requests_is_reported_once_at_the_first_excess_line() -> None:
    _, report = run([line(str(i)) for i in range(6)], max_lines=3)
    assert codes(report) == [("too_many_requests", 4)]
    assert report.error_count == 1
    assert report.valid_lines == 3


def test_lines_past_the_limit_are_not_validated() -> None:
    _, report = run([line("a"), line("b"), b"garbage", line("a")], max_lines=2)
    assert codes(report) == [("too_many_requests", 3)]


def test_blank_lines_do_not_count_towards_max_lines() -> None:
    _, report = run([line("a"), line("b"), b"", b""], max_lines=2)
    assert report.errors == []


# --- error cap -------------------------------------------------------------------------------


def test_error_list_is_capped_while_error_count_keeps_counting() -> None:
    v, report = run([b"bad"] * 10, max_errors=3)
    assert len(report.errors) == 3
    assert report.error_count == 10
    assert [e.line for e in report.errors] == [1, 2, 3]
    assert not v.ok


def test_empty_file_error_is_counted_even_when_list_is_full() -> None:
    v = validator(max_errors=1)
    v.feed(1, b"")
    report = v.finish()
    assert report.error_count == 1
    assert len(report.errors) == 1


# --- model detection -------------------------------------------------------------------------


def test_finish_reports_the_model_when_every_line_uses_one() -> None:
    _, report = run([line("a"), line("b")])
    assert report.model == "m1"


def test_finish_reports_no_model_when_lines_use_several() -> None:
    _, report = run([line("a"), line("b", body={"model": "m2"})])
    assert report.model is None


def test_finish_reports_no_model_when_some_line_has_none() -> None:
    _, report = run([line("a"), line("b", body={})])
    assert report.model is None


def test_finish_ignores_invalid_lines_for_model_detection() -> None:
    _, report = run([line("a"), line("b", body={"model": "m2"}, method="GET")])
    assert report.model == "m1"


def test_finish_reports_no_model_for_empty_file() -> None:
    _, report = run([])
    assert report.model is None


# --- property --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=5))
def test_arbitrary_bytes_never_raise_and_errors_are_well_formed(data: bytes, max_errors: int) -> None:
    v = validator(max_lines=5, max_line_bytes=200, max_errors=max_errors)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        v.feed(number, raw)
    report = v.finish()
    assert len(report.errors) <= max_errors
    assert report.error_count >= len(report.errors)
    for error in report.errors:
        assert error.code
        assert error.message
        assert error.line is not None and error.line >= 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(lambda cid: line(cid), st.text(min_size=1, max_size=20)),
            st.sampled_from([b"", b"{}", b"[]", b"\xff", line("dup")]),
        ),
        max_size=20,
    )
)
def test_every_request_is_either_valid_or_one_error(lines: list[bytes]) -> None:
    _, report = run(lines, max_lines=1000)
    requests = [raw for raw in lines if raw.strip()]
    last_request = max((n for n, raw in enumerate(lines, start=1) if raw.strip()), default=0)
    middle_blanks = sum(1 for n, raw in enumerate(lines, start=1) if not raw.strip() and n < last_request)
    empty = 0 if requests else 1
    assert report.error_count == (len(requests) - report.valid_lines) + middle_blanks + empty
