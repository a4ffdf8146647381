"""Line-by-line validation of a batch input file (JSONL). Pure: bytes in, verdicts out.

Feed lines in order to ``InputValidator.feed``; it returns a ``ValidLine`` for each request
line, or records a ``BatchErrorItem`` (with a 1-based ``line``) and returns ``None``.
``finish()`` adds the whole-file errors (``empty_file``) and reports the outcome.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchq.domain.models import BatchErrorItem

REQUIRED = ("custom_id", "method", "url", "body")
NOT_JSONL = "A batch input file is JSONL: one JSON object (a request) per line."
MAX_CUSTOM_ID = 512


@dataclass(frozen=True)
class ValidLine:
    line: int  # 1-based line number in the file
    custom_id: str
    model: str | None


@dataclass
class Report:
    valid_lines: int
    errors: list[BatchErrorItem]
    error_count: int
    model: str | None
    models: frozenset[str | None] = frozenset()  # every line's body.model (None: none given)


@dataclass
class InputValidator:
    endpoint: str
    max_lines: int
    max_line_bytes: int
    max_errors: int = 100
    errors: list[BatchErrorItem] = field(default_factory=list)
    error_count: int = 0
    valid_lines: int = 0
    _requests: int = 0
    _pending_blank: list[int] = field(default_factory=list)
    _seen: set[bytes] = field(default_factory=set)
    _models: set[str | None] = field(default_factory=set)

    def feed(self, line_no: int, raw: bytes) -> ValidLine | None:
        if not raw.strip():
            self._pending_blank.append(line_no)
            return None
        self._flush_blanks()
        self._requests += 1
        if self._requests > self.max_lines:
            if self._requests == self.max_lines + 1:
                self._error("too_many_requests", f"A batch may hold at most {self.max_lines} requests.", None, line_no)
            return None
        return self._check(line_no, raw)

    def finish(self) -> Report:
        if self._requests == 0:
            self._error("empty_file", "The input file holds no requests.", None, 1)
        model = next(iter(self._models)) if len(self._models) == 1 else None
        return Report(self.valid_lines, self.errors, self.error_count, model, frozenset(self._models))

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def _flush_blanks(self) -> None:
        for blank in self._pending_blank:
            self._error("invalid_json_line", "Line is empty; only trailing lines may be blank.", None, blank)
        self._pending_blank.clear()

    def _check(self, line_no: int, raw: bytes) -> ValidLine | None:
        if len(raw) > self.max_line_bytes:
            return self._reject("invalid_request", f"Line is larger than {self.max_line_bytes} bytes.", None, line_no)
        obj = _parse(raw)
        if obj is None:
            return self._reject("invalid_json_line", "Line is not a valid JSON object.", None, line_no)
        problem = request_problem(obj, self.endpoint)
        if problem is not None:
            return self._reject(*problem, line_no)
        return self._accept(line_no, obj)

    def _accept(self, line_no: int, obj: dict[str, Any]) -> ValidLine | None:
        digest = hashlib.blake2b(obj["custom_id"].encode(), digest_size=16).digest()
        if digest in self._seen:
            message = f"custom_id {obj['custom_id'][:64]!r} appears more than once in the file."
            return self._reject("duplicate_custom_id", message, "custom_id", line_no)
        self._seen.add(digest)
        model = obj["body"].get("model")
        self._models.add(model if isinstance(model, str) else None)
        self.valid_lines += 1
        return ValidLine(line_no, obj["custom_id"], model if isinstance(model, str) else None)

    def _error(self, code: str, message: str, param: str | None, line_no: int) -> None:
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(BatchErrorItem(code=code, message=message, param=param, line=line_no))

    def _reject(self, code: str, message: str, param: str | None, line_no: int) -> ValidLine | None:
        self._error(code, message, param, line_no)
        return None


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def request_problem(obj: dict[str, Any], endpoint: str) -> tuple[str, str, str] | None:
    """The first thing wrong with one request object, as (code, message, param); None if fine."""
    for name in REQUIRED:
        if name not in obj:
            return "missing_required_parameter", f"Missing required parameter: '{name}'.", name
    custom_id = obj["custom_id"]
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return "invalid_request", f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters.", "custom_id"
    if obj["method"] != "POST":
        return "invalid_request", "method must be 'POST'.", "method"
    if obj["url"] != endpoint:
        return "invalid_url", f"url must equal the batch endpoint {endpoint!r}.", "url"
    return _body_problem(obj["body"])


def _body_problem(body: object) -> tuple[str, str, str] | None:
    if not isinstance(body, dict):
        return "invalid_request", "body must be a JSON object.", "body"
    if body.get("stream") is True:
        return "streaming_unsupported", "Batch requests cannot stream; remove 'stream'.", "body.stream"
    return None


def upload_problem(head: bytes, lines: int, max_lines: int, max_line_bytes: int) -> tuple[str, str] | None:
    """Why an uploaded batch input can never run, as (code, message); None when it may.

    Decided from the first line and the line count only, so a wrong file (a CSV, an archive, one
    JSON document, too many lines) is refused at upload. Every line is checked when a batch is
    created from the file, with line numbers.
    """
    if lines == 0:
        return "empty_file", "The file holds no requests."
    if lines > max_lines:
        return "too_many_requests", f"The file has {lines} non-blank lines; a batch holds at most {max_lines} requests."
    if len(head) > max_line_bytes:
        return "invalid_file_format", f"Line 1 is larger than {max_line_bytes} bytes. {NOT_JSONL}"
    try:
        first = orjson.loads(head)
    except orjson.JSONDecodeError:
        return "invalid_file_format", f"Line 1 is not valid JSON. {NOT_JSONL}"
    if not isinstance(first, dict):
        return "invalid_file_format", f"Line 1 is not a JSON object. {NOT_JSONL}"
    return None
