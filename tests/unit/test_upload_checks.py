"""Upload-time checks of a batch input file: its shape read from disk, and the verdict on it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchq.domain.validation import upload_problem
from batchq.storage.files import input_shape

LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}'


def shape_of(content: bytes, head_limit: int = 1 << 20) -> tuple[int, bytes]:
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "input.jsonl"
        path.write_bytes(content)
        shape = input_shape(path, head_limit)
    return shape.lines, shape.head


@settings(max_examples=200)
@given(
    st.lists(st.sampled_from([LINE, b"x", b"", b" ", b"\r", b" x "]), max_size=30),
    st.sampled_from([b"", b"\n", b"\n\n \n\r\n", b" " * 70_000]),
)
def test_lines_counts_the_non_blank_lines(lines: list[bytes], tail: bytes) -> None:
    content = b"\n".join(lines) + tail
    expected = sum(1 for line in content.split(b"\n") if line.strip())
    assert shape_of(content)[0] == expected


def test_head_is_the_first_line_cut_at_the_limit() -> None:
    assert shape_of(LINE + b"\r\n" + b"second\n")[1] == LINE
    assert shape_of(b"a" * 100 + b"\n", head_limit=10)[1] == b"a" * 11


def test_a_blank_tail_longer_than_one_read_block_is_not_counted() -> None:
    assert shape_of(LINE + b"\n" + b"\n" * 200_000) == (1, LINE)


def test_two_requests_among_100_000_blank_lines_are_two() -> None:
    content = LINE + b"\n" + b"\n" * 50_000 + b" \r\n" * 25_000 + LINE + b"\n" + b"\n" * 25_000
    assert shape_of(content) == (2, LINE)
    assert upload_problem(LINE, 2, max_lines=10, max_line_bytes=1 << 20) is None


@pytest.mark.parametrize("cut", [1, 7, 1 << 20])
def test_a_line_cut_by_a_read_block_counts_once(cut: int) -> None:
    """Lines that run across the 1 MiB read boundary, with and without text on both sides."""
    block = 1 << 20
    long_line = b"x" * (block + cut)  # crosses the boundary
    spaced = b" " * (block - 3) + b"ab  " + b"cd"  # text on both sides of the boundary
    blank_then_text = b" " * block + b"z"  # text only after the boundary
    content = b"\n".join([long_line, spaced, blank_then_text, b"", LINE])
    assert shape_of(content)[0] == 4


@pytest.mark.parametrize(
    ("head", "lines", "code"),
    [
        (LINE, 0, "empty_file"),
        (LINE, 11, "too_many_requests"),
        (b"x" * 101, 1, "invalid_file_format"),
        (b"id,url", 1, "invalid_file_format"),
        (b"[1, 2]", 1, "invalid_file_format"),
        (b'"text"', 1, "invalid_file_format"),
        (b"", 2, "invalid_file_format"),  # line 1 blank, more lines after it
    ],
)
def test_upload_problem_names_what_can_never_run(head: bytes, lines: int, code: str) -> None:
    problem = upload_problem(head, lines, max_lines=10, max_line_bytes=100)
    assert problem is not None and problem[0] == code and problem[1]


def test_a_file_whose_first_line_is_an_object_may_run() -> None:
    assert upload_problem(b'{"custom_id": 1}', 10, max_lines=10, max_line_bytes=100) is None
