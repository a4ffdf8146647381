"""``batchq results --cursor-file`` (``batchq.client.cursorfile``): a follower killed at any point of any page
prints each line exactly once into a regular file, and says so when it cannot tell (a pipe)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from batchq import cli
from batchq.client import CURSOR_HEADER, MORE_HEADER, STATUS_HEADER, Client
from batchq.client.cursorfile import CursorFile, Resume

PAGES = {"": ("c1", ["a0", "a1"]), "c1": ("c2", ["b0", "b1"]), "c2": ("c3", ["c0"]), "c3": ("c3", [])}


class Killed(BaseException):
    """The follower dies."""


def feed(request: httpx2.Request) -> httpx2.Response:
    """Three pages of an ended batch's results, from the cursor ``after``."""
    cursor, ids = PAGES[request.url.params.get("after", "")]
    headers = {CURSOR_HEADER: cursor, STATUS_HEADER: "completed", MORE_HEADER: str(cursor != "c3").lower()}
    return httpx2.Response(200, content=b"".join(orjson.dumps({"custom_id": i}) + b"\n" for i in ids), headers=headers)


def follow(output: Path, cursor_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``batchq results batch_1 --cursor-file CURSOR_FILE >> OUTPUT``, in this process."""
    transport = httpx2.MockTransport(feed)
    monkeypatch.setattr(cli, "Client", lambda *args: Client(*args, transport=transport))
    with open(output, "a") as sink:
        monkeypatch.setattr(sys, "stdout", sink)
        cli.results("batch_1", False, None, cursor_file, "http://api.test", "sk-x", None)


def killing(at: int, after_rename: bool) -> Callable[..., None]:
    """``os.replace`` that dies at its ``at``-th call, before or after renaming."""
    calls, rename = [0], os.replace

    def replace(*args: Any) -> None:
        calls[0] += 1
        if calls[0] == at and not after_rename:
            raise Killed
        rename(*args)
        if calls[0] == at:
            raise Killed

    return replace


@pytest.mark.parametrize("after_rename", [False, True])
@pytest.mark.parametrize("at", range(1, 7))
def test_a_follower_killed_at_any_cursor_write_prints_each_line_once_into_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: int, after_rename: bool
) -> None:
    output, cursor_file = tmp_path / "results.jsonl", tmp_path / "cursor"
    with monkeypatch.context() as dying:
        dying.setattr(os, "replace", killing(at, after_rename))
        with pytest.raises(Killed):
            follow(output, cursor_file, dying)
    with monkeypatch.context() as again:
        follow(output, cursor_file, again)
    ids = [orjson.loads(line)["custom_id"] for line in output.read_bytes().splitlines()]
    assert ids == ["a0", "a1", "b0", "b1", "c0"] and cursor_file.read_text() == "c3\n"


def test_on_a_pipe_a_page_cut_off_is_printed_again_and_said_so(tmp_path: Path) -> None:
    read, write = os.pipe()
    try:
        log = CursorFile(tmp_path / "cursor", write)
        log.printed("c1")
        log.printing("c1", "c2", 40)  # killed before the page was printed, or after: a pipe cannot tell
        assert log.resume() == Resume("c1", True)
        log.printed("c2")
        assert log.resume() == Resume("c2", False)
    finally:
        os.close(read)
        os.close(write)


def test_a_page_written_in_part_is_printed_again_and_an_old_cursor_file_still_reads(tmp_path: Path) -> None:
    output, path = tmp_path / "out.jsonl", tmp_path / "cursor"
    with open(output, "ab") as sink:
        log = CursorFile(path, sink.fileno())
        log.printing(None, "c1", 10)
        assert log.resume() == Resume(None, False)  # nothing of it was printed
        sink.write(b"12345")
        sink.flush()
        assert log.resume() == Resume(None, True)  # part of it
        sink.write(b"67890")
        sink.flush()
        assert log.resume() == Resume("c1", False)  # the whole page
    path.write_text("812.17.3.2411\n")  # a cursor file as earlier versions wrote it
    assert CursorFile(path, None).resume() == Resume("812.17.3.2411", False)
    assert CursorFile(tmp_path / "none", None).resume() == Resume(None, False)
