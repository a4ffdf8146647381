"""The results feed's cursor (``batchq.domain.feed``) and reading result files from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchq.domain.feed import Cursor, advance
from batchq.errors import InvalidRequest
from batchq.storage.result_files import Budget, read_lines


def test_a_cursor_counts_each_kind_in_lines_and_file_bytes() -> None:
    lines, after = advance(Cursor(), [b'o{"a":1}', b'e{"b":22}', b'o{"c":3}'])
    assert lines == [b'{"a":1}', b'{"b":22}', b'{"c":3}']
    assert after == Cursor(out_lines=2, out_bytes=16, err_lines=1, err_bytes=9) and after.position == 3
    assert Cursor.parse(after.text) == after and Cursor.parse(None) == Cursor.parse("") == Cursor()


@pytest.mark.parametrize("text", ["x", "1.2.3", "1.0.0.0", "0.0.2.1", "-1.0.0.0", "1.2.3.4.5", " 0.0.0.0"])
def test_a_cursor_that_no_page_handed_out_is_refused(text: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        Cursor.parse(text)
    assert refused.value.param == "after"


def test_file_pages_end_at_the_budget_and_resume_at_line_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"aaaa\nbb\ncccccc\n")
    first = read_lines(path, 0, Budget(lines=2, bytes=100))
    assert (first.lines, first.end, first.at_eof) == ([b"aaaa", b"bb"], 8, False)
    tight = read_lines(path, first.end, Budget(lines=5, bytes=1))  # the first line always fits
    assert (tight.lines, tight.end, tight.at_eof) == ([b"cccccc"], 15, True)  # it looked one line ahead
    assert read_lines(path, tight.end, Budget(5, 100)).lines == []
    assert read_lines(tmp_path / "gone.jsonl", 7, Budget(5, 100)).at_eof
    with pytest.raises(InvalidRequest):
        read_lines(path, 3, Budget(5, 100))  # not after a newline
    with pytest.raises(InvalidRequest):
        read_lines(path, 99, Budget(5, 100))  # past the end
