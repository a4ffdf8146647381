"""Unit tests for batchq.api.multipart (streaming multipart/form-data uploads)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from batchq.api.multipart import (
    DEFAULT_FILENAME,
    Upload,
    receive_upload,
    sanitize_filename,
)
from batchq.errors import InvalidRequest, PayloadTooLarge

BOUNDARY = "----batchqBoundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
JSONL = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n' * 20


class FakeReceive:
    """ASGI receive callable serving the body in the given chunks; counts reads."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.reads = 0

    async def __call__(self) -> dict[str, Any]:
        if self.reads >= len(self.chunks):
            return {"type": "http.disconnect"}
        self.reads += 1
        more = self.reads < len(self.chunks)
        return {
            "type": "http.request",
            "body": self.chunks[self.reads - 1],
            "more_body": more,
        }


def make_request(chunks: list[bytes], headers: dict[str, str]) -> tuple[Request, FakeReceive]:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/files",
        "headers": raw,
        "query_string": b"",
    }
    receive = FakeReceive(chunks)
    return Request(scope, receive), receive


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename is not None:
        head += "Content-Type: application/jsonl\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def run(
    chunks: Iterable[bytes],
    dest: Path,
    max_bytes: int = 1 << 20,
    headers: dict[str, str] | None = None,
) -> tuple[Upload, FakeReceive]:
    request, receive = make_request(list(chunks), headers or {"content-type": CONTENT_TYPE})
    return asyncio.run(receive_upload(request, dest, max_bytes)), receive


def run_error(
    chunks: Iterable[bytes],
    dest: Path,
    max_bytes: int = 1 << 20,
    headers: dict[str, str] | None = None,
) -> tuple[InvalidRequest, FakeReceive]:
    request, receive = make_request(list(chunks), headers or {"content-type": CONTENT_TYPE})
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(receive_upload(request, dest, max_bytes))
    assert not dest.exists()
    return info.value, receive


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "file-abc.jsonl"


# -- happy path ------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000, 1 << 20])
def test_happy_path_in_chunks(dest: Path, chunk_size: int) -> None:
    data = body(part("purpose", b"batch"), part("file", JSONL, "input.jsonl"))
    upload, _ = run(split(data, chunk_size), dest)
    assert upload.fields == {"purpose": "batch"}
    assert upload.filename == "input.jsonl"
    assert upload.size == len(JSONL)
    assert upload.path == dest
    assert dest.read_bytes() == JSONL


def test_boundary_split_across_chunks(dest: Path) -> None:
    data = body(part("file", JSONL, "in.jsonl"), part("purpose", b"batch"))
    cut = data.index(f"\r\n--{BOUNDARY}".encode(), len(JSONL)) + 10  # inside the delimiter
    upload, _ = run([data[:cut], data[cut:]], dest)
    assert dest.read_bytes() == JSONL
    assert upload.fields == {"purpose": "batch"}


def test_expires_after_fields_and_content_length(dest: Path) -> None:
    data = body(
        part("purpose", b"batch"),
        part("expires_after[anchor]", b"created_at"),
        part("expires_after[seconds]", b"3600"),
        part("file", JSONL, "in.jsonl"),
    )
    headers = {"content-type": CONTENT_TYPE, "content-length": str(len(data))}
    upload, _ = run(split(data, 100), dest, headers=headers)
    assert upload.fields["expires_after[anchor]"] == "created_at"
    assert upload.fields["expires_after[seconds]"] == "3600"


def test_file_of_exactly_max_bytes_is_accepted(dest: Path) -> None:
    upload, _ = run([body(part("file", JSONL, "in.jsonl"))], dest, max_bytes=len(JSONL))
    assert upload.size == len(JSONL)


def test_binary_content_containing_crlf_and_dashes(dest: Path) -> None:
    content = b"--\r\n--" + BOUNDARY[:-1].encode() + b"\r\n\x00\xff"
    upload, _ = run(split(body(part("file", content, "x.jsonl")), 5), dest)
    assert dest.read_bytes() == content
    assert upload.size == len(content)


# -- filenames -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\x\\y.jsonl", "y.jsonl"),
        ("a/b\\c.jsonl", "c.jsonl"),
        ("", DEFAULT_FILENAME),
        (None, DEFAULT_FILENAME),
        ("dir/", DEFAULT_FILENAME),
        ("..", DEFAULT_FILENAME),
        ("\x00\x1f\x7f", DEFAULT_FILENAME),
        ("in\x00put\r\n.jsonl", "input.jsonl"),
        ("  spaced.jsonl  ", "spaced.jsonl"),
        ("données.jsonl", "données.jsonl"),
    ],
)
def test_sanitize_filename(raw: str | None, expected: str) -> None:
    assert sanitize_filename(raw) == expected


def test_sanitize_filename_truncates_to_255() -> None:
    assert sanitize_filename("x" * 1000 + ".jsonl") == "x" * 255


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\\\x\\\\y.jsonl", "y.jsonl"),
        ("", DEFAULT_FILENAME),
    ],
)
def test_upload_filename_is_sanitised(dest: Path, raw: str, expected: str) -> None:
    upload, _ = run([body(part("purpose", b"batch"), part("file", JSONL, raw))], dest)
    assert upload.filename == expected
    assert upload.path == dest


def test_upload_without_filename_parameter(dest: Path) -> None:
    upload, _ = run([body(part("file", JSONL))], dest)
    assert upload.filename == DEFAULT_FILENAME


def test_utf8_filename(dest: Path) -> None:
    disposition = 'Content-Disposition: form-data; name="file"; filename="'
    head = f"--{BOUNDARY}\r\n{disposition}".encode()
    data = head + "données.jsonl".encode() + b'"\r\n\r\n' + JSONL + f"\r\n--{BOUNDARY}--\r\n".encode()
    upload, _ = run([data], dest)
    assert upload.filename == "données.jsonl"


# -- size limits -----------------------------------------------------------------------


def test_oversize_file_streamed_stops_early_and_removes_dest(dest: Path) -> None:
    chunks = split(body(part("file", b"x" * 100_000, "big.jsonl")), 1000)
    err, receive = run_error(chunks, dest, max_bytes=5000)
    assert isinstance(err, PayloadTooLarge)
    assert err.param == "file"
    assert err.status_code == 413
    assert receive.reads < 10  # stopped reading soon after the cap was crossed


def test_content_length_too_large_rejected_before_reading(dest: Path) -> None:
    headers = {
        "content-type": CONTENT_TYPE,
        "content-length": str(5000 + 64 * 1024 + 1),
    }
    err, receive = run_error([body(part("file", JSONL, "a.jsonl"))], dest, max_bytes=5000, headers=headers)
    assert isinstance(err, PayloadTooLarge)
    assert err.param == "file"
    assert receive.reads == 0


def test_content_length_within_slack_is_fine(dest: Path) -> None:
    headers = {
        "content-type": CONTENT_TYPE,
        "content-length": str(len(JSONL) + 64 * 1024),
    }
    upload, _ = run(
        [body(part("file", JSONL, "a.jsonl"))],
        dest,
        max_bytes=len(JSONL),
        headers=headers,
    )
    assert upload.size == len(JSONL)


def test_invalid_content_length(dest: Path) -> None:
    headers = {"content-type": CONTENT_TYPE, "content-length": "lots"}
    err, receive = run_error([body(part("file", JSONL, "a.jsonl"))], dest, headers=headers)
    assert type(err) is InvalidRequest
    assert receive.reads == 0


def test_oversized_epilogue_counts_against_body_limit(dest: Path) -> None:
    chunks = [body(part("file", JSONL, "a.jsonl"))] + [b"e" * 10_000] * 20
    err, _ = run_error(chunks, dest, max_bytes=len(JSONL))
    assert isinstance(err, PayloadTooLarge)


def test_oversized_text_field(dest: Path) -> None:
    data = body(part("purpose", b"b" * 5000), part("file", JSONL, "a.jsonl"))
    err, _ = run_error(split(data, 512), dest)
    assert type(err) is InvalidRequest
    assert err.param == "purpose"
    assert "purpose" in err.message


def test_oversized_text_field_after_file_removes_dest(dest: Path) -> None:
    data = body(part("file", JSONL, "a.jsonl"), part("purpose", b"b" * 5000))
    err, _ = run_error([data], dest)
    assert err.param == "purpose"


def test_too_many_fields(dest: Path) -> None:
    fields = [part(f"f{i}", b"v") for i in range(17)]
    err, _ = run_error([body(*fields, part("file", JSONL, "a.jsonl"))], dest)
    assert type(err) is InvalidRequest
    assert "Too many" in err.message


# -- malformed requests ----------------------------------------------------------------


def test_missing_file_part(dest: Path) -> None:
    err, _ = run_error([body(part("purpose", b"batch"))], dest)
    assert type(err) is InvalidRequest
    assert err.param == "file"


def test_duplicate_file_part(dest: Path) -> None:
    err, _ = run_error([body(part("file", JSONL, "a.jsonl"), part("file", JSONL, "b.jsonl"))], dest)
    assert err.param == "file"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "text/plain; boundary=abc",
        "multipart/form-data",
        "multipart/form-data; boundary=",
    ],
)
def test_wrong_content_type(dest: Path, content_type: str) -> None:
    err, receive = run_error(
        [body(part("file", JSONL, "a.jsonl"))],
        dest,
        headers={"content-type": content_type},
    )
    assert type(err) is InvalidRequest
    assert "multipart/form-data" in err.message
    assert receive.reads == 0


def test_missing_content_type(dest: Path) -> None:
    err, _ = run_error([body(part("file", JSONL, "a.jsonl"))], dest, headers={"x-other": "1"})
    assert type(err) is InvalidRequest


def test_truncated_body_removes_partial_file(dest: Path) -> None:
    data = body(part("purpose", b"batch"), part("file", JSONL, "a.jsonl"))
    err, _ = run_error([data[: len(data) // 2 + 200]], dest)
    assert "Malformed" in err.message


def test_garbage_body(dest: Path) -> None:
    err, _ = run_error([b"this is not multipart at all\r\n" * 10], dest)
    assert "Malformed" in err.message


def test_part_without_name(dest: Path) -> None:
    bad = f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n".encode()
    err, _ = run_error([body(bad, part("file", JSONL, "a.jsonl"))], dest)
    assert "Content-Disposition" in err.message


def test_non_utf8_text_field(dest: Path) -> None:
    err, _ = run_error([body(part("purpose", b"\xff\xfe"), part("file", JSONL, "a.jsonl"))], dest)
    assert err.param == "purpose"


def test_preexisting_dest_removed_on_error(dest: Path) -> None:
    dest.write_bytes(b"stale")
    run_error([body(part("purpose", b"batch"))], dest)


# -- another file field, and the digest for Idempotency-Key ---------------------------------


@pytest.mark.parametrize("chunk_size", [3, 1 << 20])
def test_named_file_field_streams_and_hashes(dest: Path, chunk_size: int) -> None:
    data = body(part("data", JSONL, "blob"))
    request, _ = make_request(split(data, chunk_size), {"content-type": CONTENT_TYPE})
    upload = asyncio.run(receive_upload(request, dest, 1 << 20, file_field="data", digest=True))
    assert dest.read_bytes() == JSONL and upload.size == len(JSONL)
    assert upload.sha256 == hashlib.sha256(JSONL).hexdigest()


def test_no_digest_unless_asked(dest: Path) -> None:
    upload, _ = run([body(part("file", JSONL, "in.jsonl"))], dest)
    assert upload.sha256 is None


def test_named_file_field_is_required_and_capped(dest: Path) -> None:
    request, _ = make_request([body(part("file", JSONL, "in.jsonl"))], {"content-type": CONTENT_TYPE})
    with pytest.raises(InvalidRequest) as missing:
        asyncio.run(receive_upload(request, dest, 1 << 20, file_field="data"))
    assert missing.value.param == "data"
    request, _ = make_request([body(part("data", JSONL, "blob"))], {"content-type": CONTENT_TYPE})
    with pytest.raises(PayloadTooLarge) as large:
        asyncio.run(receive_upload(request, dest, len(JSONL) - 1, file_field="data"))
    assert large.value.param == "data" and not dest.exists()


# -- a full disk -----------------------------------------------------------------------


class FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does (its close's flush too)."""

    def __init__(self, real: Any, room: int) -> None:
        self.real, self.room, self.pending = real, room, 0

    def write(self, data: bytes) -> int:
        self.pending += len(data)
        if self.pending > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(self.real.write(data))

    def close(self) -> None:
        self.real.close()
        if self.pending > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_fails_the_upload_and_leaves_nothing(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: FullDisk(opened(self, *a, **k), room=1000))
    chunks = split(body(part("file", b"x" * 5000, filename="a.jsonl")), 700)
    request, _ = make_request(chunks, {"content-type": CONTENT_TYPE})
    with pytest.raises(OSError) as info:
        asyncio.run(receive_upload(request, dest, 1 << 20))
    assert info.value.errno == errno.ENOSPC
    assert not dest.exists()  # nothing partial left: the route answers 507 (batchq.api.errors.translate)
