"""Streaming ``multipart/form-data`` parsing for ``POST /v1/files`` and ``POST /v1/uploads/{id}/parts``.

The body is read from ``request.stream()`` chunk by chunk and fed to python-multipart's
low-level ``MultipartParser``; the file part (``file``, or ``data`` for an upload's part) goes
straight to ``dest`` on disk, hashed on the way when asked (SHA-256, for ``Idempotency-Key``), so
an upload is never held whole in memory (Starlette's ``request.form()`` is deliberately
not used: it spools the whole body before any limit can be enforced).

Limits, all enforced while streaming:

* the file part holds at most ``max_bytes`` bytes (``PayloadTooLarge``, "file");
* the whole body holds at most ``max_bytes`` + 64 KiB (envelope, fields, epilogue);
  a ``Content-Length`` above that is rejected before anything is read;
* text fields: at most 16, each at most 4 KiB of UTF-8 (``InvalidRequest``, the field).

On any error the partial file at ``dest`` is removed before the exception propagates.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import (
    MultipartParser,
    MultipartState,
    parse_options_header,
)
from starlette.requests import Request

from batchq.errors import InvalidRequest, PayloadTooLarge

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["Upload", "receive_upload", "sanitize_filename"]

FILE_FIELD = "file"
DEFAULT_FILENAME = "upload.jsonl"
MAX_FILENAME_CHARS = 255
MAX_FIELD_BYTES = 4 * 1024
MAX_FIELDS = 16
ENVELOPE_SLACK = 64 * 1024
MAX_BOUNDARY_CHARS = 200


@dataclass
class Upload:
    fields: dict[str, str]  # text fields
    filename: str  # sanitised, metadata only
    size: int  # bytes written
    path: Path  # the file the part was written to (== dest passed in)
    sha256: str | None = None  # hex digest of the file part's bytes, when asked for


def sanitize_filename(name: str | None) -> str:
    """Basename only (either slash kind), no control chars, <= 255 chars, not empty."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if not _is_control(ch)).strip()
    cleaned = cleaned[:MAX_FILENAME_CHARS].strip()
    if cleaned in ("", ".", ".."):
        return DEFAULT_FILENAME
    return cleaned


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F


def _decode_header(raw: bytes) -> str:
    """Header parameters are raw bytes: browsers send UTF-8, fall back to latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


async def receive_upload(
    request: Request, dest: Path, max_bytes: int, *, file_field: str = FILE_FIELD, digest: bool = False
) -> Upload:
    """Stream a ``multipart/form-data`` body; the ``file_field`` part goes to ``dest``."""
    collector = _Collector(dest, max_bytes, file_field, digest)
    try:
        boundary = _boundary(request.headers.get("content-type"))
        limit = max_bytes + ENVELOPE_SLACK
        _check_content_length(request.headers.get("content-length"), max_bytes, limit, file_field)
        parser = MultipartParser(boundary, collector.callbacks())
        await _pump(request, parser, max_bytes, limit, file_field)
        return collector.result()
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk fails the close's flush too
            collector.close()
        dest.unlink(missing_ok=True)
        raise
    finally:
        collector.close()


def _boundary(content_type: str | None) -> bytes:
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise InvalidRequest("Content-Type must be multipart/form-data with a boundary.")
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > MAX_BOUNDARY_CHARS:
        raise InvalidRequest("The multipart/form-data Content-Type has a missing or invalid boundary.")
    return boundary


def _check_content_length(value: str | None, max_bytes: int, limit: int, field: str) -> None:
    if value is None:
        return
    try:
        length = int(value)
    except ValueError:
        raise InvalidRequest("Invalid Content-Length header.") from None
    if length < 0:
        raise InvalidRequest("Invalid Content-Length header.")
    if length > limit:
        raise _too_large(max_bytes, field)


def _too_large(max_bytes: int, field: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"File exceeds the maximum upload size of {max_bytes} bytes.", param=field)


async def _pump(request: Request, parser: MultipartParser, max_bytes: int, limit: int, field: str) -> None:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(max_bytes, field)
        _feed(parser, chunk)
    if parser.state != MultipartState.END:
        raise InvalidRequest("Malformed multipart body: it ends before the closing boundary.")


def _feed(parser: MultipartParser, chunk: bytes) -> None:
    try:
        parser.write(chunk)
    except MultipartParseError as exc:
        raise InvalidRequest(f"Malformed multipart body: {exc}") from exc


class _Collector:
    """``MultipartParser`` callback target: part data goes to disk or text fields."""

    def __init__(self, dest: Path, max_bytes: int, file_field: str = FILE_FIELD, digest: bool = False) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.file_field = file_field
        self._hash = hashlib.sha256() if digest else None
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.file_done = False
        self._text_parts = 0
        self._sink: IO[bytes] | None = None
        self._name = ""
        self._is_file = False
        self._buf = bytearray()
        self._headers: dict[str, bytes] = {}
        self._hfield = bytearray()
        self._hvalue = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        }

    def result(self) -> Upload:
        if self.filename is None or not self.file_done:
            field = self.file_field
            raise InvalidRequest(f"Missing required '{field}' part in the multipart body.", param=field)
        return Upload(
            fields=dict(self.fields),
            filename=self.filename,
            size=self.size,
            path=self.dest,
            sha256=None if self._hash is None else self._hash.hexdigest(),
        )

    def close(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.close()

    # -- headers -----------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._headers = {}
        self._name = ""
        self._is_file = False
        self._buf = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._hfield += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _header_end(self) -> None:
        key = bytes(self._hfield).decode("latin-1").strip().lower()
        self._headers[key] = bytes(self._hvalue).strip()
        self._hfield.clear()
        self._hvalue.clear()

    def _headers_finished(self) -> None:
        raw = self._headers.get("content-disposition", b"").decode("latin-1")
        disposition, params = parse_options_header(raw)
        name = params.get(b"name")
        if disposition != b"form-data" or name is None:
            raise InvalidRequest("Malformed multipart body: a part lacks 'Content-Disposition: form-data; name=...'.")
        self._name = _decode_header(name)
        if self._name == self.file_field:
            self._open_file(params.get(b"filename"))
        else:
            self._start_text_field()

    def _open_file(self, raw_filename: bytes | None) -> None:
        if self.filename is not None:
            raise InvalidRequest(f"Only one '{self.file_field}' part is allowed.", param=self.file_field)
        self.filename = sanitize_filename(None if raw_filename is None else _decode_header(raw_filename))
        self._sink = self.dest.open("wb")
        self._is_file = True

    def _start_text_field(self) -> None:
        self._text_parts += 1
        if self._text_parts > MAX_FIELDS:
            raise InvalidRequest(f"Too many form fields (at most {MAX_FIELDS}).", param=self._name)

    # -- data --------------------------------------------------------------------------

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self._write(data[start:end])
        else:
            self._append(data[start:end])

    def _write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise _too_large(self.max_bytes, self.file_field)
        if self._sink is None:  # pragma: no cover - headers always precede data
            raise InvalidRequest("Malformed multipart body.")
        self._sink.write(chunk)
        if self._hash is not None:
            self._hash.update(chunk)

    def _append(self, chunk: bytes) -> None:
        self._buf += chunk
        if len(self._buf) > MAX_FIELD_BYTES:
            raise InvalidRequest(
                f"Form field '{self._name}' exceeds {MAX_FIELD_BYTES} bytes.",
                param=self._name,
            )

    def _part_end(self) -> None:
        if self._is_file:
            self.close()
            self.file_done = True
            self._is_file = False
        elif self._name:
            self.fields[self._name] = self._text_value()

    def _text_value(self) -> str:
        try:
            return bytes(self._buf).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"Form field '{self._name}' is not valid UTF-8.", param=self._name) from None
